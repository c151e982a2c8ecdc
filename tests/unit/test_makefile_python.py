"""The Makefile stops with a clear message when the interpreter it would install with is not Python 3.11.

Each test runs ``make`` on the real Makefile with a fake interpreter (a script printing a version), a VENV
under tmp_path and a PATH of its own, so nothing is installed and the result does not depend on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make on this machine")


def fake_python(folder: Path, name: str, version: str) -> Path:
    """An executable that answers the version query like a Python ``version`` would."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def make(tmp_path: Path, *args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` in the repository with only the tools the Makefile's own lines need on PATH."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("cat", "sha1sum", "cut"):  # the STAMP line hashes pyproject.toml
        found = shutil.which(tool)
        if found and not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    path = os.pathsep.join(str(p) for p in (extra_path, tools) if p is not None)
    assert MAKE is not None
    return subprocess.run(
        [MAKE, "--no-print-directory", "-s", *args, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        env={"PATH": path, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_another_python_stops_install_with_how_to_get_311(tmp_path: Path) -> None:
    py312 = fake_python(tmp_path / "py", "python3", "3.12")
    done = make(tmp_path, "install", f"PYTHON={py312}")
    assert done.returncode != 0
    assert f"The mesh needs Python 3.11, but {py312} is Python 3.12." in done.stderr
    assert "pyenv install 3.11" in done.stderr
    assert "PYTHON=/path/to/python3.11 make install" in done.stderr
    assert not (tmp_path / "venv").exists(), "nothing installed with the wrong interpreter"
    assert "pip" not in done.stderr


def test_the_hint_names_a_python311_on_path(tmp_path: Path) -> None:
    py312 = fake_python(tmp_path / "py", "python3", "3.12")
    fake_python(tmp_path / "other", "python3.11", "3.11")
    done = make(tmp_path, "install", f"PYTHON={py312}", extra_path=tmp_path / "other")
    assert done.returncode != 0
    assert "python3.11 is installed: PYTHON=python3.11 make install" in done.stderr


def test_a_missing_interpreter_is_said_plainly(tmp_path: Path) -> None:
    done = make(tmp_path, "python-check", f"PYTHON={tmp_path / 'no-such-python'}")
    assert done.returncode != 0
    assert "is not a working Python" in done.stderr


def test_an_old_venv_is_what_is_checked(tmp_path: Path) -> None:
    fake_python(tmp_path / "venv" / "bin", "python", "3.12")  # made earlier with another Python
    py311 = fake_python(tmp_path / "py", "python3", "3.11")
    done = make(tmp_path, "python-check", f"PYTHON={py311}")
    assert done.returncode != 0
    assert "is Python 3.12" in done.stderr and f"rm -rf {tmp_path / 'venv'}" in done.stderr


def test_python_311_passes_quietly_and_runs_before_the_venv_is_made(tmp_path: Path) -> None:
    py311 = fake_python(tmp_path / "py", "python3", "3.11")
    done = make(tmp_path, "python-check", f"PYTHON={py311}")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    plan = make(tmp_path, "-n", "install", f"PYTHON={py311}").stdout
    assert "sys.version_info" in plan and "-m venv" in plan
    assert plan.index("sys.version_info") < plan.index("-m venv")
