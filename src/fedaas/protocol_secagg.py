"""The wire messages of secure aggregation (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et al.
CCS 2020), carried on the pull-based member flow of :mod:`fedaas.protocol`.

A secure round's train task carries a :class:`SecureSession` (the round's
attempt, which every key and signature is bound to, and the member's id in
the round). The member then walks four stages, each a request whose answer
is held until the coordinator closes the stage (a quorum in, stragglers
given a short grace, never every reply awaited), so a stage costs one round
trip, not a poll interval:

1. advertise keys: ``POST .../secagg/keys`` (:class:`SecureKeys`, two X25519
   public keys signed with the member's long-term Ed25519 key) answered
   with the :class:`SecureRoster` (every member's keys with their
   long-term keys, so each member checks every signature);
2. share keys: ``POST .../secagg/shares`` (:class:`ShareKeys`, Shamir shares
   AEAD-encrypted to each neighbour, opaque to the coordinator) answered
   with the :class:`InboundShares` addressed to this member;
3. masked upload: ``PUT .../update`` (the masked integer vector as
   safetensors, tensor :data:`MASKED_TENSOR`, uint32 when the modulus is
   2^32: no bigger than the fp32 update);
4. unmask: ``GET .../secagg/unmask`` long-polls the
   :class:`SecureUnmaskRequest` (who survived, who dropped), ``POST
   .../secagg/unmask`` answers it with :class:`UnmaskShares`; with
   ``next_timeout`` its answer is held for the member's next task (a task
   bundle, as an upload's).

Stages 1 and 2 of the next round ride on stages 3 and 4 of this one
(pipelined): the task names the next round's attempt
(:attr:`SecureSession.next_attempt`); the masked upload carries the member's
keys for it (:func:`encode_masked`); the unmask question carries the next
round's roster of those keys (:attr:`SecureUnmaskRequest.next_roster`); the
unmask answer carries the member's encrypted shares for it
(:attr:`UnmaskShares.next_shares`). When the next round samples exactly that
roster and every member of it sent its shares, its train task carries the
shares addressed to the member (:attr:`SecureSession.inbound`) and the round
costs two requests per member: masked upload (answered with the unmask
question), unmask (answered with the next task). Otherwise that round runs
all four stages under a fresh attempt: shares made for one roster are never
made again for another under the same keys.

Byte fields travel as base64 strings with exact or capped decoded lengths.
Like :mod:`fedaas.protocol` this module sits at the bottom: it imports
nothing of ours.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

MASKED_TENSOR = "masked"
"""The one tensor of a masked upload: the encoded, masked vector (uint32 or uint64)."""
MAX_MEMBERS = 100_000
MAX_CIPHERTEXT = 1024
"""Bytes of one encrypted share pair (nonce, two Shamir shares, AEAD tag: ~125 today)."""
MAX_SHARE = 256
"""Bytes of one Shamir share (x-coordinate and a field element: 35 today)."""


def _bytes_field(low: int, high: int) -> Any:
    """Bytes as standard base64 on the wire, ``low..high`` bytes once decoded."""

    def decode(value: Any) -> bytes:
        if isinstance(value, bytes | bytearray):
            raw = bytes(value)
        elif isinstance(value, str) and len(value) <= 4 * (high // 3 + 1):
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be standard base64") from None
        else:
            raise ValueError(f"must be a base64 string of at most {high} bytes")
        if not low <= len(raw) <= high:
            size = f"{low}" if low == high else f"{low}..{high}"
            raise ValueError(f"must hold {size} bytes (got {len(raw)})")
        return raw

    return Annotated[
        bytes,
        BeforeValidator(decode),
        PlainSerializer(lambda raw: base64.b64encode(raw).decode("ascii"), return_type=str),
    ]


PublicKey = _bytes_field(32, 32)
"""A raw 32-byte X25519 or Ed25519 public key."""
Signature = _bytes_field(64, 64)
"""A raw 64-byte Ed25519 signature."""
Ciphertext = _bytes_field(28, MAX_CIPHERTEXT)
Share = _bytes_field(1, MAX_SHARE)
MemberRef = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w.\-]*$")]
"""A member's id in a secure round: its enrolled name."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecureKeys(_Message):
    """Stage 1: the member's fresh X25519 keys for this round, signed with its long-term key."""

    c_public: PublicKey
    s_public: PublicKey
    signature: Signature


class RosterEntry(_Message):
    member: MemberRef
    identity: PublicKey
    """The member's registered long-term key: its signature is checked against this."""
    c_public: PublicKey
    s_public: PublicKey
    signature: Signature


class SecureRoster(_Message):
    """Stage 1's answer: every member whose keys arrived in time (sorted by member)."""

    job_id: Annotated[str, Field(min_length=1, max_length=32)]
    round: Annotated[int, Field(ge=1)]
    attempt: Annotated[int, Field(ge=0, lt=2**63)]
    members: Annotated[list[RosterEntry], Field(min_length=1, max_length=MAX_MEMBERS)]


class WireShare(_Message):
    """One encrypted pair of Shamir shares, from ``sender`` to ``recipient``."""

    sender: MemberRef
    recipient: MemberRef
    ciphertext: Ciphertext


class SecureSession(_Message):
    """In a secure round's train task: what the member binds its keys to, and who it is."""

    attempt: Annotated[int, Field(ge=0, lt=2**63)]
    """Fresh for every run of the round (a restarted coordinator draws a new one)."""
    member: MemberRef
    sampled: Annotated[int, Field(ge=2, le=MAX_MEMBERS)]
    """Members sampled: the member derives the reconstruction threshold from it and the spec."""
    bits: Literal[32, 64]
    """The fixed-point encoding (``FixedPoint``): modulus 2^bits, step 1/scale, L2 clip, weight cap."""
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    clip: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    max_weight: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    next_attempt: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    """The attempt drawn for the next round (``None`` on the job's last): the member may send
    that round's keys with its masked upload (stage 1 ahead)."""
    inbound: Annotated[list[WireShare], Field(max_length=MAX_MEMBERS)] | None = None
    """Stage 2's answer already, when stages 1 and 2 of this session ran during the last round
    (the member sent its shares with its unmask answer): the member goes on to train."""


class IdentityRegistration(_Message):
    """A member's long-term Ed25519 public key, registered once (``PUT /v1/members/me/identity``)."""

    signing_key: PublicKey


class IdentityRegistered(_Message):
    name: MemberRef
    signing_key: PublicKey


class IdentityCleared(_Message):
    """The operator cleared a member's signing key: it registers a new one on its next round."""

    name: MemberRef
    cleared: bool = True


class ShareKeys(_Message):
    """Stage 2: one encrypted share pair per neighbour."""

    shares: Annotated[list[WireShare], Field(max_length=MAX_MEMBERS)]


class InboundShares(_Message):
    """Stage 2's answer: the share pairs addressed to this member by members that sent theirs."""

    shares: Annotated[list[WireShare], Field(max_length=MAX_MEMBERS)]


class SecureUnmaskRequest(_Message):
    """Stage 4: whose self mask to remove (``survivors``) and whose pairwise masks (``dropped``)."""

    survivors: Annotated[list[MemberRef], Field(max_length=MAX_MEMBERS)]
    dropped: Annotated[list[MemberRef], Field(max_length=MAX_MEMBERS)]
    next_roster: SecureRoster | None = None
    """The next round's roster: the keys sent ahead with this round's masked uploads (stage
    1's answer ahead); a member answers it with its shares (``UnmaskShares.next_shares``)."""


class MemberShare(_Message):
    member: MemberRef
    """Whose secret this is a share of."""
    share: Share


class UnmaskShares(_Message):
    """Stage 4's answer: seed shares of survivors, key shares of dropped members, never both."""

    seed_shares: Annotated[list[MemberShare], Field(max_length=MAX_MEMBERS)]
    key_shares: Annotated[list[MemberShare], Field(max_length=MAX_MEMBERS)]
    next_shares: ShareKeys | None = None
    """Stage 2 of the next round ahead of time: shares for ``next_roster``."""


class UnmaskAccepted(_Message):
    accepted: bool = True
    round: Annotated[int, Field(ge=1)]


_DTYPES = {32: ("U32", np.dtype("<u4")), 64: ("U64", np.dtype("<u8"))}
MAX_HEADER = 4096
NEXT_KEYS = "next_keys"
"""The masked upload's metadata entry for the member's keys for the next round (JSON)."""


def encode_masked(vector: np.ndarray, attempt: int, next_keys: SecureKeys | None = None) -> bytes:
    """A masked vector as a safetensors file: one 1-D ``U32``/``U64`` tensor :data:`MASKED_TENSOR`,
    and in its metadata only the round's ``attempt`` (a stale upload is told apart) and the
    member's signed keys for the next round, when it sends them (public keys, nothing of it)."""
    bits = 32 if vector.dtype == np.uint32 else 64 if vector.dtype == np.uint64 else 0
    if not bits or vector.ndim != 1:
        raise ValueError("a masked vector is a 1-D uint32 or uint64 array")
    name, dtype = _DTYPES[bits]
    data = np.ascontiguousarray(vector, dtype=dtype).tobytes()
    entry = {"dtype": name, "shape": [vector.size], "data_offsets": [0, len(data)]}
    metadata = {"attempt": str(attempt)}
    if next_keys is not None:
        metadata[NEXT_KEYS] = next_keys.model_dump_json()
    header = {"__metadata__": metadata, MASKED_TENSOR: entry}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def decode_masked(
    body: bytes, length: int, bits: int, attempt: int
) -> tuple[np.ndarray, SecureKeys | None]:
    """The masked vector of an upload and the keys it carries for the next round (or ``None``);
    :class:`ValueError` saying what is wrong with it.

    Exactly one tensor :data:`MASKED_TENSOR` of ``length`` elements of the
    round's dtype, nothing before or after it, and no metadata but the
    round's ``attempt`` and :data:`NEXT_KEYS` (a masked upload carries nothing
    about its member in the clear but public keys; one masked for another run
    of the round is refused).
    """
    name, dtype = _DTYPES[bits]
    if len(body) < 8:
        raise ValueError("a masked upload is a safetensors file")
    (size,) = struct.unpack("<Q", body[:8])
    if size > MAX_HEADER or 8 + size > len(body):
        raise ValueError("the masked upload's safetensors header is malformed")
    try:  # UTF-8 only; RecursionError: deeply nested brackets are a 400, not a crash
        header = json.loads(body[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("the masked upload's safetensors header is not JSON") from None
    expected = {"dtype": name, "shape": [length], "data_offsets": [0, length * dtype.itemsize]}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("attempt") != str(attempt):
        raise ValueError("the masked upload belongs to another run of the round (attempt)")
    if header != {"__metadata__": metadata, MASKED_TENSOR: expected} or set(metadata) - {
        "attempt",
        NEXT_KEYS,
    }:
        raise ValueError(
            f"a masked upload holds exactly one tensor {MASKED_TENSOR!r}: {name}, shape "
            f"[{length}], and no metadata but the attempt and the next round's keys"
        )
    next_keys = None
    if NEXT_KEYS in metadata:
        try:
            next_keys = SecureKeys.model_validate_json(metadata[NEXT_KEYS])
        except ValueError:
            raise ValueError("the next round's keys in the masked upload are malformed") from None
    data = body[8 + size :]
    if len(data) != length * dtype.itemsize:
        raise ValueError(
            f"the masked upload holds {len(data)} data bytes, not {length * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("=")), next_keys
