"""Rules of the test suite itself: a broken import fails instead of skipping, and shared
helpers live in helper modules, not in other test modules."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _modules() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(TESTS.glob("*.py"))}


def test_no_test_module_imports_another_test_module():
    offending = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(name.split(".")[-1].startswith("test_") for name in names):
                offending.append(f"{path.name}:{node.lineno}")
    assert not offending, f"import shared helpers from tests/helpers.py instead: {offending}"


def test_no_module_is_imported_with_importorskip():
    """CI installs every test dependency (the test and validator extras): a missing one must
    fail the run, not skip its tests."""
    found = [f"{path.name}:{node.lineno}" for path, tree in _modules().items()
             for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "importorskip"]
    assert not found, found


def test_markers_are_strict():
    config = tomllib.loads((TESTS.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert "--strict-markers" in config["tool"]["pytest"]["ini_options"]["addopts"].split()
