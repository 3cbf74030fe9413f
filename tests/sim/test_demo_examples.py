"""``fedaas demo --example breast_cancer``: the binary example end to end, as a user runs it.

Three hospital processes and a coordinator over HTTP, a few rounds: the table compares
federated, local-only and centralized on AUROC and sensitivity, the run folder keeps every
metric of the three and a plot of AUROC per round, and each hospital's data is left for reuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_breast_cancer_example_compares_auroc_and_sensitivity(tmp_path: Path) -> None:
    out = tmp_path / "bc"
    done = subprocess.run(
        [sys.executable, "-m", "fedaas", "demo", "--example", "breast_cancer", "--rounds", "3"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "held-out auroc on breast_cancer" in done.stdout
    assert "sensitivity" in done.stdout and "3 members" in done.stdout
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    assert {"auroc", "sensitivity", "specificity"} <= set(doc["rounds"][-1])
    local, central = doc["baselines"]["local_only"], doc["baselines"]["centralized"]
    assert local["metric"] == "auroc" and len(local["per_member"]) == 3
    assert set(local["metrics"]) == set(central) >= {"auroc", "sensitivity", "loss"}
    assert 0.5 < central["auroc"] <= 1 and 0.5 < doc["rounds"][-1]["auroc"] <= 1
    assert (out / "accuracy.png").stat().st_size > 10_000
    kept = sorted(p.name for p in (out / "data").iterdir())
    assert kept == ["cancer-centre.npz", "clinic.npz", "hospital.npz", "test.npz"]
