"""The layout's rules that import-linter does not check (its contracts, in pyproject.toml,
hold the rings): small modules, and tests and benches that share helpers only through
tests/support (a test module imported by another runs its fixtures twice and hides what
the helper is for)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 600


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_over_600_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "quiesce").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these by concept: {long}"


def test_no_test_module_imports_another() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            n for n in _imports(p) if n.split(".")[-1].startswith("test_") and "tests" in n
        )
        for p in (ROOT / "tests").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}, "move shared helpers to tests/support"


def test_bench_imports_nothing_from_tests() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "bench").glob("*.py")
        if any(n == "tests" or n.startswith("tests.") for n in _imports(p))
    ]
    assert not offenders


def test_every_package_says_what_it_holds() -> None:
    bare = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "quiesce").rglob("__init__.py")
        if p.parent != ROOT / "quiesce" and not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not bare
