"""Pruning a job's per-round files: older rounds go, locally and in the remote copy;
newer rounds are never touched, and what a crash left behind goes at the next prune."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedaas.server.artifacts import Artifacts

STATE = {"w": np.zeros(3, dtype=np.float32)}


def _write_round(artifacts: Artifacts, number: int) -> None:
    artifacts.save_model("job", number, STATE, {"round": str(number)})
    for path in (artifacts.ou_path("job", number), artifacts.optimizer_path("job", number)):
        path.write_bytes(artifacts.model_path("job", number).read_bytes())
        artifacts.publish(path)


def _rounds(folder: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        kind, number = path.stem.rsplit("-", 1)
        found.setdefault(kind, []).append(int(number))
    return found


def test_pruning_keeps_the_newer_rounds_and_catches_up_after_a_restart(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    local = tmp_path / "artifacts" / "jobs" / "job"
    artifacts = Artifacts(tmp_path / "artifacts", str(remote))
    for number in range(4):
        _write_round(artifacts, number)
    artifacts.prune_models("job", 2)  # the job's first prune here: whatever is older goes
    every = {"model": [2, 3], "optimizer": [2, 3], "ou": [2, 3]}
    assert _rounds(local) == every and _rounds(remote / "jobs" / "job") == every

    _write_round(artifacts, 4)
    artifacts.prune_models("job", 4)  # rounds 2 and 3, by name
    artifacts.prune_models("job", 3)  # a late prune: never touches a newer round
    every = {"model": [4], "optimizer": [4], "ou": [4]}
    assert _rounds(local) == every and _rounds(remote / "jobs" / "job") == every

    _write_round(artifacts, 5)
    (local / "model-000001.safetensors").write_bytes(b"left by a crash")
    restarted = Artifacts(tmp_path / "artifacts", str(remote))
    restarted.prune_models("job", 5)
    assert _rounds(local) == {"model": [5], "optimizer": [5], "ou": [5]}


def test_a_plain_job_without_noise_or_optimizer_state_prunes_its_models(tmp_path: Path) -> None:
    artifacts = Artifacts(tmp_path / "artifacts")
    for number in range(6):
        artifacts.save_model("job", number, STATE, {"round": str(number)})
        artifacts.prune_models("job", number)
    assert _rounds(tmp_path / "artifacts" / "jobs" / "job") == {"model": [5]}
