"""``fedaas datasets``: export built-in datasets as per-member partitions."""

from __future__ import annotations

from typing import Annotated

import typer

from fedaas.cli.common import StorageOpt, console

app = typer.Typer(help="Built-in datasets.", no_args_is_help=True)
export_app = typer.Typer(
    help="Export a built-in dataset split across members.", no_args_is_help=True
)
app.add_typer(export_app, name="export")

FORMATS = ("npz", "parquet", "csv", "images")


@export_app.command("digits")
def digits(
    out: Annotated[
        str,
        typer.Option(
            help="Folder or URL (file://, s3://, gs://, az://) to write the partitions to."
        ),
    ],
    clients: Annotated[
        int, typer.Option("--members", "--clients", min=1, max=1000, help="Number of members.")
    ] = 10,
    alpha: Annotated[
        float, typer.Option(min=1e-3, help="Dirichlet concentration (smaller: more skew).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(min=0, help="Partition seed.")] = 0,
    format: Annotated[str, typer.Option(help="npz, parquet, csv or images.")] = "npz",
    storage_option: StorageOpt = None,
) -> None:
    """scikit-learn's digits: a stratified 20% test split, the rest split per-class Dirichlet.

    Writes ``client_<i>`` (one per member) and ``test`` in the chosen format.
    """
    from fedaas.data.digits import digits_federation
    from fedaas.data.source import write_dataset
    from fedaas.storage import parse_storage_options

    if format not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    options = parse_storage_options(storage_option)
    parts, (x_test, y_test) = digits_federation(clients, alpha, seed)
    base = out.rstrip("/")
    for i, (x, y) in enumerate(parts):
        write_dataset(base, f"client_{i}", x, y, format, options)
    write_dataset(base, "test", x_test, y_test, format, options)
    sizes = ", ".join(str(len(y)) for _, y in parts)
    console.print(
        f"wrote {clients} partitions ({sizes} examples) and test ({len(y_test)}) "
        f"as {format} to {base}"
    )
