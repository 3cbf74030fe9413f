"""The keys of a secure round: identity signatures, round key pairs, derived secrets.

Following Bonawitz et al. (CCS 2017, section 4) each member makes two fresh
X25519 key pairs per round: ``c`` (to encrypt its Shamir shares to each
peer) and ``s`` (the pairwise masks). It signs both public keys with its
long-term Ed25519 identity key (registered at enrolment), bound to the
job, round, attempt and its id, so a coordinator can't slip in keys of its
own (the active-attacker variant of the paper). From an X25519 agreement,
HKDF-SHA256 (RFC 5869) derives

* the AES-256-GCM key of the shares ``sender -> recipient`` (per direction),
* the pairwise mask seed ``s_uv``, bound to the round and the ordered pair.
"""

from __future__ import annotations

import functools
import hashlib
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedaas.algorithms.secagg.errors import (
    ProtocolViolation,
    ShareDecryptionFailed,
    SignatureInvalid,
)
from fedaas.algorithms.secagg.messages import KeyAdvertisement, RoundContext, framed

KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
_PROBE = X25519PrivateKey.generate()


class IdentityKey:
    """A member's long-term Ed25519 key; its public half is registered when it enrolls."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> IdentityKey:
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise ValueError(f"an identity private key is {KEY_BYTES} raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def fingerprint(identity_public: bytes) -> str:
    """A long-term key's fingerprint: the first 16 hex digits of its SHA-256, for people to
    compare out of band (the member logs it, the operator's member list shows it)."""
    return hashlib.sha256(identity_public).hexdigest()[:16]


def _advertised(context: RoundContext, member_id: str, c_public: bytes, s_public: bytes) -> bytes:
    return framed(context.encode(), b"advertise", member_id, c_public, s_public)


def sign_advertisement(
    identity: IdentityKey, context: RoundContext, member_id: str, c_public: bytes, s_public: bytes
) -> KeyAdvertisement:
    """The signed advertisement of ``member_id``'s round public keys."""
    signature = identity.sign(_advertised(context, member_id, c_public, s_public))
    return KeyAdvertisement(member_id, c_public, s_public, signature)


def verify_advertisement(
    ad: KeyAdvertisement, identity_public: bytes, context: RoundContext, *, points: bool = True
) -> None:
    """Raise :class:`SignatureInvalid` unless ``ad`` is signed for this round by that identity.

    ``points``: also refuse a low-order X25519 public key up front (the
    coordinator does, so a roster never carries one). A member may skip it:
    its own agreement with such a key fails when it is used
    (:meth:`RoundKeyPair.agree`), before anything is revealed.
    """
    sizes = (len(ad.c_public), len(ad.s_public), len(ad.signature), len(identity_public))
    if sizes != (KEY_BYTES, KEY_BYTES, SIGNATURE_BYTES, KEY_BYTES):
        raise SignatureInvalid(f"{ad.member_id}: keys are 32 bytes and signatures 64")
    message = _advertised(context, ad.member_id, ad.c_public, ad.s_public)
    if not _signed(bytes(identity_public), bytes(ad.signature), message):
        raise SignatureInvalid(
            f"{ad.member_id}: round keys are not signed by its registered identity key "
            "for this job, round and attempt"
        )
    for public in (ad.c_public, ad.s_public) if points else ():
        if not _usable(bytes(public)):
            raise ProtocolViolation(f"{ad.member_id}: an unusable X25519 public key")


@functools.lru_cache(maxsize=4096)
def _signed(identity_public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``identity_public``'s Ed25519 signature of ``message``.

    Remembered for the exact bytes: the coordinator checks keys sent ahead
    when they arrive and again when their round opens, and a verification
    costs about 80 us (a member's largest single piece of cryptography).
    """
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _usable(public: bytes) -> bool:
    """Whether an X25519 public key agrees to a nonzero secret (a low-order point agrees to
    zero with every key). Remembered like :func:`_signed`: keys sent ahead are checked when
    their round opens, and a retried request brings the same keys again."""
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


class RoundKeyPair:
    """One X25519 key pair; the private half can be shared (it is 32 raw bytes)."""

    def __init__(self, private: bytes | None = None) -> None:
        raw = os.urandom(KEY_BYTES) if private is None else private
        if len(raw) != KEY_BYTES:
            raise ValueError("an X25519 private key is 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(raw)
        self.private = raw
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def agree(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with ``peer_public``; refuses a low-order point."""
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            raise ProtocolViolation(f"an unusable X25519 public key: {exc}") from exc


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def mask_seed(agreement: bytes, context: RoundContext, a: str, b: str) -> bytes:
    """Pairwise mask seed ``s_ab`` (same for both ends): HKDF bound to the round and ordered pair."""
    low, high = sorted((a, b))
    return _hkdf(agreement, framed(context.encode(), b"pairwise-mask", low, high))


def _share_key(agreement: bytes, context: RoundContext, sender: str, recipient: str) -> bytes:
    return _hkdf(agreement, framed(context.encode(), b"share-key", sender, recipient))


def _aad(context: RoundContext, sender: str, recipient: str) -> bytes:
    return framed(context.encode(), b"shares", sender, recipient)


def seal(
    agreement: bytes, context: RoundContext, sender: str, recipient: str, plain: bytes
) -> bytes:
    """AES-256-GCM of ``plain`` from ``sender`` to ``recipient``: 12-byte random nonce || ciphertext."""
    nonce = os.urandom(NONCE_BYTES)
    key = _share_key(agreement, context, sender, recipient)
    return nonce + AESGCM(key).encrypt(nonce, plain, _aad(context, sender, recipient))


def open_sealed(
    agreement: bytes, context: RoundContext, sender: str, recipient: str, sealed: bytes
) -> bytes:
    """Inverse of :func:`seal`; :class:`ShareDecryptionFailed` if it does not authenticate."""
    if len(sealed) < NONCE_BYTES + 16:
        raise ShareDecryptionFailed(f"shares from {sender}: too short")
    key = _share_key(agreement, context, sender, recipient)
    try:
        return AESGCM(key).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(context, sender, recipient)
        )
    except InvalidTag as exc:
        raise ShareDecryptionFailed(
            f"shares from {sender} to {recipient} do not authenticate for this round"
        ) from exc
