"""The privacy library stays pure: numpy, scipy, dp_accounting and the stdlib only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gateway.privacy

PACKAGE = Path(gateway.privacy.__file__).parent
ALLOWED = {"numpy", "scipy", "dp_accounting"} | set(sys.stdlib_module_names)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_allowed_imports() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith("gateway."):
                assert name.startswith("gateway.privacy"), f"{path.name} imports {name}"
            else:
                assert top in ALLOWED, f"{path.name} imports {name}"


def test_importing_does_not_load_the_rest_of_the_stack() -> None:
    code = (
        "import sys, gateway.privacy; "
        "bad = [m for m in ('sqlglot', 'duckdb', 'pydantic', 'fastapi', 'gateway.service') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
