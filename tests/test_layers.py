"""Layers point down only (DESIGN.md): every import of every module, including the ones inside functions
and under TYPE_CHECKING, is checked against the layer map. A new upward import fails here with the file
and line that made it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# layer -> the interlink layers it must never import (everything above it)
FORBIDDEN = {
    "interlink/wire": ("interlink.net", "interlink.gateway", "interlink.control", "interlink.cli", "interlink.lab"),
    "interlink/net": ("interlink.gateway", "interlink.control", "interlink.cli", "interlink.lab"),
    "interlink/gateway": ("interlink.control", "interlink.cli", "interlink.lab"),
    "interlink/model.py": ("interlink.wire", "interlink.net", "interlink.gateway", "interlink.control", "interlink.routes"),
    "interlink/routes.py": ("interlink.gateway", "interlink.control"),
    "interlink/config.py": ("interlink.wire", "interlink.net", "interlink.gateway", "interlink.control"),
    "registry_adapters": ("interlink.net", "interlink.gateway", "interlink.control", "interlink.wire"),
    "broker_adapters": ("interlink",),  # adapters know their broker, never the gateway (broker_adapters/base.py)
}


def _modules(layer: str) -> list[Path]:
    path = ROOT / layer
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    upward = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in _modules(layer)
        for line, name in _imports(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[layer])
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from interlink.control.snapshot import x\n")
    assert (3, "interlink.control.snapshot") in _imports(module)
