"""The job spec's [privacy] section: defaults, accepted settings, inconsistent ones refused."""

from __future__ import annotations

import json
import re

import pytest

from fedaas.spec import (
    JobSpec,
    PrivacyGaussian,
    PrivacyNone,
    PrivacyOU,
    PrivacyRecord,
    SpecError,
    parse_spec,
)
from fixtures.specs import make_spec

# ------------------------------------------------------ the [privacy] section


def _base(**sections: dict | None) -> dict:
    """A logistic-regression spec with the spec's own [train] and [federation] defaults."""
    return make_spec("dp", 3, features=4, classes=2, train=None, federation=None, **sections)


def _spec(privacy: dict) -> JobSpec:
    return parse_spec(_base(privacy=privacy))


def test_privacy_section_defaults_to_no_privacy():
    spec = parse_spec(_base())
    assert spec.privacy == PrivacyNone() and spec.privacy.mechanism == "none"
    assert spec.to_dict()["privacy"] == {"mechanism": "none"}


def test_privacy_section_accepts_gaussian_ou_and_adaptive_settings():
    gaussian_spec = _spec(
        {
            "mechanism": "gaussian",
            "noise_multiplier": 1.1,
            "clip_norm": 2,
            "adaptive_clipping": True,
            "target_quantile": 0.6,
            "epsilon_budget": 8.0,
            "accountant": "rdp",
        }
    )
    gaussian = gaussian_spec.privacy
    assert isinstance(gaussian, PrivacyGaussian)
    assert gaussian.clip_norm == 2.0 and gaussian.clip_lr == 0.2
    assert gaussian.accountant == "rdp" and gaussian.delta == 1e-5  # defaults of a private job
    ou = _spec({"mechanism": "ou", "noise_multiplier": 5, "theta": -0.5, "placement": "local"})
    assert isinstance(ou.privacy, PrivacyOU)
    assert ou.privacy.theta == -0.5 and not ou.privacy.reproducible
    baseline = _spec({"mechanism": "gaussian", "noise_multiplier": 0.0}).privacy
    assert isinstance(baseline, PrivacyGaussian) and baseline.noise_multiplier == 0
    record = _spec(  # as users write it today; mechanism and placement may also be left out
        {"mechanism": "gaussian", "unit": "record", "placement": "local", "noise_multiplier": 1.0}
    )
    assert record.privacy == _spec({"unit": "record", "noise_multiplier": 1.0}).privacy
    assert isinstance(record.privacy, PrivacyRecord) and record.privacy.accountant == "pld"
    for spec in (gaussian_spec, ou, record, _spec({})):
        assert parse_spec(json.loads(json.dumps(spec.to_dict()))) == spec  # dumps load again


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"noise_multiplier": 1.0}, "mechanism is 'none'"),
        ({"mechanism": "gaussian"}, "privacy.noise_multiplier: required key is missing"),
        (
            {"mechanism": "gaussian", "noise_multiplier": 1.0, "theta": 0.5},
            "privacy.theta: unknown key for mechanism 'gaussian': theta applies only to "
            "mechanism 'ou'",
        ),
        ({"mechanism": "ou", "noise_multiplier": 1.0}, "privacy.theta: required key is missing"),
        (
            {"mechanism": "gaussian", "noise_multiplier": 1.0, "placement": "distributed"},
            "privacy: placement 'distributed' needs [secure_aggregation] enabled = true: "
            "without it the coordinator sees each upload on its own",
        ),
        (
            {"mechanism": "ou", "noise_multiplier": 1.0, "theta": 0.5, "placement": "distributed"},
            "'central' or 'local'",
        ),
        (
            {"mechanism": "ou", "noise_multiplier": 1.0, "theta": 0.5, "adaptive_clipping": True},
            "fixed clip_norm",
        ),
        ({"mechanism": "ou", "noise_multiplier": 1.0, "theta": 1.0}, "less than 1"),
        ({"mechanism": "gaussian", "noise_multiplier": 0.0, "epsilon_budget": 3.0}, "no noise"),
        (
            {
                "mechanism": "gaussian",
                "noise_multiplier": 1.0,
                "unit": "record",
                "placement": "central",
            },
            "privacy.placement: unit 'record' (DP-SGD",
        ),
        (
            {"mechanism": "ou", "noise_multiplier": 1.0, "unit": "record"},
            "needs mechanism 'gaussian'",
        ),
        ({"noise_multiplier": 1.0, "unit": "record", "theta": 0.5}, "privacy.theta: unit 'record'"),
        (
            {"noise_multiplier": 1.0, "unit": "record", "adaptive_clipping": True},
            "needs unit 'client'",
        ),
        ({"noise_multiplier": 0.0, "unit": "record", "epsilon_budget": 1.0}, "no noise"),
        ({"mechanism": "ou", "noise_multiplier": 0.0, "theta": 0.5}, "no noise"),
        ({"mechanism": "none", "placement": "central"}, "privacy.placement: mechanism is 'none'"),
        (
            {
                "mechanism": "gaussian",
                "noise_multiplier": 1.0,
                "adaptive_clipping": True,
                "placement": "local",
            },
            "placement 'central'",
        ),
        (
            {"mechanism": "gaussian", "noise_multiplier": 1.0, "clip_lr": 0.5},
            "only with adaptive_clipping",
        ),
        ({"mechanism": "gaussian", "noise_multiplier": 1.0, "delta": 0.0}, "greater than 0"),
        ({"mechanism": "gaussian", "noise_multiplier": 1.0, "clip_norm": -1.0}, "greater than 0"),
        ({"mechanism": "laplace"}, "privacy.mechanism: Input should be 'none', 'gaussian' or 'ou'"),
        ({"mechanism": "gaussian", "unit": "records"}, "privacy.unit: Input should be 'client' or"),
        (
            {"mechanism": "gaussian", "noise_multiplier": 1.0, "sigma": 2.0},
            "privacy.sigma: unknown key",
        ),
    ],
)
def test_privacy_section_rejects_inconsistent_settings(privacy, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        _spec(privacy)


def test_privacy_errors_name_the_key_without_the_union_tag():
    with pytest.raises(SpecError) as info:
        _spec({"mechanism": "gaussian", "noise_multiplier": -1.0, "theta": 0.5})
    assert len(info.value.problems) == 2
    assert all(
        p.startswith(("privacy.noise_multiplier: ", "privacy.theta: ")) for p in info.value.problems
    )
    with pytest.raises(SpecError, match=re.escape("privacy: must be a table")):
        _spec(3)  # type: ignore[arg-type]


def test_federated_evaluation_is_refused_under_differential_privacy():
    """Members' validation loss and accuracy are unnoised: no accountant covers them."""
    for privacy in (
        {"mechanism": "gaussian", "noise_multiplier": 1.0},
        {"unit": "record", "noise_multiplier": 1.0},
    ):
        with pytest.raises(SpecError, match="validation_split .* no privacy accounting covers"):
            parse_spec(_base(privacy=privacy, evaluation={"validation_split": 0.2}))
    parse_spec(_base(evaluation={"validation_split": 0.2}))  # without DP it stays available
