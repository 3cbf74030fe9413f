"""``fedaas server``, ``fedaas enroll`` and ``fedaas member`` (alias ``client``): the long-running parts."""

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
    MemberNameArg,
    ServerOpt,
    StorageOpt,
    admin_client,
    check_data,
    err,
    setup_logging,
    tls_options,
)

MEMBER_LOCK = "member.lock"
"""Held (``flock``) by the member agent using the state folder; it names that process."""


def _pem(help_text: str) -> Any:
    return typer.Option(help=help_text, exists=True, dir_okay=False, show_default=False)


AllowCodeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-code",
        help="A package (or module) whose model factories (and train_step/eval_step) a job spec "
        "may name, e.g. "
        "--allow-code mypkg for 'mypkg.nets:small'; repeatable. Built-in models are always "
        "allowed; nothing else is imported.",
        show_default=False,
    ),
]


def allow_code_packages(values: list[str] | None) -> list[str]:
    """``--allow-code`` values, each a dotted module name (never a path) of an installed package.

    Only the top-level package is looked up (nothing of it runs here): a name
    that no installed package has is a typo, refused now rather than when a
    job that needs it fails.
    """
    import importlib.util
    import re

    for value in values or []:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", value, flags=re.ASCII):
            raise typer.BadParameter(
                f"{value!r} is not a package or module name (e.g. mypkg or mypkg.models)",
                param_hint="--allow-code",
            )
        top = value.split(".")[0]
        if importlib.util.find_spec(top) is None:
            raise typer.BadParameter(
                f"no package {top!r} is installed in this Python environment",
                param_hint="--allow-code",
            )
    return list(values or [])


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
            help="SQLAlchemy database URL (default: SQLite in --state); for PostgreSQL the "
            "scheme postgresql+psycopg, then //USER@HOST:5432/DB. $FEDAAS_DB keeps a password "
            "off the command line.",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, _pem("PEM certificate (chain) to serve HTTPS with; needs --tls-key.")
    ] = None,
    tls_key: Annotated[Path | None, _pem("PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        _pem(
            "PEM CA file: require every client to present a certificate it signed (mutual TLS); "
            "a member's certificate must name the member (subject CN = its enrolled name)."
        ),
    ] = None,
    allow_code: AllowCodeOpt = None,
) -> None:
    """Run the coordinator (the parent node)."""
    packages = allow_code_packages(allow_code)
    if tls_cert is not None and tls_key is None:
        raise typer.BadParameter("--tls-cert needs --tls-key", param_hint="--tls-key")
    if tls_client_ca is not None and tls_cert is None:
        raise typer.BadParameter("--tls-client-ca needs --tls-cert", param_hint="--tls-cert")
    from fedaas.server.db import StoreError
    from fedaas.server.run import StartupError, serve

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
            allow_code=packages,
        )
    except StartupError as exc:  # TLS files, the state folder, the port, the admin token
        raise typer.BadParameter(str(exc), param_hint=exc.option) from None
    except StoreError as exc:
        raise typer.BadParameter(str(exc), param_hint="--db") from None


def enroll(
    name: MemberNameArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    renew: Annotated[
        bool,
        typer.Option(
            "--renew",
            help="Give an enrolled (or revoked) member a new token; its old one stops working.",
        ),
    ] = False,
) -> None:
    """Enroll a member; prints its token (give it to the member, it is shown once)."""
    tls = tls_options(ca_cert, client_cert, client_key)
    admin = admin_client(server, token, tls=tls)
    member = admin.renew(name) if renew else admin.enroll(name)
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
            help="This member's token; prefer $FEDAAS_TOKEN or --token-file (ps shows arguments).",
            show_default=False,
        ),
    ] = "",
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="A file holding this member's token (e.g. mode 0600).",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="Member policy (TOML): the models, code, rounds, parameters and privacy "
            "this member accepts; jobs outside it are declined with the reason.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    allow_code: AllowCodeOpt = None,
    storage_option: StorageOpt = None,
    state: Annotated[
        Path,
        typer.Option(
            help="Folder for the member's own state: identity key, privacy ledger and noise, "
            "the data each job pinned (deleting it resets the member's privacy budget).",
            file_okay=False,
        ),
    ] = Path("fedaas-member-state"),
    threads: Annotated[
        int,
        typer.Option(
            help="Torch CPU threads (0: torch's default, one per core; 1 for each of several "
            "members sharing a machine).",
            min=0,
        ),
    ] = 0,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
) -> None:
    """Run a member agent next to its data: pull tasks, train locally, send updates."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise typer.BadParameter(
                f"cannot read {token_file}: {why}", param_hint="--token-file"
            ) from None
    if not token:
        raise typer.BadParameter(
            "a member token is required (fedaas enroll prints one)", param_hint="--token"
        )
    tls = tls_options(ca_cert, client_cert, client_key)
    from fedaas.client.policy import DEFAULT_POLICY, PolicyError, load_policy

    try:
        rules = load_policy(policy) if policy is not None else DEFAULT_POLICY
    except PolicyError as exc:  # one line, status 2, like every other user error
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    rules = rules.with_code(allow_code_packages(allow_code))
    import torch

    from fedaas.client.agent import Agent
    from fedaas.client.transport import Transport

    if threads:
        torch.set_num_threads(threads)
    setup_logging()
    from fedaas.storage import parse_storage_options

    options = parse_storage_options(storage_option)
    check_data(data, options)  # a missing dataset fails now, not when the first job arrives
    from fedaas.folder_lock import FolderInUse, in_use, lock_folder

    try:
        state.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(state, MEMBER_LOCK)  # held while the agent runs
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot keep state in {state}: {exc.strerror}", param_hint="--state"
        ) from None
    except FolderInUse as exc:  # two agents would spend and write one privacy ledger
        raise typer.BadParameter(
            in_use("member agent", exc.holder, f"the state in {state}", "--state"),
            param_hint="--state",
        ) from None
    transport = Transport(server, token, give_up_after=None, tls=tls)
    agent = Agent(transport, data, options, state_dir=state, policy=rules)
    try:
        agent.run()
    finally:
        lock.close()
