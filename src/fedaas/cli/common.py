"""Options and helpers shared by the commands."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from fedaas.client.admin import AdminClient
from fedaas.client.transport import Transport

console = Console()

ServerOpt = Annotated[
    str, typer.Option("--server", envvar="FEDAAS_SERVER", help="Coordinator URL.")
]
AdminTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDAAS_ADMIN_TOKEN",
        help="Admin token (default: $FEDAAS_ADMIN_TOKEN; the server writes one to STATE/admin.token).",
        show_default=False,
    ),
]
DEFAULT_SERVER = "http://127.0.0.1:8080"


def admin_client(server: str, token: str | None, give_up_after: float | None = 30.0) -> AdminClient:
    if not token:
        raise typer.BadParameter(
            "no admin token: set FEDAAS_ADMIN_TOKEN or pass --token "
            "(the server wrote one to STATE/admin.token)",
            param_hint="--token",
        )
    return AdminClient(Transport(server, token, give_up_after=give_up_after))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[
            RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        ],
    )
    for noisy in ("httpx", "httpcore", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
