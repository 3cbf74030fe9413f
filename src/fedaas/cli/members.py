"""``fedaas members`` and ``fedaas revoke``: who is enrolled, and shutting one out.

Revoking is immediate (the member's next request is refused with 401) and
permanent: it survives coordinator restarts, and the name stays taken.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from fedaas.cli.common import (
    DEFAULT_SERVER,
    AdminTokenOpt,
    CaCertOpt,
    ClientCertOpt,
    ClientKeyOpt,
    JsonOpt,
    MemberNameArg,
    ServerOpt,
    connect,
    console,
    print_json,
)


def revoke(
    name: MemberNameArg,
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
) -> None:
    """Revoke a member's token now; its requests are refused from the next one on."""
    connect(server, token, ca_cert, client_cert, client_key).revoke(name)
    console.print(f"member {escape(name)} revoked", highlight=False)


def members(
    server: ServerOpt = DEFAULT_SERVER,
    token: AdminTokenOpt = None,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List enrolled members: name, revoked, online now, identity key fingerprint.

    The fingerprint is of the identity key each member registered for secure
    aggregation: compare it with the one the member's log shows.
    """
    listed = connect(server, token, ca_cert, client_cert, client_key).members()
    if as_json:
        print_json(listed)
        return
    table = Table("id", "name", "status", "online", "identity")
    for member in listed:
        status = "[red]revoked[/]" if member.revoked else "active"
        online = "yes" if member.online and not member.revoked else "no"
        table.add_row(str(member.id), member.name, status, online, member.identity or "-")
    console.print(table)
