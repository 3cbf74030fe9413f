"""The ``fedaas`` command line (typer + rich).

Every failure a user can cause ends in one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fedaas.cli import datasets, demo, jobs, members, nodes
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
app.command("client")(nodes.client)
app.add_typer(jobs.app, name="job")
app.add_typer(datasets.app, name="datasets")
app.command("demo")(demo.demo)
app.command("privacy")(privacy)
app.command("members")(members.members)
app.command("revoke")(members.revoke)

err = Console(stderr=True, soft_wrap=True)


def main() -> None:
    try:
        app()
    except ApiClientError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except (SpecError, DataError, StorageError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
