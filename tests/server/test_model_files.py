"""A model file deleted under a running coordinator is a 404, not a server error.

A careless operator may delete it while members and the dashboard still ask for
it; only the per-round task bundle reads it through a cache that looks for the
file once per model (and says 404 itself when it is gone at that first look).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from fedaas.server.app import create_app
from fedaas.server.db import Job
from fedaas.server.uploads import MEMORY_SPOOL_BYTES
from fixtures.specs import make_spec

ADMIN = "admin-token-" + "x" * 20


def test_a_deleted_model_file_is_404_small_or_large(tmp_path: Path) -> None:
    app = create_app(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", ADMIN)
    with TestClient(app) as client:
        coordinator = app.state.coordinator
        headers = {"Authorization": f"Bearer {ADMIN}"}
        for job_id, values in (("job-small", 3), ("job-large", MEMORY_SPOOL_BYTES // 4 + 1)):
            coordinator.store.add_job(
                Job(
                    id=job_id,
                    name=job_id,
                    spec=json.dumps(make_spec(job_id, 3, features=4, classes=2)),
                    source=None,
                    status="failed",
                    round=1,
                    created_at=time.time(),
                    extra="{}",
                )
            )
            state = {"w": np.ones(values, dtype=np.float32)}
            path = coordinator.artifacts.save_model(job_id, 1, state, {"round": "1"})
            url = f"/v1/jobs/{job_id}/model"
            assert client.get(url, headers=headers).status_code == 200
            assert client.get(url, headers=headers).status_code == 200  # served from memory
            path.unlink()
            gone = client.get(url, headers=headers)
            assert gone.status_code == 404, gone.text
            assert gone.json()["error"] == "not_found"
