"""The coordinator's artifact folder: global models and upload spools.

Layout under the root: ``jobs/<job>/model-<round>.safetensors`` (the global
model after that round; round 0 is the initialization) and ``spool/`` for
uploads being received. Models are written to a temporary name and renamed,
so a reader never sees half a file and a crash never leaves one behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedaas import tensors


class Artifacts:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        for stale in self.spool.iterdir():
            stale.unlink(missing_ok=True)

    def model_path(self, job_id: str, number: int) -> Path:
        return self.root / "jobs" / job_id / f"model-{number:06d}.safetensors"

    def save_model(
        self, job_id: str, number: int, state: Mapping[str, np.ndarray], metadata: dict[str, str]
    ) -> Path:
        path = self.model_path(job_id, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        os.close(fd)
        try:
            tensors.save(tmp, state, metadata)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def ou_path(self, job_id: str, number: int) -> Path:
        """The coordinator's OU noise state after round ``number`` (central OU noise)."""
        return self.root / "jobs" / job_id / f"ou-{number:06d}.safetensors"

    def prune_models(self, job_id: str, keep: int) -> None:
        """Delete the job's per-round files (models, noise state) except round ``keep``."""
        folder = self.root / "jobs" / job_id
        suffix = f"-{keep:06d}.safetensors"
        for path in folder.glob("*-*.safetensors"):
            if not path.name.endswith(suffix):
                path.unlink(missing_ok=True)

    def new_spool(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.spool, suffix=".upload")
        os.close(fd)
        return Path(name)
