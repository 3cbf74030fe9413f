"""``fedaas datasets``: export built-in datasets as per-member partitions."""

from __future__ import annotations

from typing import Annotated

import typer

from fedaas.cli.common import console

app = typer.Typer(help="Built-in datasets.", no_args_is_help=True)
export_app = typer.Typer(
    help="Export a built-in dataset split across members.", no_args_is_help=True
)
app.add_typer(export_app, name="export")


@export_app.command("digits")
def digits(
    out: Annotated[
        str, typer.Option(help="Folder or URL to write client_<i>.npz and test.npz to.")
    ],
    clients: Annotated[int, typer.Option(min=1, max=1000, help="Number of members.")] = 10,
    alpha: Annotated[
        float, typer.Option(min=1e-3, help="Dirichlet concentration (smaller: more skew).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(min=0, help="Partition seed.")] = 0,
) -> None:
    """scikit-learn's digits: a stratified 20% test split, the rest split per-class Dirichlet."""
    from fedaas.data.digits import digits_federation
    from fedaas.data.source import write_npz

    parts, (x_test, y_test) = digits_federation(clients, alpha, seed)
    base = out.rstrip("/")
    for i, (x, y) in enumerate(parts):
        write_npz(f"{base}/client_{i}.npz", x, y)
    write_npz(f"{base}/test.npz", x_test, y_test)
    sizes = ", ".join(str(len(y)) for _, y in parts)
    console.print(
        f"wrote {clients} partitions ({sizes} examples) and test.npz ({len(y_test)}) to {base}"
    )
