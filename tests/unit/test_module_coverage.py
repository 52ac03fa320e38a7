"""Every module under mesh/ and gateway/ has a test module that imports it.

A module only ever reached through others gets tested by accident: when it breaks, the
failure shows up far from its cause. This reads the imports of every ``test_*.py`` under
tests/ (with ast, importing nothing) and names each module no test imports directly.

A package's ``__init__`` counts only when it defines something (a function or a class);
one that only re-exports its modules is covered by their tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mesh", "gateway")


def library_modules() -> dict[str, Path]:
    """Dotted name -> file of every module and package under PACKAGES."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def defines_something(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return any(isinstance(node, kinds) for node in tree.body)


def imported_by_tests() -> set[str]:
    """Every dotted name a test module imports: ``import a.b``, ``from a import b`` (a, a.b)."""
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def untested(modules: dict[str, Path], imported: set[str]) -> list[str]:
    return [
        name
        for name, path in modules.items()
        if name not in imported and (path.name != "__init__.py" or defines_something(path))
    ]


def test_the_check_sees_modules_packages_and_both_import_forms() -> None:
    modules = library_modules()
    assert {"mesh.resilience.window", "gateway.openapi", "mesh.server", "mesh"} <= modules.keys()
    assert untested(modules, {"mesh.server", "mesh.resilience.window"}).count("mesh.server") == 0
    assert "mesh.resilience.window" not in untested(modules, {"mesh.resilience.window"})
    assert "gateway.openapi" in untested(modules, {"gateway"})  # importing the package is not enough
    assert "mesh" not in untested(modules, set())  # a docstring-only package needs no test


def test_every_module_is_imported_by_a_test_module() -> None:
    missing = untested(library_modules(), imported_by_tests())
    assert not missing, "no test module imports: " + ", ".join(missing)
