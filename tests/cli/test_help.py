"""`fedaas --help` lists every command with a one-line summary a reader can scan."""

from __future__ import annotations

from typing import Any

import typer

from fedaas.cli import app


def _commands(group: Any, prefix: str = "fedaas") -> dict[str, Any]:
    """Every visible command and subcommand by its full name (typer's own click groups)."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if command.hidden:
            continue
        found[f"{prefix} {name}"] = command
        if hasattr(command, "commands"):
            found.update(_commands(command, f"{prefix} {name}"))
    return found


def test_every_command_has_a_one_paragraph_one_line_summary() -> None:
    commands = _commands(typer.main.get_command(app))
    assert {"fedaas members", "fedaas job submit", "fedaas simulate"} <= commands.keys()
    for name, command in commands.items():
        summary = (command.help or "").strip().split("\n\n")[0]
        assert summary, f"{name} has no help"
        # a summary broken over lines is printed broken in the command list
        assert "\n" not in summary, f"{name}: the help's first paragraph spans lines: {summary!r}"
