"""Imports run one way: entry points -> library -> models/data, read from the source (docs/design.md, "Layers")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: What each first-party package may import (besides itself, the standard library and third-party packages).
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "data": set(),
    "coring": {"models", "data"},
    "detection": {"coring", "models", "data"},
    "main": {"coring", "models", "data"},
    "bench": {"coring", "models", "data", "detection"},
    "scripts": {"coring", "models", "data"},
}
FIRST_PARTY = set(ALLOWED) | {"tests"}
#: Library packages: a first-party import hidden inside a function there would only be dodging a cycle.
LIBRARY = ("coring", "models", "data", "detection")


def _sources() -> list[Path]:
    return sorted(p for package in ALLOWED for p in (REPO / package).rglob("*.py"))


def _first_party_imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.extend((node, name.split(".")[0]) for name in names if name.split(".")[0] in FIRST_PARTY)
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_one_way(path: Path) -> None:
    package = path.relative_to(REPO).parts[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [f"line {node.lineno}: {name}" for node, name in _first_party_imports(tree)
           if name != package and name not in ALLOWED[package]]
    assert not bad, f"{path.relative_to(REPO)} ({package}) may import only {sorted(ALLOWED[package])}: {bad}"


@pytest.mark.parametrize("path", [p for p in _sources() if p.relative_to(REPO).parts[0] in LIBRARY],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_library_imports_sit_at_module_top(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    inner = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner.extend(f"line {node.lineno}: {name}" for node, name in _first_party_imports(function))
    assert not inner, f"{path.relative_to(REPO)} imports first-party modules inside functions: {inner}"


def test_no_module_edits_sys_path() -> None:
    offenders = [str(p.relative_to(REPO)) for p in _sources() if "sys.path" in p.read_text()]
    assert not offenders, f"these modules edit sys.path (install the repo with `pip install -e .` instead): {offenders}"
