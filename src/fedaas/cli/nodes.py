"""``fedaas server``, ``fedaas enroll`` and ``fedaas client``: the long-running parts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedaas.cli.common import DEFAULT_SERVER, AdminTokenOpt, ServerOpt, admin_client, setup_logging


def server(
    state: Annotated[
        Path, typer.Option("--state", help="Folder for the database, models and admin token.")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="TCP port (0 picks a free one).", min=0, max=65535)
    ] = 8080,
    db: Annotated[
        str | None, typer.Option(help="SQLAlchemy database URL (default: SQLite in --state).")
    ] = None,
) -> None:
    """Run the coordinator (the parent node)."""
    from fedaas.server.run import serve

    setup_logging()
    serve(state, host=host, port=port, db_url=db)


def enroll(
    name: Annotated[str, typer.Argument(help="The member organization's name.")],
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
) -> None:
    """Enroll a member; prints its token (give it to the member, it is shown once)."""
    member = admin_client(server, token).enroll(name)
    print(member["token"])


def client(
    data: Annotated[
        str, typer.Option("--data", help="The member's dataset: a path or URL (.npz).")
    ],
    server: ServerOpt = DEFAULT_SERVER,
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="FEDAAS_TOKEN",
            help="This member's token (or $FEDAAS_TOKEN).",
            show_default=False,
        ),
    ] = "",
    state: Annotated[
        Path,
        typer.Option(
            help="Folder for the member's own state (privacy noise that must survive restarts)."
        ),
    ] = Path("fedaas-member-state"),
    threads: Annotated[
        int, typer.Option(help="Torch CPU threads (0: torch's default).", min=0)
    ] = 0,
) -> None:
    """Run a member agent next to its data: pull tasks, train locally, send updates."""
    if not token:
        raise typer.BadParameter(
            "a member token is required (fedaas enroll prints one)", param_hint="--token"
        )
    import torch

    from fedaas.client.agent import Agent
    from fedaas.client.transport import Transport

    if threads:
        torch.set_num_threads(threads)
    setup_logging()
    agent = Agent(Transport(server, token, give_up_after=None), data, state_dir=state)
    agent.run()
