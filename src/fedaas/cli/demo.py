"""``fedaas demo``: the one-command demonstration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedaas.cli.common import console


def demo(
    clients: Annotated[int, typer.Option(min=2, max=200, help="Number of member processes.")] = 10,
    rounds: Annotated[int, typer.Option(min=1, max=10_000, help="Federated rounds.")] = 30,
    alpha: Annotated[float, typer.Option(min=1e-3, help="Dirichlet skew of the partition.")] = 0.5,
    out: Annotated[Path, typer.Option(help="Run folder (replaced if it exists).")] = Path(
        "runs/demo"
    ),
) -> None:
    """Federated vs local-only vs centralized training on digits, as real processes over HTTP."""
    from fedaas.sim.demo import run_demo

    run_demo(clients=clients, rounds=rounds, alpha=alpha, out=out, console=console)
