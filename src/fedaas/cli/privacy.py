"""``fedaas privacy``: plan the privacy of a job before running it.

Prints epsilon under both accountants (RDP and PLD) for a noise multiplier,
or the noise multiplier each accountant needs for a target epsilon. OU noise
(``--theta``) uses the sound whitening bound and assumes every client joins
every round. Register with ``app.command("privacy")(privacy)``.
"""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from fedaas.cli.common import console, err


def _fail(message: str) -> None:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def _check(
    noise_multiplier: float | None,
    sampling_rate: float,
    rounds: int,
    theta: float,
    delta: float,
    target_epsilon: float | None,
) -> str | None:
    if (noise_multiplier is None) == (target_epsilon is None):
        return "give exactly one of --noise-multiplier or --target-epsilon"
    if noise_multiplier is not None and not noise_multiplier > 0:
        return f"--noise-multiplier must be positive, got {noise_multiplier:g}"
    if target_epsilon is not None and not target_epsilon > 0:
        return f"--target-epsilon must be positive, got {target_epsilon:g}"
    if not 0 < sampling_rate <= 1:
        return f"--sampling-rate must lie in (0, 1], got {sampling_rate:g}"
    if rounds < 1:
        return f"--rounds must be at least 1, got {rounds}"
    if not 0 < delta < 1:
        return f"--delta must lie in (0, 1), got {delta:g}"
    if not -1 < theta < 1:
        return f"--theta must lie strictly between -1 and 1, got {theta:g}"
    if theta != 0 and sampling_rate != 1:
        return (
            "OU noise (--theta) is accounted only when every client joins every round: "
            f"use --sampling-rate 1 (got {sampling_rate:g})"
        )
    return None


def privacy(
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", "-z", help="Noise std / clip norm (z); gives epsilon."
    ),
    sampling_rate: float = typer.Option(
        ..., "--sampling-rate", "-q", help="Share of clients sampled per round (1 = all)."
    ),
    rounds: int = typer.Option(..., "--rounds", "-T", help="Number of rounds."),
    theta: float = typer.Option(
        0.0, "--theta", help="OU noise correlation between rounds (0 = independent noise)."
    ),
    delta: float = typer.Option(1e-5, "--delta", help="Target delta."),
    target_epsilon: float | None = typer.Option(
        None, "--target-epsilon", "-e", help="Find the noise multiplier for this epsilon."
    ),
) -> None:
    """Epsilon of a DP-FedAvg job (RDP and PLD), or the noise it needs for a target epsilon."""
    from fedaas.algorithms.accounting import epsilon, noise_for_epsilon  # 1 s import: only here

    problem = _check(noise_multiplier, sampling_rate, rounds, theta, delta, target_epsilon)
    if problem:
        _fail(problem)
    mechanism = f"OU noise, theta={theta:g}" if theta else "Gaussian noise"
    table = Table(
        title=f"{mechanism}, q={sampling_rate:g}, T={rounds}, delta={delta:g}", title_justify="left"
    )
    table.add_column("accountant")
    table.add_column("noise multiplier", justify="right")
    table.add_column("epsilon", justify="right")
    try:
        for accountant in ("rdp", "pld"):
            z = noise_multiplier
            if z is None:
                assert target_epsilon is not None
                z = noise_for_epsilon(
                    target_epsilon, sampling_rate, rounds, delta, theta=theta, accountant=accountant
                )
            eps = epsilon(z, sampling_rate, rounds, delta, theta=theta, accountant=accountant)
            table.add_row(accountant.upper(), f"{z:.4g}", f"{eps:.3f}")
    except ValueError as exc:
        _fail(str(exc))
    console.print(table)
    if theta and noise_multiplier is not None:
        independent = epsilon(noise_multiplier, 1.0, rounds, delta, accountant="pld")
        console.print(
            f"The same per-round noise without correlation (theta=0) gives epsilon "
            f"{independent:.3f} (PLD): correlated noise costs more privacy."
        )
