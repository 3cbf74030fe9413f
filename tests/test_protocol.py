"""The wire contract: each message parses what the other side sends, and nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from fedaas.protocol import (
    ClientPrivacy,
    NoPrivacy,
    Receipt,
    RecordPrivacy,
    RoundRecord,
    Task,
    UpdateMetadata,
    decode_bundle,
    encode_bundle,
)
from fedaas.spec import parse_spec
from fixtures.specs import make_spec

SPEC: dict[str, Any] = make_spec("t", 2, features=4, classes=3, train=None, federation=None)


def _task(**privacy: Any) -> dict[str, Any]:
    return {
        "job_id": "job-abc",
        "round": 1,
        "stage": "train",
        "model_round": 0,
        "model_etag": '"job-abc-r0"',
        "deadline_in": 10.0,
        "max_upload_bytes": 1000,
        "spec": parse_spec(SPEC).to_dict(),
        "privacy": privacy or {"kind": "none"},
    }


def test_a_task_round_trips_through_json() -> None:
    task = Task.model_validate(
        _task(kind="client", mechanism="gaussian", placement="local", clip_norm=0.5, noise_std=1.0)
    )
    again = Task.model_validate_json(task.model_dump_json())
    assert again == task
    assert isinstance(again.privacy, ClientPrivacy)
    assert again.spec.job.rounds == 2


def test_a_task_bundle_carries_the_task_then_the_model_in_its_body() -> None:
    task, model = '{"job_id": "j"}' * 500, b"\x08\x00safetensors..."  # 7.5 kB: no header fits
    body = encode_bundle(task.encode(), model)
    assert decode_bundle(body) == (task, model)
    assert decode_bundle(encode_bundle(b"", b"")) == ("", b"")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00\x01", "starts with its task's length"),
        ((100).to_bytes(4, "big") + b"{}", "claims 100 bytes, but the body holds 2"),
        (b"\xff\xff\xff\xff", "claims 4294967295 bytes"),
        ((2).to_bytes(4, "big") + b"\xff\xfe", "can't decode"),  # a task that is not UTF-8
    ],
)
def test_a_broken_task_bundle_is_named(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_bundle(body)


@pytest.mark.parametrize(
    ("privacy", "kind"),
    [
        ({"kind": "none"}, NoPrivacy),
        (
            {
                "kind": "client",
                "mechanism": "ou",
                "placement": "central",
                "clip_norm": 1,
                "theta": 0.5,
            },
            ClientPrivacy,
        ),
        (
            {"kind": "record", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5},
            RecordPrivacy,
        ),
    ],
)
def test_privacy_instructions_are_told_apart_by_kind(privacy: dict[str, Any], kind: type) -> None:
    assert isinstance(Task.model_validate(_task(**privacy)).privacy, kind)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"privacy": {"kind": "secret"}}, "privacy"),
        (
            {
                "privacy": {
                    "kind": "client",
                    "mechanism": "gaussian",
                    "placement": "local",
                    "clip_norm": -1,
                }
            },
            "clip_norm",
        ),
        ({"privacy": {"kind": "none", "noise_std": 3}}, "noise_std"),
        ({"stage": "exfiltrate"}, "stage"),
        ({"round": 0}, "round"),
        ({"job_id": "../../etc"}, "job_id"),
        ({"extra": 1}, "extra"),
        ({"spec": {"job": {"name": "t", "rounds": 1}}}, "spec"),
    ],
)
def test_a_malformed_task_is_refused_naming_the_field(change: dict[str, Any], where: str) -> None:
    data = _task() | change
    with pytest.raises(ValidationError) as info:
        Task.model_validate_json(json.dumps(data))
    assert where in str(info.value)


def test_update_metadata_round_trips_through_safetensors_strings() -> None:
    meta = UpdateMetadata(num_examples=12, metrics={"train_loss": 0.5}, unclipped=False)
    strings = meta.to_strings()
    assert all(isinstance(v, str) for v in strings.values())
    assert UpdateMetadata.from_strings(strings) == meta


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"num_examples": "-3"}, "num_examples must be a positive integer"),
        ({"num_examples": "0"}, "num_examples must be a positive integer"),
        ({"num_examples": str(10**13)}, "num_examples must be a positive integer"),
        ({"num_examples": "5", "metrics": "[1, 2]"}, "metrics must be a JSON object"),
        ({"num_examples": "5", "metrics": '{"a": true}'}, "short names to finite numbers"),
        ({"num_examples": "5", "metrics": '{"a": NaN}'}, "finite"),
        ({"num_examples": "5", "metrics": json.dumps({f"m{i}": 1 for i in range(40)})}, "at most"),
        ({"num_examples": "5", "metrics": "{"}, "JSON object"),
    ],
)
def test_bad_update_metadata_is_named(meta: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UpdateMetadata.from_strings(meta)


def test_round_records_keep_their_metrics_beside_the_named_fields() -> None:
    record = RoundRecord.model_validate(
        {
            "round": 3,
            "accuracy": 0.5,
            "loss": 1.0,
            "clients": 2,
            "seconds": 0.1,
            "bytes_up": 10,
            "bytes_down": 20,
            "participants": [],
            "epsilon": 1.5,
        }
    )
    assert record.model_extra == {"epsilon": 1.5}
    assert Receipt(job_id="job-1", round=1, num_examples=3).accepted
