"""The ``fedaas`` command line (typer + rich).

Every failure a user can cause ends in one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from fedaas import __version__
from fedaas.cli import datasets, demo, jobs, members, nodes, simulate
from fedaas.cli.common import LOG_FORMAT, err
from fedaas.cli.logs import FORMAT_ENV, FORMATS
from fedaas.cli.privacy import privacy
from fedaas.client.transport import ApiClientError
from fedaas.data.dataset import DataError
from fedaas.spec import SpecError
from fedaas.storage import StorageError

app = typer.Typer(
    name="fedaas",
    help="Federated learning as a service: train one model across organizations without sharing data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("server")(nodes.server)
app.command("enroll")(nodes.enroll)
# one word for the organizations: "member"; "client" stays as an alias for existing scripts
app.command("member")(nodes.client)
app.command("client", hidden=True, help="Alias of `fedaas member`.")(nodes.client)
app.add_typer(jobs.app, name="job")
app.add_typer(datasets.app, name="datasets")
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)
app.command("privacy")(privacy)
app.command("members")(members.members)
app.command("revoke")(members.revoke)


def _version(value: bool) -> None:
    if value:
        print(f"fedaas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar=FORMAT_ENV,
            help="Log lines of `server` and `member`: text, or json (one object per line).",
        ),
    ] = "text",
) -> None:
    """Federated learning as a service: train one model across organizations without sharing data."""
    if log_format not in FORMATS:
        raise typer.BadParameter("use text or json", param_hint="--log-format")
    LOG_FORMAT["value"] = log_format


def main() -> None:
    try:
        app()
    except ApiClientError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except (SpecError, DataError, StorageError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
