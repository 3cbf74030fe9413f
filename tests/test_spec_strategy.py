"""``[strategy]``: which aggregation rules take which options, and what they need of the job."""

from __future__ import annotations

from typing import Any

import pytest

from fedaas.spec import SpecError, StrategySection, parse_spec
from fixtures.specs import make_spec


def test_screened_mean_takes_byzantine_and_nothing_of_krum() -> None:
    rule = StrategySection(aggregator="screened_mean", byzantine=2)
    assert rule.byzantine == 2
    with pytest.raises(ValueError, match="does not use krum_select"):
        StrategySection(aggregator="screened_mean", byzantine=2, krum_select=8)
    with pytest.raises(ValueError, match="does not use byzantine"):
        StrategySection(aggregator="median", byzantine=2)


@pytest.mark.parametrize("aggregator", ["krum", "screened_mean"])
def test_krum_scored_rules_need_2f_plus_3_members(aggregator: str) -> None:
    strategy: dict[str, Any] = {"aggregator": aggregator, "byzantine": 2}
    with pytest.raises(SpecError, match="min_clients >= 7"):
        parse_spec(make_spec(clients=10, min_clients=6, strategy=strategy))
    spec = parse_spec(make_spec(clients=10, min_clients=7, strategy=strategy))
    assert spec.strategy.aggregator == aggregator


def test_screened_mean_needs_each_update_private_on_its_own() -> None:
    privacy = {"mechanism": "gaussian", "noise_multiplier": 1.0, "clip_norm": 1.0}
    strategy = {"aggregator": "screened_mean", "byzantine": 1}
    with pytest.raises(SpecError, match="placement"):
        parse_spec(make_spec(clients=5, min_clients=5, strategy=strategy, privacy=privacy))
    local = {**privacy, "placement": "local"}
    spec = parse_spec(make_spec(clients=5, min_clients=5, strategy=strategy, privacy=local))
    assert spec.strategy.aggregator == "screened_mean"
