"""A model is served only after its round (and its ledger entry) is committed.

Before issue 10, a round's model could be downloaded while the round was
still being evaluated; had the coordinator crashed then, the round would
rerun with fresh noise: round t released twice, counted once. The model
written for an uncommitted round must be refused, whoever asks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fedaas.server.artifacts import Artifacts
from fedaas.server.coordinator import Coordinator
from fedaas.server.db import Job, Store
from fedaas.server.errors import NotFound
from fixtures.specs import make_spec


def test_an_uncommitted_round_model_is_never_served(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    artifacts = Artifacts(tmp_path / "artifacts")
    coordinator = Coordinator(store, artifacts)
    spec = make_spec("release", 3, features=4, classes=2)
    store.add_job(
        Job(
            id="job-1",
            name="release",
            spec=json.dumps(spec),
            source=None,
            status="running",
            round=1,
            created_at=time.time(),
            extra="{}",
        )
    )
    state = {"w": np.zeros(3, dtype=np.float32)}
    for number in (0, 1, 2):  # round 2's model is written, its round not committed
        artifacts.save_model("job-1", number, state, {"round": str(number)})
    assert coordinator.model_file("job-1", None)[1] == 1
    assert coordinator.model_file("job-1", 1)[1] == 1
    with pytest.raises(NotFound, match="no committed model for round 2"):
        coordinator.model_file("job-1", 2)
    store.close_round("job-1", 2, {"clients": 1}, [], [], None)  # the commit
    assert coordinator.model_file("job-1", 2)[1] == 2
