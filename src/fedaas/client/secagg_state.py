"""What a member keeps for secure aggregation from one round to the next.

* Its long-term Ed25519 identity key (``secagg-identity.key``, 0600), made
  on first use, loaded once, and registered with the coordinator when the
  agent starts (``PUT /v1/members/me/identity``), so every peer checks the
  member's round keys against a key registered before any secure round.
* Every session ``(job, round, attempt)`` it took part in
  (``secagg-attempts.log``, one appended line each): it never takes part
  twice in the same session, so a restarted or replaying coordinator gets
  fresh keys or nothing.
* The long-term keys it saw for its peers, per coordinator
  (``secagg-peers.json``): a coordinator that later relays another key for
  a peer is refused (trust on first use).
* The secrets it advertised ahead for its next round, and once it shared
  them, the round's member object (memory only, never written): see
  :meth:`SecureState.advertise_ahead` and :class:`Pending`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fedaas.algorithms.secagg import IdentityKey, KeyAdvertisement, RoundContext, fingerprint
from fedaas.algorithms.secagg.member import RoundSecrets, SecAggMember
from fedaas.client.transport import ApiClientError, Transport
from fedaas.protocol_secagg import IdentityRegistration, SecureKeys, SecureRoster, ShareKeys

log = logging.getLogger("fedaas.agent")

IDENTITY_FILE = "secagg-identity.key"
ATTEMPTS_FILE = "secagg-attempts.log"
PEERS_FILE = "secagg-peers.json"
KEEP_ATTEMPTS = 1000
"""Sessions remembered; the log is compacted to these when it holds twice as many."""


class SecureRefused(Exception):
    """The member will not go on with this secure round; the message says why."""


class SessionSeen(SecureRefused):
    """A session this member already took part in (or sent keys ahead for, then restarted)."""


@dataclass(frozen=True)
class Ahead:
    """Keys advertised for a round before it began: its context, secrets and signed keys."""

    context: RoundContext
    secrets: RoundSecrets
    advertisement: KeyAdvertisement


@dataclass(frozen=True)
class Pending:
    """A round whose stages 1 and 2 this member did during the last one: the member object
    that shared its secrets, the shares it sent, and how many members the roster named."""

    context: RoundContext
    member: SecAggMember
    shares: ShareKeys
    size: int


class SecureState:
    """One member's secure-aggregation state in ``state_dir`` (see the module docstring)."""

    def __init__(self, state_dir: Path, server: str) -> None:
        self.state_dir, self.server = state_dir, server
        self._identity: IdentityKey | None = None
        self._seen: set[str] | None = None
        self._pins: dict[str, dict[str, str]] | None = None
        self.registered = False
        self.ahead: Ahead | None = None
        self.pending: Pending | None = None

    @property
    def identity(self) -> IdentityKey:
        if self._identity is None:
            self._identity = load_identity(self.state_dir)
        return self._identity

    def register(self, transport: Transport) -> None:
        """Register the identity key (once per agent); a coordinator that keeps another one is
        logged and refused for secure rounds, not fatal: plain jobs go on."""
        if self.registered:
            return
        body = IdentityRegistration(signing_key=self.identity.public_bytes())
        try:
            transport.request("PUT", "/v1/members/me/identity", json=body.model_dump(mode="json"))
        except ApiClientError as exc:
            if exc.status != 409:
                raise
            log.error("secure aggregation is off for this member: %s", exc)
            return
        self.registered = True
        log.info("secure aggregation identity %s registered", fingerprint(body.signing_key))

    def note_attempt(self, job_id: str, number: int, attempt: int) -> None:
        """Record that this member takes part in ``attempt``; refuse one it has seen before."""
        path = self.state_dir / ATTEMPTS_FILE
        if self._seen is None:
            self._seen = set(path.read_text().split()) if path.exists() else set()
        entry = f"{job_id}/{number}/{attempt}"
        if entry in self._seen:
            raise SessionSeen(
                f"round {number} of job {job_id} reuses attempt {attempt}: this member never "
                "takes part twice in the same secure session"
            )
        self._seen.add(entry)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with path.open("a") as log_file:  # an append, not a rewrite: no rename every round
            log_file.write(entry + "\n")
        if len(self._seen) > 2 * KEEP_ATTEMPTS:  # the newest, in the order they were noted
            kept = path.read_text().split()[-KEEP_ATTEMPTS:]
            _write(path, "".join(f"{e}\n" for e in kept))
            self._seen = set(kept)

    def check_peers(self, roster: SecureRoster) -> None:
        """Each peer's long-term key must be the one this member saw for it before (TOFU),
        remembered per coordinator: two federations may both have a member named ``alpha``."""
        path = self.state_dir / PEERS_FILE
        if self._pins is None:  # read once; written again only when a new peer is pinned
            self._pins = json.loads(path.read_text()) if path.exists() else {}
        pins = self._pins
        known = pins.get(self.server, {})
        changed = [
            e.member
            for e in roster.members
            if known.get(e.member, e.identity.hex()) != e.identity.hex()
        ]
        if changed:
            raise SecureRefused(
                f"the coordinator relays other long-term keys for {', '.join(changed)} than "
                "before: refusing keys it could have made itself"
            )
        fresh = {e.member: e.identity.hex() for e in roster.members if e.member not in known}
        if fresh:
            pins[self.server] = {**known, **fresh}
            _write(path, json.dumps(pins))

    def advertise_ahead(self, context: RoundContext, member: str) -> SecureKeys:
        """Fresh secrets for the round ``context`` names, before it begins: the signed keys to
        send now. The session is noted first, as for any round this member takes part in."""
        self.note_attempt(context.job_id, context.round, context.attempt)
        secrets = RoundSecrets()
        ad = secrets.advertise(self.identity, context, member)
        self.ahead = Ahead(context, secrets, ad)
        return SecureKeys(c_public=ad.c_public, s_public=ad.s_public, signature=ad.signature)

    def take_ahead(self, context: RoundContext) -> RoundSecrets | None:
        """The secrets advertised ahead for exactly this session (once), else ``None``."""
        ahead, self.ahead = self.ahead, None
        return ahead.secrets if ahead is not None and ahead.context == context else None

    def take_pending(self, context: RoundContext) -> Pending | None:
        """The round shared ahead for exactly this session (once), else ``None``."""
        pending, self.pending = self.pending, None
        return pending if pending is not None and pending.context == context else None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_identity(state_dir: Path) -> IdentityKey:
    """The member's long-term Ed25519 key, created (0600) on first use."""
    path = state_dir / IDENTITY_FILE
    if path.exists():
        return IdentityKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    state_dir.mkdir(parents=True, exist_ok=True)
    key = IdentityKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes().hex() + "\n")
    return key
