"""What secure aggregation's stages exchange, as plain values a wire format can carry.

Frozen dataclasses whose fields are ``str``, ``int``, ``bytes`` or tuples
of them, so the protocol layer can put them in pydantic messages (bytes as
base64) without knowing the cryptography. :class:`RoundContext` is what
every signature, key derivation and AEAD tag is bound to (job, round,
attempt): a rerun of a round is a new attempt with fresh keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedaas.algorithms.secagg.encoding import FixedPoint
from fedaas.algorithms.secagg.errors import ProtocolViolation

MAX_ID_CHARS = 256
DOMAIN = b"fedaas-secagg-v1"


def check_member_id(member_id: object) -> str:
    """A member id: a non-empty string of at most 256 characters."""
    if not isinstance(member_id, str) or not 1 <= len(member_id) <= MAX_ID_CHARS:
        raise ProtocolViolation(f"a member id is a string of 1..{MAX_ID_CHARS} characters")
    return member_id


def framed(*parts: bytes | str | int) -> bytes:
    """Length-prefixed concatenation (unambiguous): str as UTF-8, int as 8 bytes unsigned."""
    out = bytearray()
    for part in parts:
        if isinstance(part, str):
            raw = part.encode()
        elif isinstance(part, int):
            raw = part.to_bytes(8, "big")
        else:
            raw = bytes(part)
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


@dataclass(frozen=True)
class RoundContext:
    """The round every key, signature and mask is bound to."""

    job_id: str
    round: int
    attempt: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not 1 <= len(self.job_id) <= MAX_ID_CHARS:
            raise ValueError(f"job_id is a string of 1..{MAX_ID_CHARS} characters")
        for name in ("round", "attempt"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ValueError(f"{name} is an integer >= 0")

    def encode(self) -> bytes:
        """Canonical bytes: the domain, then job id, round and attempt, length-prefixed."""
        return framed(DOMAIN, self.job_id, self.round, self.attempt)


@dataclass(frozen=True)
class SecAggParams:
    """The public parameters of a secure round (identical on every node).

    ``threshold``: shares needed to reconstruct one member's secret, out of
    its group (its neighbours and itself); ``neighbors``: how many others
    each member shares keys with (SecAgg+, Bell et al. 2020), ``None`` for
    everyone (SecAgg, Bonawitz et al. 2017).
    """

    threshold: int
    neighbors: int | None
    encoding: FixedPoint

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int) or self.threshold < 2:
            raise ValueError("threshold is an integer >= 2")
        if self.neighbors is not None and (
            not isinstance(self.neighbors, int) or self.neighbors < 1
        ):
            raise ValueError("neighbors is an integer >= 1, or None for everyone")


@dataclass(frozen=True)
class KeyAdvertisement:
    """Stage 1: a member's two round public keys, signed by its identity key."""

    member_id: str
    c_public: bytes
    s_public: bytes
    signature: bytes


@dataclass(frozen=True)
class EncryptedShare:
    """Stage 2: ``sender``'s shares for ``recipient`` (nonce || AES-256-GCM ciphertext)."""

    sender: str
    recipient: str
    ciphertext: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4: who uploaded a masked input (survivors) and who shared keys but did not."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4: shares of survivors' self-mask seeds and of dropped members' mask keys."""

    member_id: str
    seed_shares: tuple[tuple[str, bytes], ...]
    key_shares: tuple[tuple[str, bytes], ...]
