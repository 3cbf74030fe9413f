"""``fedaas server``, ``fedaas enroll`` and ``fedaas client``: the long-running parts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedaas.cli.common import (
    DEFAULT_SERVER,
    AdminTokenOpt,
    CaCertOpt,
    ClientCertOpt,
    ClientKeyOpt,
    ServerOpt,
    StorageOpt,
    admin_client,
    setup_logging,
    tls_options,
)


def _pem(help_text: str) -> Any:
    return typer.Option(help=help_text, exists=True, dir_okay=False, show_default=False)


def server(
    state: Annotated[
        Path, typer.Option("--state", help="Folder for the database, models and admin token.")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="TCP port (0 picks a free one).", min=0, max=65535)
    ] = 8080,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help="Artifact store URL (s3://, gs://, az:// or a path) that models and "
            "checkpoints are copied to (default: only --state)."
        ),
    ] = None,
    storage_option: StorageOpt = None,
    db: Annotated[
        str | None,
        typer.Option(
            envvar="FEDAAS_DB",
            help="SQLAlchemy database URL, e.g. postgresql+psycopg://USER@HOST:5432/DB "
            "(default: SQLite in --state). $FEDAAS_DB keeps a password off the command line.",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, _pem("PEM certificate (chain) to serve HTTPS with; needs --tls-key.")
    ] = None,
    tls_key: Annotated[Path | None, _pem("PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        _pem("PEM CA file: require every client to present a certificate it signed (mutual TLS)."),
    ] = None,
) -> None:
    """Run the coordinator (the parent node)."""
    if tls_cert is not None and tls_key is None:
        raise typer.BadParameter("--tls-cert needs --tls-key", param_hint="--tls-key")
    if tls_client_ca is not None and tls_cert is None:
        raise typer.BadParameter("--tls-client-ca needs --tls-cert", param_hint="--tls-cert")
    from fedaas.server.db import StoreError
    from fedaas.server.run import TlsConfigError, serve

    setup_logging()
    from fedaas.storage import parse_storage_options

    options = parse_storage_options(storage_option)
    try:
        serve(
            state,
            host=host,
            port=port,
            db_url=db,
            artifacts_url=artifacts,
            storage_options=options,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
        )
    except TlsConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    except StoreError as exc:
        raise typer.BadParameter(str(exc), param_hint="--db") from None


def enroll(
    name: Annotated[str, typer.Argument(help="The member organization's name.")],
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
) -> None:
    """Enroll a member; prints its token (give it to the member, it is shown once)."""
    tls = tls_options(ca_cert, client_cert, client_key)
    member = admin_client(server, token, tls=tls).enroll(name)
    print(member.token)


def client(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="The member's dataset: a path or URL (file://, s3://, gs://, az://) of an "
            "npz, parquet or csv file or an image folder.",
        ),
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
    storage_option: StorageOpt = None,
    state: Annotated[
        Path,
        typer.Option(
            help="Folder for the member's own state (privacy noise that must survive restarts)."
        ),
    ] = Path("fedaas-member-state"),
    threads: Annotated[
        int, typer.Option(help="Torch CPU threads (0: torch's default).", min=0)
    ] = 0,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
) -> None:
    """Run a member agent next to its data: pull tasks, train locally, send updates."""
    if not token:
        raise typer.BadParameter(
            "a member token is required (fedaas enroll prints one)", param_hint="--token"
        )
    tls = tls_options(ca_cert, client_cert, client_key)
    import torch

    from fedaas.client.agent import Agent
    from fedaas.client.transport import Transport

    if threads:
        torch.set_num_threads(threads)
    setup_logging()
    from fedaas.storage import parse_storage_options

    options = parse_storage_options(storage_option)
    transport = Transport(server, token, give_up_after=None, tls=tls)
    agent = Agent(transport, data, options, state_dir=state)
    agent.run()
