"""Round keys: signatures bind the round and the member; derived secrets agree at both ends."""

from __future__ import annotations

import dataclasses

import pytest

from fedaas.algorithms.secagg import IdentityKey, RoundContext, SignatureInvalid
from fedaas.algorithms.secagg.errors import ProtocolViolation, ShareDecryptionFailed
from fedaas.algorithms.secagg.keys import (
    RoundKeyPair,
    mask_seed,
    open_sealed,
    seal,
    sign_advertisement,
    verify_advertisement,
)

CTX = RoundContext("job-1", 4, 0)


def test_a_signed_advertisement_verifies_only_in_its_round() -> None:
    identity, c, s = IdentityKey.generate(), RoundKeyPair(), RoundKeyPair()
    ad = sign_advertisement(identity, CTX, "alice", c.public, s.public)
    verify_advertisement(ad, identity.public_bytes(), CTX)
    for other in (
        RoundContext("job-1", 4, 1),
        RoundContext("job-1", 5, 0),
        RoundContext("job-2", 4, 0),
    ):
        with pytest.raises(SignatureInvalid):
            verify_advertisement(ad, identity.public_bytes(), other)
    with pytest.raises(SignatureInvalid):  # another member's name on alice's keys
        verify_advertisement(dataclasses.replace(ad, member_id="bob"), identity.public_bytes(), CTX)
    with pytest.raises(SignatureInvalid):  # the coordinator's own key slipped in
        swapped = dataclasses.replace(ad, s_public=RoundKeyPair().public)
        verify_advertisement(swapped, identity.public_bytes(), CTX)
    with pytest.raises(SignatureInvalid):  # signed by someone else
        verify_advertisement(ad, IdentityKey.generate().public_bytes(), CTX)


def test_identity_key_round_trips_through_raw_bytes() -> None:
    identity = IdentityKey.generate()
    again = IdentityKey.from_private_bytes(identity.private_bytes())
    assert again.public_bytes() == identity.public_bytes()
    with pytest.raises(ValueError):
        IdentityKey.from_private_bytes(b"\x00" * 31)


def test_both_ends_derive_the_same_pair_secrets() -> None:
    a, b = RoundKeyPair(), RoundKeyPair()
    seed_ab = mask_seed(a.agree(b.public), CTX, "alice", "bob")
    assert seed_ab == mask_seed(b.agree(a.public), CTX, "bob", "alice")
    assert seed_ab != mask_seed(a.agree(b.public), RoundContext("job-1", 4, 1), "alice", "bob")
    assert seed_ab != mask_seed(a.agree(b.public), CTX, "alice", "carol")
    sealed = seal(a.agree(b.public), CTX, "alice", "bob", b"shares")
    assert open_sealed(b.agree(a.public), CTX, "alice", "bob", sealed) == b"shares"


def test_sealed_shares_are_bound_to_sender_recipient_and_round() -> None:
    a, b = RoundKeyPair(), RoundKeyPair()
    sealed = seal(a.agree(b.public), CTX, "alice", "bob", b"shares")
    with pytest.raises(ShareDecryptionFailed):
        open_sealed(b.agree(a.public), CTX, "carol", "bob", sealed)
    with pytest.raises(ShareDecryptionFailed):
        open_sealed(b.agree(a.public), RoundContext("job-1", 4, 1), "alice", "bob", sealed)
    with pytest.raises(ShareDecryptionFailed):
        tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
        open_sealed(b.agree(a.public), CTX, "alice", "bob", tampered)


def test_round_context_is_validated() -> None:
    with pytest.raises(ValueError):
        RoundContext("", 1)
    with pytest.raises(ValueError):
        RoundContext("job", -1)


def test_a_low_order_round_key_is_refused_even_when_signed() -> None:
    identity = IdentityKey.generate()
    ad = sign_advertisement(identity, CTX, "alice", bytes(32), RoundKeyPair().public)
    with pytest.raises(ProtocolViolation, match="unusable X25519"):
        verify_advertisement(ad, identity.public_bytes(), CTX)
