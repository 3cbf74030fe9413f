"""Imports point down the layers of docs/architecture.md, and modules stay short.

Read from the source with ``ast`` (every ``import``/``from`` anywhere in a
module, lazy ones inside functions included), so a new upward import fails
here instead of waiting for a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedaas"

LAYERS: dict[str, int] = {
    "__init__": 0,
    "spec": 1,
    "spec_privacy": 1,
    "spec_secagg": 1,
    "spec_section": 1,
    "spec_strategy": 1,
    "spec_train": 1,
    "protocol": 1,
    "protocol_secagg": 1,
    "tensors": 1,
    "storage": 1,
    "algorithms": 2,
    "folder_lock": 2,
    "data": 2,
    "models": 2,
    "train": 2,
    "server": 3,
    "client": 3,
    "sim": 4,
    "report": 4,
    "cli": 5,
    "api": 5,
    "__main__": 6,
}
"""Top-level part of ``fedaas`` -> its layer; a module may import only its own layer or below."""

FORBIDDEN_PEERS = {("client", "server"), ("server", "client"), ("report", "sim")}
"""Same-layer imports that would tie the parts together anyway."""
LAZY_REEXPORTS = {("__init__", "api")}
"""Upward imports allowed: ``fedaas.__getattr__`` re-exports the Python API on first use."""

MAX_LINES = 350


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fedaas")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name == "fedaas":  # ``from fedaas import tensors`` (or ``__version__``)
                found |= {
                    f"fedaas.{a.name}" if _is_module(a.name) else "fedaas" for a in node.names
                }
            elif name.startswith("fedaas"):
                found.add(name)
    return found


def _is_module(name: str) -> bool:
    return (SRC / f"{name}.py").exists() or (SRC / name).is_dir()


def _target_part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_has_a_layer() -> None:
    unknown = {_part(p) for p in _modules()} - set(LAYERS)
    assert not unknown, f"add these to LAYERS (and docs/architecture.md): {sorted(unknown)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    mine = _part(path)
    for module in _imports(path):
        theirs = _target_part(module)
        assert theirs in LAYERS, f"{module} is not a known part of fedaas"
        if (mine, theirs) in LAZY_REEXPORTS:
            continue
        assert LAYERS[theirs] <= LAYERS[mine], (
            f"{path.relative_to(SRC)} ({mine}, layer {LAYERS[mine]}) imports {module} "
            f"({theirs}, layer {LAYERS[theirs]}): imports must point down"
        )
        assert (mine, theirs) not in FORBIDDEN_PEERS, f"{mine} must not import {theirs}: {module}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_are_short_or_say_why(path: Path) -> None:
    lines = path.read_text().count("\n")
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "long because" in doc.lower(), (
        f"{path.relative_to(SRC)} has {lines} lines (> {MAX_LINES}): split it by concept, "
        "or say in its docstring why it is long ('long because ...')"
    )


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = SRC / "algorithms" / "_probe_upward.py"
    bad.write_text("from fedaas.server import app\n")
    try:
        with pytest.raises(AssertionError, match="imports must point down"):
            test_imports_point_down(bad)
    finally:
        bad.unlink()
