"""The spec a member accepted for a job, and whether a task keeps to it.

A member checks a job's spec against its policy once, when it first sees the
job (:mod:`fedaas.client.policy`). A coordinator it does not fully trust could
then change the spec, or send privacy instructions that say less than the spec
promised (``kind = "none"`` for a job that asked for local DP, a smaller noise
multiplier, no budget), and get a raw update. So the member pins the SHA-256
of the spec it accepted, per job (kept in its state folder, so a restarted
agent still holds it), and every later task must carry the same spec and
instructions that follow from it (:func:`departures`); otherwise the member
declines and sends nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from fedaas.client.statepaths import state_file
from fedaas.protocol import ClientPrivacy, NoPrivacy, PrivacyInstructions, RecordPrivacy
from fedaas.spec import JobSpec, PrivacyGaussian, PrivacyOU, PrivacyRecord

_REL = 1e-9  # floats that crossed JSON twice still compare equal


def spec_digest(spec: JobSpec) -> str:
    """SHA-256 of the spec's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Pins:
    """Spec digests this member accepted, by job id (validated before it names a file)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._pins: dict[str, str] = {}

    def _path(self, job_id: str) -> Path:
        return state_file(self.state_dir, "job", job_id, ".json")

    def _load(self, job_id: str) -> dict[str, str]:
        path = self._path(job_id)
        return json.loads(path.read_text()) if path.exists() else {}

    def get(self, job_id: str) -> str | None:
        if job_id not in self._pins:
            saved = self._load(job_id).get("spec_sha256")
            if saved is not None:
                self._pins[job_id] = str(saved)
        return self._pins.get(job_id)

    def data(self, job_id: str) -> str | None:
        """The fingerprint of the data this member joined the job with, if pinned.

        A member restarted on other data must not count a second partition
        under the same identity.
        """
        saved = self._load(job_id).get("data_sha256")
        return None if saved is None else str(saved)

    def pin(self, job_id: str, digest: str, data: str | None = None) -> None:
        path = self._path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        record = {"job": job_id, "spec_sha256": digest}
        if data is not None:
            record["data_sha256"] = data
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        self._pins[job_id] = digest


def _differs(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is not b
    return not math.isclose(a, b, rel_tol=_REL, abs_tol=0.0)


def departures(spec: JobSpec, instructions: PrivacyInstructions) -> list[str]:
    """Every way a round's privacy instructions say less than the accepted spec promised.

    What a member can check alone: the kind, mechanism, placement, theta and
    reproducibility; for DP-SGD every parameter; for client-level DP a fixed
    clip norm (unless adaptive) and, with ``local`` noise, a standard
    deviation of at least ``noise_multiplier * clip_norm``. (A ``distributed``
    share depends on the quorum; it must at least be positive.)
    """
    cfg = spec.privacy
    if isinstance(cfg, PrivacyRecord):
        if not isinstance(instructions, RecordPrivacy):
            return [f"the job's spec asks for DP-SGD, the task for {instructions.kind!r}"]
        pairs = {
            "noise_multiplier": (instructions.noise_multiplier, cfg.noise_multiplier),
            "clip_norm": (instructions.clip_norm, cfg.clip_norm),
            "delta": (instructions.delta, cfg.delta),
            "epsilon_budget": (instructions.epsilon_budget, cfg.epsilon_budget),
        }
        found = [f"{k} {a} instead of {b}" for k, (a, b) in pairs.items() if _differs(a, b)]
        if instructions.accountant != cfg.accountant:
            found.append(f"accountant {instructions.accountant!r} instead of {cfg.accountant!r}")
        if instructions.reproducible and not cfg.reproducible:
            found.append("reproducible (NOT private) noise the spec did not ask for")
        return found
    if isinstance(cfg, PrivacyGaussian | PrivacyOU):
        if not isinstance(instructions, ClientPrivacy):
            return [f"the job's spec asks for client-level DP, the task for {instructions.kind!r}"]
        found = []
        for key in ("mechanism", "placement"):
            if getattr(instructions, key) != getattr(cfg, key):
                found.append(
                    f"{key} {getattr(instructions, key)!r} instead of {getattr(cfg, key)!r}"
                )
        theta = cfg.theta if isinstance(cfg, PrivacyOU) else None
        if _differs(instructions.theta, theta):
            found.append(f"theta {instructions.theta} instead of {theta}")
        if instructions.reproducible and not cfg.reproducible:
            found.append("reproducible (NOT private) noise the spec did not ask for")
        adaptive = isinstance(cfg, PrivacyGaussian) and cfg.adaptive_clipping
        if not adaptive and _differs(instructions.clip_norm, cfg.clip_norm):
            found.append(f"clip_norm {instructions.clip_norm} instead of {cfg.clip_norm}")
        full = cfg.noise_multiplier * instructions.clip_norm
        if cfg.placement == "local" and instructions.noise_std < full * (1 - _REL):
            found.append(f"noise_std {instructions.noise_std:g} below the spec's {full:g}")
        if cfg.placement == "distributed" and full > 0 and instructions.noise_std <= 0:
            found.append("no noise share for a job with distributed noise")
        return found
    if not isinstance(instructions, NoPrivacy):
        return [f"privacy {instructions.kind!r} for a job whose spec has none"]
    return []
