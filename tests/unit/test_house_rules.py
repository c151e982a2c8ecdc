"""The house rules of the product code (issue: a house a newcomer can live in), checked on the source itself.

No module in ``actors/`` or ``gateway/`` over 400 lines, no class over 200, every module says what it owns, every
broad ``except`` says why it must be broad, and fewer than 10 ``# type: ignore`` in product code. The import rules
are import-linter contracts in pyproject.toml (``make lint``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = sorted(p for folder in ("actors", "gateway") for p in (ROOT / folder).rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200
# the model switch is rebuilt by the scale-out issue (a switch driven past one machine): its split belongs there
CLASS_SIZE_LATER = {"actors/model_switch.py"}
BROAD = re.compile(r"except\s+(Exception|BaseException)\b|except\s*:|suppress\((Exception|BaseException)\)")


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize("path", PRODUCT, ids=_rel)
def test_module_is_small_and_says_what_it_owns(path: Path) -> None:
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{_rel(path)} has {lines} lines: split it along its seams"
    tree = ast.parse(text)
    if text.strip():
        assert ast.get_docstring(tree), f"{_rel(path)} has no module docstring saying what it owns"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and _rel(path) not in CLASS_SIZE_LATER:
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{_rel(path)}: class {node.name} has {size} lines"


def test_every_broad_except_says_why() -> None:
    unexplained = []
    for path in PRODUCT + sorted((ROOT / "ops").rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if BROAD.search(line.split("#")[0]):
                said = "#" in line or lines[i - 1].strip().startswith("#")
                if not said:
                    unexplained.append(f"{_rel(path)}:{i + 1}: {line.strip()}")
    assert not unexplained, "broad excepts without a comment saying why:\n" + "\n".join(unexplained)


def test_few_type_ignores() -> None:
    found = [
        f"{_rel(p)}:{i + 1}"
        for folder in ("actors", "gateway", "ops")
        for p in (ROOT / folder).rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines())
        if "type: ignore" in line
    ]
    assert len(found) < 10, f"{len(found)} `# type: ignore` in product code: {found}"
