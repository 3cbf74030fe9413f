"""Options and helpers shared by the commands."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from fedaas.cli.logs import JsonFormatter
from fedaas.client.admin import AdminClient
from fedaas.client.transport import (
    CA_CERT_ENV,
    CLIENT_CERT_ENV,
    CLIENT_KEY_ENV,
    TlsOptions,
    Transport,
)
from fedaas.storage import install_log_redaction, parse_storage_options

console = Console(emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)
"""Errors, warnings and notes: on stderr, one line each (never wrapped), so stdout stays the
command's answer (``--json``)."""

RunFolderOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Run folder (an earlier run's is replaced; any other folder is refused).",
        file_okay=False,
    ),
]
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


def _storage_options(values: list[str] | None) -> list[str] | None:
    """``--storage-option`` checked as the command line is read: a bad one is a usage error."""
    try:
        parse_storage_options(values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return values


StorageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        help="key=value passed to the storage backend (repeatable), e.g. endpoint_url=...; "
        "credentials otherwise come from each cloud's standard environment variables.",
        show_default=False,
        callback=_storage_options,
    ),
]

CaCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        envvar=CA_CERT_ENV,
        help="PEM file of the CA that signed the coordinator's TLS certificate "
        "(default: the system's trust store).",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]
ClientCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--client-cert",
        envvar=CLIENT_CERT_ENV,
        help="PEM client certificate for a coordinator that requires mutual TLS.",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]
ClientKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--client-key",
        envvar=CLIENT_KEY_ENV,
        help="PEM private key of --client-cert (if not inside it).",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]


def tls_options(
    ca_cert: Path | None, client_cert: Path | None, client_key: Path | None
) -> TlsOptions:
    if client_key is not None and client_cert is None:
        raise typer.BadParameter("--client-key needs --client-cert", param_hint="--client-key")
    return TlsOptions(ca_cert, client_cert, client_key)


def admin_client(
    server: str,
    token: str | None,
    give_up_after: float | None = 5.0,
    tls: TlsOptions | None = None,
) -> AdminClient:
    """The operator's client; TLS settings default to ``$FEDAAS_CA_CERT`` and friends."""
    if not token:
        raise typer.BadParameter(
            "no admin token: set FEDAAS_ADMIN_TOKEN or pass --token "
            "(the server wrote one to STATE/admin.token)",
            param_hint="--token",
        )
    tls = tls if tls is not None else TlsOptions.from_env()
    return AdminClient(Transport(server, token, give_up_after=give_up_after, tls=tls))


LOG_FORMAT = {"value": "text"}
"""Set by the root command's ``--log-format`` (or ``$FEDAAS_LOG_FORMAT``)."""


class WithoutTraceback(logging.Filter):
    """Keeps a record's line and drops the traceback attached to it.

    For libraries whose failures fedaas reports itself, in one line: gcsfs logs
    a full traceback each time a request runs out of retries (a store that is
    down or stopped answering), which the caller then reports as a one-line
    ``StorageError`` anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


TRACEBACK_FREE = ("gcsfs",)
"""Loggers whose records lose their traceback unless ``--verbose``."""


def setup_logging(verbose: bool = False) -> None:
    """Rich log lines on a terminal; plain ones to a file or pipe; JSON with ``--log-format json``.

    Also installs credential redaction for every log record of the process
    (storage secrets never reach a log line, whichever library logs them),
    and, unless ``verbose``, drops the tracebacks of :data:`TRACEBACK_FREE`.
    """
    install_log_redaction()
    fmt = LOG_FORMAT["value"]
    interactive = sys.stderr.isatty() and fmt == "text"
    handler: logging.Handler = (
        RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        if interactive
        else logging.StreamHandler()
    )
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s" if interactive else "%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=[handler],
    )
    for noisy in ("httpx", "httpcore", "uvicorn.error", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in TRACEBACK_FREE:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, WithoutTraceback)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(WithoutTraceback())


def _member_name(value: str) -> str:
    """The name as the coordinator accepts it, or a one-line refusal before anything is sent."""
    from pydantic import ValidationError

    from fedaas.protocol import EnrollRequest

    try:
        EnrollRequest(name=value)
    except ValidationError:
        raise typer.BadParameter(
            "a member's name is 1-100 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        ) from None
    return value


MemberNameArg = Annotated[
    str, typer.Argument(help="The member organization's name.", callback=_member_name)
]

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the coordinator's answer as JSON (for scripts).")
]


def connect(
    server: str,
    token: str | None,
    ca_cert: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    give_up_after: float | None = 5.0,
) -> AdminClient:
    """The operator's client from the connection options every coordinator command takes.

    A one-shot command gives up after ``give_up_after`` seconds of failing
    to reach the coordinator (a wrong ``--server`` fails in seconds).
    """
    return admin_client(server, token, give_up_after, tls_options(ca_cert, client_cert, client_key))


def print_json(data: Any) -> None:
    """JSON on stdout, unstyled (pydantic models, or lists of them)."""
    if isinstance(data, list):
        text = "[" + ",".join(item.model_dump_json() for item in data) + "]"
    else:
        text = data.model_dump_json()
    sys.stdout.write(json.dumps(json.loads(text), indent=2) + "\n")


def check_data(url: str, storage_options: dict[str, Any]) -> None:
    """A member's start-up check: its dataset is there and its format is known.

    Raises :class:`~fedaas.data.dataset.DataError` (one line on the member's
    own console, exit status 2) instead of going online and failing the
    first job. The location stays on the member's machine: nothing here is
    sent to the coordinator.
    """
    from fedaas.data.dataset import DataError
    from fedaas.data.source import detect_format
    from fedaas.storage import exists, redact

    if not exists(url, storage_options):
        raise DataError([f"{redact(url)}: no such file or folder (--data)"])
    detect_format(url, storage_options)
