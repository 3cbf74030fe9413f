"""What the coordinator accepts and publishes under each privacy setting (server.disclosure)."""

from __future__ import annotations

import pytest

from fedaas.protocol import ClientPrivacy, NoPrivacy, RecordPrivacy, UpdateMetadata
from fedaas.server.disclosure import Disclosure
from fedaas.server.errors import InvalidRequest
from fedaas.spec_privacy import PrivacyGaussian, PrivacyNone, PrivacyRecord

CLIENT = PrivacyGaussian(mechanism="gaussian", noise_multiplier=1.0)
ADAPTIVE = PrivacyGaussian(mechanism="gaussian", noise_multiplier=1.0, adaptive_clipping=True)
RECORD = PrivacyRecord(unit="record", noise_multiplier=1.0)
FULL = UpdateMetadata(num_examples=60, metrics={"train_loss": 0.5}, unclipped=True)


def test_members_send_only_what_the_accountant_covers() -> None:
    metrics = {"train_loss": 0.5, "record_epsilon": 1.2, "record_epsilon_next": 1.5}
    client = ClientPrivacy(mechanism="gaussian", placement="central", clip_norm=1.0)
    assert UpdateMetadata.for_round(client, 60, metrics, False).to_strings() == {"metrics": "{}"}
    adaptive = client.model_copy(update={"adaptive_clipping": True})
    assert UpdateMetadata.for_round(adaptive, 60, metrics, False).unclipped is False
    record = RecordPrivacy(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    sent = UpdateMetadata.for_round(record, 60, metrics, True)
    assert sent.num_examples is None and set(sent.metrics) == {
        "record_epsilon",
        "record_epsilon_next",
    }
    plain = UpdateMetadata.for_round(NoPrivacy(), 60, metrics, True)
    assert plain.num_examples == 60 and plain.metrics == metrics
    assert UpdateMetadata.from_strings(sent.to_strings()) == sent


@pytest.mark.parametrize(
    ("cfg", "meta", "refused"),
    [
        (CLIENT, FULL, "num_examples, metrics.train_loss, unclipped"),
        (CLIENT, UpdateMetadata(unclipped=True), "unclipped"),
        (ADAPTIVE, UpdateMetadata(), "unclipped is required"),
        (RECORD, UpdateMetadata(num_examples=3), "num_examples"),
        (RECORD, UpdateMetadata(metrics={"train_accuracy": 0.9}), "metrics.train_accuracy"),
        (PrivacyNone(), UpdateMetadata(), "num_examples is required"),
    ],
)
def test_the_coordinator_refuses_what_it_must_not_keep(cfg, meta, refused) -> None:
    with pytest.raises(InvalidRequest, match=refused):
        Disclosure(cfg).check_update(meta)


def test_allowed_metadata_passes() -> None:
    Disclosure(CLIENT).check_update(UpdateMetadata())
    Disclosure(ADAPTIVE).check_update(UpdateMetadata(unclipped=False))
    Disclosure(RECORD).check_update(UpdateMetadata(metrics={"record_epsilon": 1.0}))
    Disclosure(PrivacyNone()).check_update(FULL)


def test_round_records_keep_only_covered_values() -> None:
    metrics = {
        "accuracy": 0.8,
        "loss": 0.4,
        "epsilon": 2.0,
        "delta": 1e-5,
        "clip_norm": 1.0,
        "private": True,
        "sampling_rate": 0.5,
        "seconds": 1.0,
        "clients": 7,
        "bytes_up": 100,
        "bytes_down": 100,
        "members.train_loss": 0.3,
        "federated_accuracy": 0.7,
        "updates_clipped": 3,
    }
    client = Disclosure(CLIENT)
    published = client.published(metrics)
    assert published["clients"] is None and published["bytes_up"] is None
    assert not {"members.train_loss", "federated_accuracy", "updates_clipped"} & set(published)
    assert published["epsilon"] == 2.0 and published["accuracy"] == 0.8
    assert client.participants(["a", "b"]) == [] and not client.keeps_receipts
    record = Disclosure(RECORD).published(metrics)
    assert record["clients"] == 7 and "members.train_loss" not in record
    assert Disclosure(PrivacyNone()).published(metrics) == metrics
    assert Disclosure(PrivacyNone()).participants(["a"]) == ["a"]
