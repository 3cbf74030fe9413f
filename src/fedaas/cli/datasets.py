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

    Writes client_<i> (one per member) and test in the chosen format.
    """
    from fedaas.data.digits import digits_federation
    from fedaas.data.source import write_dataset
    from fedaas.storage import parse_storage_options

    if format not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    options = parse_storage_options(storage_option)
    base = out.rstrip("/")
    _refuse_filled(base, options)
    parts, (x_test, y_test) = digits_federation(clients, alpha, seed)
    for i, (x, y) in enumerate(parts):
        write_dataset(base, f"client_{i}", x, y, format, options)
    write_dataset(base, "test", x_test, y_test, format, options)
    sizes = [len(y) for _, y in parts]
    shown = (
        ", ".join(map(str, sizes)) + " examples"
        if len(sizes) <= SIZES_SHOWN
        else f"{min(sizes)} to {max(sizes)} examples each, {sum(sizes)} in all"
    )
    console.print(
        f"wrote {clients} partitions ({shown}) and test ({len(y_test)}) as {format} to {base}"
    )


SIZES_SHOWN = 20
"""Up to this many members each partition's size is printed; past it, the range and total."""


def _refuse_filled(url: str, options: dict) -> None:
    """An export goes to a new or empty folder: into an earlier export's, with fewer members
    or another format, its leftover partitions would be read as members with this one's."""
    from fedaas import storage

    fs, path = storage.resolve(url, options)
    try:
        is_file = fs.isfile(path)
        entries = [] if is_file else sorted(fs.ls(path, detail=False))
    except FileNotFoundError:
        return
    except Exception as exc:
        raise storage.explain(exc, url, fs, path) from None
    if is_file:
        raise typer.BadParameter(
            f"{storage.redact(url)} is a file, not a folder", param_hint="--out"
        )
    if entries:
        first = str(entries[0]).rstrip("/").rsplit("/", 1)[-1]
        raise typer.BadParameter(
            f"{storage.redact(url)} is not empty (it holds {first}"
            f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}): export into a new "
            "or empty folder, so no earlier partition is mixed with these",
            param_hint="--out",
        )
