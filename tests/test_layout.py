"""The tests mirror the package: tests/<wing>/test_<module>.py tests hf_sft/<wing>/<module>.py, whole-stack runs
live in tests/e2e/, and no test module imports another (shared builders are in tests/helpers.py)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "hf_sft"


def _test_modules():
    return sorted(p for p in TESTS.rglob("test_*.py"))


def test_every_wing_test_module_names_a_module_of_that_wing():
    strays = []
    for path in _test_modules():
        rel = path.relative_to(TESTS)
        if rel.parts[0] == "e2e":
            continue
        target = PACKAGE.joinpath(*rel.parts[:-1], rel.name.removeprefix("test_"))
        if len(rel.parts) > 1 and not target.is_file():
            strays.append(f"{rel} (no hf_sft/{target.relative_to(PACKAGE)})")
    assert not strays, "test modules that mirror no module: " + ", ".join(strays)


def test_no_test_module_imports_another():
    offenders = []
    for path in list(_test_modules()) + [TESTS / "helpers.py", TESTS / "conftest.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                last = name.rsplit(".", 1)[-1]
                if name.startswith("tests") and (last.startswith("test_") or last == "conftest"):
                    offenders.append(f"{path.relative_to(TESTS)} imports {name}")
    assert not offenders, "; ".join(offenders)


def test_the_run_started_first_exists():
    """conftest.py's ordering hook names the demo's e2e module by path; a move must carry the name along."""
    tree = ast.parse((TESTS / "conftest.py").read_text())
    run_first = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                     and any(getattr(t, "id", None) == "RUN_FIRST" for t in node.targets))
    assert (TESTS.parent / run_first).is_file(), run_first
