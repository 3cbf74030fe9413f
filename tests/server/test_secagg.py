"""Secure aggregation's contracts: the spec section, the round's setup, the wire messages and
the migration that stores members' signing keys (the HTTP API: ``test_secagg_api.py``)."""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from pydantic import ValidationError
from sqlalchemy import create_engine, inspect, text

from fedaas.protocol import ClientPrivacy, NoPrivacy
from fedaas.protocol_secagg import SecureKeys, decode_masked, encode_masked
from fedaas.server.db import Store
from fedaas.server.migrations import alembic_config
from fedaas.server.secagg_setup import (
    distributed_share,
    encoding_for,
    identities,
    register_identity,
    unmasked_mean,
)
from fedaas.spec import SpecError, parse_spec
from fixtures.safetensors_edit import with_metadata
from fixtures.specs import make_spec

SECURE = {"enabled": True}


def secure_spec(**overrides: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {"secure_aggregation": SECURE}
    clients = overrides.pop("clients", 10)
    min_clients = overrides.pop("min_clients", 2)
    sections.update(overrides)
    return make_spec(clients=clients, min_clients=min_clients, **sections)


# the spec section ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": {"aggregator": "median"}}, "aggregator 'median' needs every update"),
        ({"strategy": {"norm_bound": 1.0}}, "norm_bound clips each update on the coordinator"),
        ({"secure_aggregation": {"enabled": True, "threshold": 5}}, "not above half"),
        (
            {"secure_aggregation": {"enabled": True, "threshold": 2, "neighbors": 4}},
            "not above half of neighbors",
        ),
        (
            {"secure_aggregation": {"enabled": True, "threshold": 5, "neighbors": 4}},
            "exceeds neighbors",
        ),
        ({"min_clients": 1}, "the sum of a single update is that update"),
        (
            {
                "privacy": {
                    "mechanism": "gaussian",
                    "noise_multiplier": 1.0,
                    "adaptive_clipping": True,
                }
            },
            "adaptive_clipping",
        ),
        ({"secure_aggregation": {"enabled": False, "threshold": 3}}, "only with enabled"),
        ({"secure_aggregation": {"enabled": True, "neighbors": 10}}, "must be below"),
    ],
)
def test_combinations_that_cannot_be_secure_are_refused_with_the_reason(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(secure_spec(**overrides))


def test_distributed_noise_needs_secure_aggregation() -> None:
    privacy = {"mechanism": "gaussian", "noise_multiplier": 1.0, "placement": "distributed"}
    with pytest.raises(SpecError, match="distributed' needs \\[secure_aggregation\\]"):
        parse_spec(make_spec(clients=10, min_clients=2, privacy=privacy))
    spec = parse_spec(secure_spec(privacy=privacy))
    assert spec.privacy.placement == "distributed"


def test_the_default_threshold_is_a_strict_majority_of_each_members_group() -> None:
    section = parse_spec(secure_spec()).secure_aggregation
    assert [section.reconstruction_threshold(n) for n in (2, 3, 5, 10)] == [2, 2, 3, 6]
    plus = parse_spec(secure_spec(secure_aggregation={"enabled": True, "neighbors": 4}))
    assert plus.secure_aggregation.reconstruction_threshold(50) == 3  # 4 neighbours + itself
    assert plus.secure_aggregation.neighborhood(50) == 4


# setup: encoding, noise shares, the mean ------------------------------------------------------
def test_distributed_shares_carry_the_full_noise_without_the_target() -> None:
    z, clip, threshold = 1.2, 0.5, 6
    privacy = ClientPrivacy(
        mechanism="gaussian", placement="distributed", clip_norm=clip, noise_std=z * clip
    )
    share = distributed_share(privacy, z, threshold)
    assert share.noise_std == pytest.approx(z * clip / math.sqrt(threshold - 1))
    # any threshold - 1 shares other than the target's sum to the full variance
    assert (threshold - 1) * share.noise_std**2 == pytest.approx((z * clip) ** 2)
    central = privacy.model_copy(update={"placement": "central", "noise_std": 0.0})
    assert distributed_share(central, z, threshold) is central


def test_the_encoding_bounds_a_noised_update_and_weighs_dp_updates_equally() -> None:
    spec = parse_spec(secure_spec())
    plain = encoding_for(spec, NoPrivacy(), 10, 100)
    assert plain.clip == 10.0 and plain.max_weight == 10_000 and plain.bits == 32
    noised = ClientPrivacy(
        mechanism="gaussian", placement="distributed", clip_norm=1.0, noise_std=0.1
    )
    enc = encoding_for(spec, noised, 10, 100)
    assert enc.max_weight == 1.0 and enc.clip >= 1.0 + 0.1 * (math.sqrt(100) + 10)


def test_the_mean_of_the_recovered_sum_adds_central_noise_before_dividing() -> None:
    manifest = {"b": (2,), "a": (3,)}
    total = np.arange(5, dtype=np.float64)  # "a" first: tensors are flattened by name
    noise = {"a": np.ones((3,), np.float32), "b": np.zeros((2,), np.float32)}
    mean = unmasked_mean(total, 4.0, manifest, noise, 2.0)
    assert mean["a"].tolist() == [0.5, 1.0, 1.5] and mean["b"].tolist() == [1.5, 2.0]
    assert unmasked_mean(total, 4.0, manifest, None, None)["b"].tolist() == [0.75, 1.0]


# wire messages --------------------------------------------------------------------------------
def test_byte_fields_are_checked_base64_of_the_exact_length() -> None:
    good = base64.b64encode(bytes(32)).decode()
    sig = base64.b64encode(bytes(64)).decode()
    SecureKeys.model_validate({"c_public": good, "s_public": good, "signature": sig})
    for bad in ("not base64!", base64.b64encode(bytes(31)).decode(), 32, "A" * 10_000):
        with pytest.raises(ValidationError):
            SecureKeys.model_validate({"c_public": bad, "s_public": good, "signature": sig})
    with pytest.raises(ValidationError):
        SecureKeys.model_validate({"c_public": good, "s_public": good, "signature": sig, "x": 1})
    keys = SecureKeys(c_public=bytes(32), s_public=bytes(32), signature=bytes(64))
    assert json.loads(keys.model_dump_json())["c_public"] == good


def test_a_masked_upload_is_one_integer_tensor_bound_to_its_attempt() -> None:
    vector = np.arange(7, dtype=np.uint32) * 1_000_000_007
    body = encode_masked(vector, 42)
    assert len(body) <= 4 * 7 + 160  # no bigger than the fp32 update, header aside
    got, keys = decode_masked(body, 7, 32, 42)
    assert np.array_equal(got, vector) and keys is None
    wide = encode_masked(vector.astype(np.uint64), 42)
    assert np.array_equal(decode_masked(wide, 7, 64, 42)[0], vector)
    with pytest.raises(ValueError, match="another run"):
        decode_masked(body, 7, 32, 43)
    with pytest.raises(ValueError, match="exactly one tensor"):
        decode_masked(body, 8, 32, 42)
    with pytest.raises(ValueError, match="exactly one tensor"):
        decode_masked(wide, 7, 32, 42)
    for broken in (b"", body[:20], body[:-4], body + b"\0\0\0\0", b"\xff" * 8 + body[8:]):
        with pytest.raises(ValueError):
            decode_masked(broken, 7, 32, 42)
    deep = b"[" * 2_000 + b"]" * 2_000  # was a RecursionError: a plain-text 500
    utf16 = '{"a": 1}'.encode("utf-16")  # json.loads would take it: safetensors is UTF-8
    for header in (deep, utf16):
        with pytest.raises(ValueError, match="header is not JSON"):
            decode_masked(struct.pack("<Q", len(header)) + header + bytes(28), 7, 32, 42)


def test_a_masked_upload_may_carry_the_next_rounds_public_keys_and_nothing_else() -> None:
    vector = np.arange(7, dtype=np.uint32)
    keys = SecureKeys(c_public=bytes(range(32)), s_public=bytes(32), signature=bytes(64))
    body = encode_masked(vector, 42, keys)
    assert len(body) <= 4 * 7 + 400  # the keys: about 230 bytes of header
    got, ahead = decode_masked(body, 7, 32, 42)
    assert np.array_equal(got, vector) and ahead == keys
    plain = encode_masked(vector, 42)
    with pytest.raises(ValueError, match="no metadata but the attempt"):
        decode_masked(with_metadata(plain, member="m3"), 7, 32, 42)  # nothing about its member
    with pytest.raises(ValueError, match="keys in the masked upload are malformed"):
        decode_masked(with_metadata(plain, next_keys='{"c_public": "AA=="}'), 7, 32, 42)
    with pytest.raises(ValueError, match="malformed"):
        decode_masked(with_metadata(plain, next_keys="[1, 2"), 7, 32, 42)


# the migration --------------------------------------------------------------------------------
def test_migration_0003_adds_the_signing_key_and_keeps_members(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        config = alembic_config(connection)
        command.upgrade(config, "0002")
        connection.execute(
            text("INSERT INTO members (name, token_hash, created_at) VALUES ('a', :h, 1.0)"),
            {"h": "1" * 64},
        )
        command.upgrade(config, "head")
        columns = {c["name"] for c in inspect(connection).get_columns("members")}
        assert "signing_key" in columns
        assert connection.execute(text("SELECT name, signing_key FROM members")).all() == [
            ("a", None)
        ]
        command.downgrade(config, "0002")
        assert "signing_key" not in {c["name"] for c in inspect(connection).get_columns("members")}
    engine.dispose()


def test_identity_keys_are_read_once_and_every_registration_or_clearing_is_seen(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    alpha, beta = (store.add_member(n, h * 64).id for n, h in (("alpha", "1"), ("beta", "2")))
    register_identity(store, alpha, b"a" * 32)
    assert identities(store) == {alpha: b"a" * 32}
    with store.session() as s:  # behind the coordinator's back: not seen, it was read once
        s.execute(text("UPDATE members SET signing_key = :k"), {"k": (b"x" * 32).hex()})
    assert identities(store) == {alpha: b"a" * 32}
    register_identity(store, beta, b"b" * 32)  # the coordinator's own write: read again
    assert identities(store) == {alpha: b"x" * 32, beta: b"b" * 32}
    register_identity(store, alpha, None)  # cleared by the operator: never used again
    assert identities(store) == {beta: b"b" * 32}
    identities(store)[beta] = b"c" * 32  # a caller's copy: the kept keys do not change
    assert identities(store) == {beta: b"b" * 32}
