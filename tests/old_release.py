"""Processes of the previous release on a stack of this one: the harness of ``tests/e2e/test_versions.py``.

The previous release's code is committed as ``tests/fixtures/release-0.2.0.tar.gz`` (``git archive
--prefix=release-0.2.0/ v0.2.0 actors gateway pyproject.toml``). Its dependencies are this project's, so this
project's interpreter (the ``.venv``) runs it. :func:`extract_release` unpacks it once per session.
:func:`old_process` runs one of its processes (``python -m actors <name>``, ``python -m gateway``) against a
:class:`~ops.stack.supervisor.Stack` and stops it on exit.

Making sure the old code runs, and only the old code:

* ``cwd`` and ``PYTHONPATH`` are the extracted folder and nothing else, and the interpreter runs with ``-P``
  (Python 3.11's safe path: neither the current folder nor a script's folder goes first on ``sys.path``);
* this working tree's editable install (a meta path finder that ``site`` installs from the venv's
  ``__editable__`` ``.pth`` file) is removed before anything of the mesh is imported, so this tree's
  ``actors``, ``gateway`` and ``ops`` cannot be imported by the old processes at all;
* the child resolves the module it runs, prints where it comes from (first line of its log) and refuses to
  start unless that lies under the extracted folder; :func:`old_process` checks that line again;
* the extracted folder carries the distribution metadata of the release it holds (``image_mesh-0.2.0.dist-info``
  on its ``PYTHONPATH``, which comes before the venv's), so an old process reports its own version
  (``GET /status``, ``mesh --version``) as a 0.2.0 deployment did, not the version of this tree's install.

:func:`previous_release_stack` starts a stack's servers the way release 0.2.0's start-up set them up (the
streams created by the old code, no layout stamp, no migration), with the mesh processes of this release in
supervisord's configuration but not started: a test writes data with the old processes, then starts the new
ones (``stack.start_service``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.settings import Settings
from ops.stack.bootstrap import bootstrap
from ops.stack.ports import free_port
from ops.stack.prepare import prepare
from ops.stack.services import ROOT, SERVERS, http_probe
from ops.stack.supervisor import Stack, settings_env
from tests.helpers import test_settings

RELEASE = "0.2.0"
TARBALL = Path(__file__).resolve().parent / "fixtures" / f"release-{RELEASE}.tar.gz"
DISTRIBUTION = "image-mesh"  # pyproject.toml's project name (actors.settings.PACKAGE)
MARK = "old-release:"  # how the child's first log line starts: "old-release: <module> from <file>"

# each process's module, arguments, and the setting that holds the port of its /health
PROCESSES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "config": ("actors", ("config",), "config_http_port"),
    "indexer": ("actors", ("indexer",), "indexer_http_port"),
    "coordinator": ("actors", ("coordinator",), "coordinator_http_port"),
    "gateway": ("gateway", (), "gateway_port"),
}
# the listeners each process opens: a second instance beside a running one needs its own (own_ports)
LISTENERS: dict[str, tuple[str, ...]] = {
    "config": ("config_http_port",),
    "indexer": ("indexer_http_port",),
    "coordinator": ("coordinator_http_port",),
    "gateway": ("gateway_port", "gateway_admin_port"),
}

# First in every old process: this working tree's editable install (its finder and its namespace path entry)
# goes, so nothing of this tree is importable.
_NO_EDITABLE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
"""

# Run by ``python -P -c``: argv is [release folder, module, module's arguments...]. The same as ``python -m
# <module> <args>``, after checking where <module> comes from.
_LAUNCH = """
import importlib.util, runpy, sys
from pathlib import Path
release, module = Path(sys.argv[1]).resolve(), sys.argv[2]
spec = importlib.util.find_spec(module)
origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
print(f"old-release: {module} from {origin}", flush=True)
if origin is None or not origin.is_relative_to(release):
    sys.exit(f"old-release: {module} would run from {origin}, not from the release in {release}")
sys.argv = [sys.argv[0], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

# The streams as release 0.2.0's stack start-up made them (its ops/stack/bootstrap.py: the ``ops`` user runs
# actors.streams.ensure_streams), run by the old code.
_OLD_STREAMS = """
import asyncio, nats
from pathlib import Path
import actors.streams
from actors.settings import Settings
from actors.streams import ensure_streams

if not Path(actors.streams.__file__).resolve().is_relative_to(Path.cwd().resolve()):
    raise SystemExit(f"old-release: actors.streams from {actors.streams.__file__}, not from {Path.cwd()}")

async def main():
    s = Settings()
    nc = await nats.connect(s.nats_server_url, user="ops", password=s.nats_password("ops"))
    try:
        await ensure_streams(nc.jetstream(), s)
    finally:
        await nc.close()

asyncio.run(main())
"""


class OldReleaseError(RuntimeError):
    """A process of the previous release did not start, did not become healthy, or ran other code."""


# --- the release's files ----------------------------------------------------------------------------------
def extract_release(into: Path | pytest.TempPathFactory, tarball: Path = TARBALL) -> Path:
    """The release's folder (``release-0.2.0`` with ``actors``, ``gateway``, ``pyproject.toml`` and its
    distribution metadata) under ``into``, extracted on the first call; later calls with the same ``into`` (a
    folder, or pytest's ``tmp_path_factory``: its session folder) return it as it is."""
    base = into.getbasetemp() / "old-releases" if isinstance(into, pytest.TempPathFactory) else into
    folder = base / tarball.name.removesuffix(".tar.gz")
    done = folder / ".extracted"
    if done.exists():
        return folder
    base.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(base, filter="data")
    for part in ("actors/__main__.py", "gateway/__main__.py", "pyproject.toml"):
        if not (folder / part).is_file():
            raise OldReleaseError(f"{tarball} has no {folder.name}/{part}")
    version = release_version(folder)
    dist = folder / f"{DISTRIBUTION.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {version}\n")
    done.touch()
    return folder


def release_version(folder: Path) -> str:
    """The ``version`` of the release's ``pyproject.toml``."""
    with (folder / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


# --- the processes ----------------------------------------------------------------------------------------
def own_ports(name: str) -> dict[str, int]:
    """Free ports for every listener of ``name``: the overrides of a second instance beside a running one."""
    return {field: free_port() for field in LISTENERS[name]}


def old_env(settings: Settings, release_dir: Path) -> dict[str, str]:
    """The environment of an old process: this one's, less anything that steers Python's imports or names a
    setting, plus every setting of ``settings`` and ``PYTHONPATH`` = the release folder only."""
    steering = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "PYTHONUSERBASE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_") and k not in steering}
    env |= settings_env(settings)
    env |= {"PYTHONPATH": str(release_dir.resolve()), "PYTHONNOUSERSITE": "1"}
    return env


def old_python(code: str, *args: str) -> list[str]:
    """This venv's interpreter running ``code`` with ``-P`` and without this tree's editable install."""
    return [sys.executable, "-P", "-c", _NO_EDITABLE + code, *args]


def old_command(release_dir: Path, module: str, *args: str) -> list[str]:
    """``python -P -m <module> <args>`` as the old release runs it (see ``_LAUNCH``)."""
    return old_python(_LAUNCH, str(release_dir.resolve()), module, *args)


@dataclass
class OldProcess:
    """A running process of the previous release."""

    name: str
    release_dir: Path
    settings: Settings  # the stack's, with the process's overrides
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int  # where this run's lines start in the (appended) log
    origin: Path | None = None  # the file of the module it runs, as the child reported it

    @property
    def port(self) -> int:
        return int(getattr(self.settings, PROCESSES[self.name][2]))

    @property
    def url(self) -> str:
        """Its HTTP root: the REST API for the gateway, /health and /metrics for an actor."""
        return f"http://{self.settings.host}:{self.port}"

    def log(self) -> str:
        """What this run wrote to its log."""
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-n:])


def _check_origin(proc: OldProcess) -> Path:
    module = PROCESSES[proc.name][0]
    head = f"{MARK} {module} from "
    line = next((x for x in proc.log().splitlines() if x.startswith(head)), None)
    if line is None:
        raise OldReleaseError(f"old {proc.name} never said where {module} comes from:\n{proc.tail()}")
    origin = Path(line[len(head) :]).resolve()
    release = proc.release_dir.resolve()
    if not origin.is_relative_to(release) or origin.is_relative_to(ROOT / module):
        raise OldReleaseError(
            f"old {proc.name} runs {module} from {origin}, not from the release in {release}"
        )
    return origin


def _stop(popen: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM to its process group (it drains), SIGKILL after ``timeout_s``."""
    if popen.poll() is not None:
        return
    os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=30)


@contextmanager
def old_process(
    name: str,
    stack: Stack,
    release_dir: Path,
    *,
    timeout_s: float = 180,
    stop_timeout_s: float = 30,
    **overrides: object,
) -> Iterator[OldProcess]:
    """Run the previous release's ``name`` (``config``, ``indexer``, ``coordinator`` or ``gateway``) against
    ``stack`` until the block ends: healthy (its ``/health``, the probe of ``ops/stack/services.py``) and
    checked to run the release's code when the block starts; SIGTERM, then SIGKILL after ``stop_timeout_s``,
    when it ends. ``overrides`` are settings (``gateway_port=...``; :func:`own_ports` gives a second instance
    its own listeners). Its log: ``old-<name>.log`` in the stack's log folder, appended run after run.
    """
    if name not in PROCESSES:
        raise ValueError(f"no process {name!r}: one of {sorted(PROCESSES)}")
    unknown = set(overrides) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"not settings: {sorted(unknown)}")
    settings = Settings(**(stack.settings.model_dump() | overrides))
    module, args, _ = PROCESSES[name]
    log_path = stack.log_dir / f"old-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        offset = out.tell()
        popen = subprocess.Popen(
            old_command(release_dir, module, *args),
            cwd=release_dir,
            env=old_env(settings, release_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with whatever it starts
        )
    proc = OldProcess(name, release_dir, settings, popen, log_path, offset)
    try:
        probe = http_probe(f"{proc.url}/health")
        deadline = time.monotonic() + timeout_s
        while (problem := probe()) is not None:
            if popen.poll() is not None:
                raise OldReleaseError(
                    f"old {name} (release {RELEASE}) exited with {popen.returncode} before it was healthy; "
                    f"last lines of {log_path}:\n{proc.tail()}"
                )
            if time.monotonic() > deadline:
                raise OldReleaseError(
                    f"old {name} (release {RELEASE}) not healthy after {timeout_s:.0f}s ({problem}); "
                    f"last lines of {log_path}:\n{proc.tail()}"
                )
            time.sleep(0.5)
        proc.origin = _check_origin(proc)
        yield proc
    finally:
        _stop(popen, stop_timeout_s)


# --- a stack as the previous release left it --------------------------------------------------------------
def old_streams(stack: Stack, release_dir: Path, timeout_s: float = 60) -> None:
    """Create the JetStream streams with the previous release's code, as its stack start-up did."""
    r = subprocess.run(
        old_python(_OLD_STREAMS),
        cwd=release_dir,
        env=old_env(stack.settings, release_dir),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if r.returncode != 0:
        raise OldReleaseError(f"the old release could not create the streams:\n{r.stdout}\n{r.stderr}")


@contextmanager
def previous_release_stack(
    data_dir: Path, release_dir: Path, *, timeout_s: float = 240, **overrides: object
) -> Iterator[Stack]:
    """A private stack (:func:`tests.helpers.running_stack`'s settings: free ports, files under ``data_dir``)
    with its servers (``nats``, ``redis``, ``s3``, ``triton``) running and set up as release 0.2.0's start-up
    did: the streams made by the old code, the bucket policy; no layout stamp, no migration. The mesh's
    processes are in supervisord's configuration, not started (``stack.start_service``). Stopped on exit."""
    settings = test_settings(data_dir, **overrides)
    prepare(settings)  # the model repository Triton loads
    stack = Stack(settings)
    stack.launch_supervisord()
    try:
        servers = [s for s in stack.services if s.name in SERVERS]
        for tier in sorted({s.tier for s in servers}):
            group = [s for s in servers if s.tier == tier]
            for svc in group:
                stack.ctl("start", svc.name)
            stack.wait_healthy(group, timeout_s)
        bootstrap(settings, servers=("s3",))  # the bucket policy only (with nats and redis it would migrate)
        old_streams(stack, release_dir)
        yield stack
    finally:
        stack.shutdown()
