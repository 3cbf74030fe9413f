"""The coordinator's artifact store: global models, noise state, upload spools.

Layout under the local root: ``jobs/<job>/model-<round>.safetensors`` (the
global model after that round; round 0 is the initialization),
``jobs/<job>/ou-<round>.safetensors`` (central OU noise state) and
``spool/`` for uploads being received. Files are written to a temporary name
and renamed, so a reader never sees half a file and a crash never leaves
one behind.

With a ``remote`` URL (``s3://``, ``gs://``, ``az://`` or a path, through
fsspec) every durable file is also copied there as soon as it is written, and
a coordinator restarted on a fresh machine pulls what it needs to resume from
there. The local root then acts as a working cache; spools stay local (they
are transient and are never the only copy of anything).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedaas import storage, tensors

PER_ROUND = ("model", "ou", "optimizer")
"""The kinds of a job's per-round files: ``<kind>-<round>.safetensors``."""


class Artifacts:
    def __init__(
        self, root: Path, remote: str | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.root = root
        self.remote = remote.rstrip("/") if remote else None
        self.options = storage.storage_options_for(remote, storage_options) if remote else {}
        self.spool = root / "spool"
        self._pruned_below: dict[str, int] = {}
        self.spool.mkdir(parents=True, exist_ok=True)
        for stale in self.spool.iterdir():
            stale.unlink(missing_ok=True)
        if self.remote:  # fail at start-up, with a clear reason, if the store is unusable
            probe = storage.join(self.remote, ".fedaas-probe")
            storage.write_bytes(probe, b"ok", self.options)
            storage.remove(probe, self.options)

    def _per_round(self, job_id: str, kind: str, number: int) -> Path:
        assert kind in PER_ROUND
        return self.root / "jobs" / job_id / f"{kind}-{number:06d}.safetensors"

    def model_path(self, job_id: str, number: int) -> Path:
        return self._per_round(job_id, "model", number)

    def ou_path(self, job_id: str, number: int) -> Path:
        """The coordinator's OU noise state after round ``number`` (central OU noise)."""
        return self._per_round(job_id, "ou", number)

    def optimizer_path(self, job_id: str, number: int) -> Path:
        """The server optimizer's state (momentum, second moments) after round ``number``."""
        return self._per_round(job_id, "optimizer", number)

    def _remote_url(self, path: Path) -> str:
        assert self.remote is not None
        return storage.join(self.remote, path.relative_to(self.root).as_posix())

    def publish(self, path: Path) -> None:
        """Copy a freshly written local artifact to the remote store (if any)."""
        if self.remote is None or not path.exists():
            return
        url = self._remote_url(path)
        fs, remote_path = storage.resolve(url, self.options)
        with storage.errors_as_storage_error(url, fs, remote_path):
            if storage.is_local(url):  # a folder as the remote copy: made as needed
                fs.makedirs(fs._parent(remote_path), exist_ok=True)
            fs.put_file(str(path), remote_path)

    def restore(self, path: Path) -> bool:
        """Make sure ``path`` exists locally, pulling it from the remote store; True if it does."""
        if path.exists():
            return True
        if self.remote is None:
            return False
        url = self._remote_url(path)
        fs, remote_path = storage.resolve(url, self.options)
        with storage.errors_as_storage_error(url, fs, remote_path):
            if not fs.exists(remote_path):
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            fs.get_file(remote_path, str(tmp))
        tmp.replace(path)
        return True

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
        self.publish(path)
        return path

    def prune_models(self, job_id: str, keep: int) -> None:
        """Delete the job's per-round files (models, noise state) of rounds before ``keep``.

        Never touches newer rounds, so a late prune cannot remove a model that a
        later round has just written. The job's first prune in this process
        looks at every file (whatever a crash or a failed prune left); later
        ones delete the rounds pruned since by name, without listing the folder.
        """
        folder = self.root / "jobs" / job_id
        since = self._pruned_below.get(job_id)
        if since is None:
            paths = [
                path
                for path in folder.glob("*-*.safetensors")
                if (n := path.stem.rsplit("-", 1)[-1]).isdigit() and int(n) < keep
            ]
        else:
            paths = [
                self._per_round(job_id, kind, number)
                for number in range(since, keep)
                for kind in PER_ROUND
            ]
        self._pruned_below[job_id] = max(keep, since or 0)
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            if self.remote is not None:
                storage.remove(self._remote_url(path), self.options)

    def new_spool(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.spool, suffix=".upload")
        os.close(fd)
        return Path(name)
