"""Core never imports the default plugins: ``flowkit_plugins`` holds components only."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "flowkit"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module",
                                             "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def test_nothing_under_flowkit_imports_flowkit_plugins() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for line, module in _imported_modules(ast.parse(path.read_text(), str(path))):
            if module == "flowkit_plugins" or module.startswith("flowkit_plugins."):
                offenders.append(f"{path.relative_to(CORE.parent)}:{line} imports {module}")
    assert offenders == []


def test_the_import_rule_check_sees_every_import_form() -> None:
    source = (
        "import flowkit_plugins.a\n"
        "def f():\n    from flowkit_plugins.b import c\n"
        "importlib.import_module('flowkit_plugins.d')\n"
    )
    modules = [m for _, m in _imported_modules(ast.parse(source))]
    assert modules == ["flowkit_plugins.a", "flowkit_plugins.b", "flowkit_plugins.d"]
