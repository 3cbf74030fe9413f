"""Secure aggregation end to end: a real coordinator process, five member agents in threads.

The coordinator is played as the curious party: after a secure round everything it stored or
logged (database, artifacts, spool, logs) is read back, and no stored vector correlates with a
member's true update beyond what the released sum explains, while the recovered mean equals
the plain weighted mean within the documented encoding error. Members dropped after their
masked upload (0, 1, n - threshold) still give the exact sum; one more fails the round and
releases nothing. A member asked for both shares of a peer refuses. A coordinator killed
mid-round reruns it under fresh keys, and no member sends two vectors under the same keys.

The members' true updates come from the member side (they know their own update): the test
wraps :meth:`fedaas.client.secagg.SecureTraining.encode` to remember its input.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedaas.algorithms.secagg import FixedPoint
from fedaas.client.secagg import SecureTraining
from fedaas.client.transport import ApiClientError
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import RecordingTransport, agent_threads
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

N, FEATURES, CLASSES, EXAMPLES = 5, 64, 10, 60
D = FEATURES * CLASSES + CLASSES  # logistic regression: 650 parameters
THRESHOLD = 3  # a strict majority of the 5 members that hold each member's shares


class MemberTransport(RecordingTransport):
    """A member's transport the test can make drop out, or lie to, and that keeps bodies."""

    def __init__(self, server: str, token: str, give_up_after: float | None) -> None:
        super().__init__(server, token, give_up_after)
        self.drop = False  # after the masked upload, never answer the unmask stage
        self.both = False  # this member sees an unmask request asking for both shares of a peer
        self.on_masked: Any = None  # called before the masked upload is sent
        self.bodies: list[tuple[str, str, bytes]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        body = kwargs.get("content")
        if body is None and kwargs.get("json") is not None:
            body = json.dumps(kwargs["json"], sort_keys=True).encode()
        self.bodies.append((method, path, body or b""))
        if method == "PUT" and path.endswith("/update") and self.on_masked is not None:
            self.on_masked()
        if self.drop and method == "GET" and path.endswith("/secagg/unmask"):
            raise ApiClientError(0, "dropped", "test: this member dropped after its upload")
        response = super().request(method, path, **kwargs)
        question = response.status_code == 200 and (
            (method == "GET" and path.endswith("/secagg/unmask"))
            or (method == "PUT" and b'"survivors"' in response.content)  # the upload's answer
        )
        if question and self.drop:
            raise ApiClientError(0, "dropped", "test: this member dropped after its upload")
        if question and self.both:
            asked = response.json()
            asked["dropped"] = sorted({*asked["dropped"], asked["survivors"][-1]})
            return httpx.Response(200, json=asked, request=response.request)
        return response


@dataclass
class Fed:
    cluster: LocalCluster
    transports: dict[str, MemberTransport]
    seen: dict[tuple[str, int], tuple[np.ndarray, float, np.ndarray]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, rounds: int = 1, timeout: float = 30, **sections: Any) -> Any:
        sections.setdefault("secure_aggregation", {"enabled": True})
        spec = make_spec(
            "secure", rounds, clients=N, min_clients=2, timeout=timeout, features=FEATURES,
            classes=CLASSES, **sections,
        )  # fmt: skip
        job = self.cluster.admin.submit(spec)
        return self.cluster.admin.wait(job.id, timeout=60)


def _datasets(folder: Path) -> dict[str, str]:
    rng = np.random.default_rng(7)
    out = {}
    for i in range(N):
        y = rng.integers(0, CLASSES, EXAMPLES)
        x = rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32) + y[:, None] * 0.1
        np.savez(folder / f"m{i}.npz", x=x, y=y)
        out[f"m{i}"] = str(folder / f"m{i}.npz")
    return out


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    folder = tmp_path_factory.mktemp("secure")
    datasets = _datasets(folder)
    with pytest.MonkeyPatch.context() as patch, LocalCluster(folder / "cluster") as cluster:
        cluster.start_server()
        holder: dict[str, Fed] = {}
        original = SecureTraining.encode

        def spy(self: SecureTraining, update: dict[str, np.ndarray], weight: float) -> np.ndarray:
            flat = np.concatenate(
                [np.asarray(update[k], np.float64).ravel() for k in sorted(update)]
            )
            base = np.concatenate(
                [np.asarray(self.start[k], np.float64).ravel() for k in sorted(self.start)]
            )
            with holder["fed"].lock:
                holder["fed"].seen[(self.session.member, self.session.attempt)] = (
                    flat,
                    weight,
                    base,
                )
            return original(self, update, weight)

        patch.setattr(SecureTraining, "encode", spy)
        made: list[MemberTransport] = []

        def transport(url: str, token: str, give_up: float | None) -> MemberTransport:
            made.append(MemberTransport(url, token, give_up))
            return made[-1]

        with agent_threads(
            cluster, datasets, folder / "members", give_up_after=None, transport=transport
        ):
            cluster.wait_online(N)
            holder["fed"] = Fed(cluster, dict(zip(datasets, made, strict=True)))
            yield holder["fed"]


@pytest.fixture
def clean(fed: Fed) -> Fed:
    for t in fed.transports.values():
        t.drop = t.both = False
        t.on_masked = None
    fed.seen.clear()
    return fed


def _recovered_mean(fed: Fed, job_id: str) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """``(recovered mean, plain weighted mean, total weight, base)`` of round 1 of ``job_id``."""
    path = fed.cluster.state / "artifacts" / "jobs" / job_id / "model-000001.safetensors"
    from fedaas import tensors

    model, _ = tensors.load(path)
    after = np.concatenate([model[k].astype(np.float64).ravel() for k in sorted(model)])
    updates = list(fed.seen.values())
    base = updates[0][2]
    weights = np.array([w for _, w, _ in updates])
    plain = sum(w * x for x, w, _ in updates) / weights.sum()
    return after - base, plain, float(weights.sum()), base


def _encoding_error(total_weight: float) -> float:
    """The documented bound on one coordinate of the mean (FixedPoint.error_bound), + float32."""
    encoding = FixedPoint.for_round(N, 10.0, 10_000.0)  # the defaults of an unclipped job
    return encoding.error_bound(N) / total_weight + 1e-6


# the curious coordinator --------------------------------------------------------------------
_NUMBER = re.compile(rb"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+")


def _read_all(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` that still exists when read (old rounds are pruned)."""
    found = {}
    for path in folder.rglob("*"):
        try:
            found[path] = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
    return found


def _vectors_in(path: Path, raw: bytes) -> list[np.ndarray]:
    """Every numeric vector a file holds: safetensors tensors (any dtype) and runs of numbers."""
    found: list[np.ndarray] = []
    if len(raw) > 8:
        (size,) = struct.unpack("<Q", raw[:8])
        if 0 < size < min(len(raw), 1 << 20) and raw[8:9] == b"{":
            try:
                header = json.loads(raw[8 : 8 + size])
            except ValueError:
                header = None
            kinds = {"F32": "<f4", "F64": "<f8", "U32": "<u4", "U64": "<u8", "I64": "<i8"}
            tensors = []
            for _, info in sorted((header or {}).items()):
                if isinstance(info, dict) and info.get("dtype") in kinds:
                    a, b = info["data_offsets"]
                    data = raw[8 + size + a : 8 + size + b]
                    tensors.append(np.frombuffer(data, kinds[info["dtype"]]).astype(np.float64))
            found.extend(tensors)
            if len(tensors) > 1:  # a model's tensors, flattened the way the update is
                found.append(np.concatenate(tensors))
    text = raw
    if path.suffix == ".db":
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            text = "\n".join(con.iterdump()).encode()
    numbers = [float(m) for m in _NUMBER.findall(text)]
    if len(numbers) >= 32:
        found.append(np.asarray(numbers))
    return found


def _unit_residuals(rows: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Each row with its projection on ``basis`` (columns) taken out, scaled to unit norm."""
    q, _ = np.linalg.qr(basis)
    r = rows - (rows @ q) @ q.T
    norms = np.linalg.norm(r, axis=-1, keepdims=True)
    return np.divide(r, norms, out=np.zeros_like(r), where=norms > 1e-9)


def _leak_score(vectors: list[np.ndarray], update: np.ndarray, public: np.ndarray) -> float:
    """How far the stored ``vectors`` correlate with ``update`` beyond chance.

    Every alignment of a stored vector (100 numbers or more) with the update is tried; from
    both, what the coordinator may know anyway is taken out (``public`` columns: the base
    model, the released mean, a constant). The score is the largest |correlation| over
    6 / sqrt(overlap), six standard deviations of the correlation of unrelated vectors:
    below 1 nothing correlates, a stored update scores about sqrt(D) / 6.
    """
    best = 0.0
    for v in vectors:
        if v.size < 100:
            continue
        if v.size > D:  # every window of D numbers against the whole update
            windows = np.lib.stride_tricks.sliding_window_view(v, D)
            corr = _unit_residuals(windows, public) @ _unit_residuals(update[None], public)[0]
            best = max(best, float(np.max(np.abs(corr))) * np.sqrt(D) / 6)
            continue
        for offset in range(D - v.size + 1):  # the vector against every slice of the update
            part = public[offset : offset + v.size]
            a = _unit_residuals(v[None], part)[0]
            b = _unit_residuals(update[None, offset : offset + v.size], part)[0]
            best = max(best, abs(float(a @ b)) * np.sqrt(v.size) / 6)
    return best


def test_the_curious_coordinator_learns_only_the_sum(clean: Fed) -> None:
    job = clean.run()
    assert job.status == "completed", job.reason
    recovered, plain, total, base = _recovered_mean(clean, job.id)
    assert len(clean.seen) == N
    assert np.max(np.abs(recovered - plain)) <= _encoding_error(total)
    public = np.column_stack([base, plain, np.ones(D)])
    stored = _read_all(clean.cluster.workdir)
    vectors = [v for p, raw in stored.items() for v in _vectors_in(p, raw)]
    assert vectors, "the scan found nothing at all: it would miss a leak too"
    for member, (update, _, _) in clean.seen.items():
        assert _leak_score(vectors, update, public) < 1.0, member
        needle = update.astype("<f4").tobytes()[:64]
        assert not any(needle in raw for raw in stored.values()), member
    # the same scan finds an update (or a part of it) wherever it were stored: it can fail
    assert _leak_score([np.concatenate([np.ones(3), update, np.ones(5)])], update, public) > 3
    assert _leak_score([update[17:400]], update, public) > 3


@pytest.mark.parametrize("dropped", [1, N - THRESHOLD])
def test_members_dropped_after_their_masked_upload_leave_the_sum_exact(
    clean: Fed, dropped: int
) -> None:
    for name in list(clean.transports)[:dropped]:
        clean.transports[name].drop = True
    job = clean.run()
    assert job.status == "completed", job.reason
    recovered, plain, total, _ = _recovered_mean(clean, job.id)
    assert len(clean.seen) == N  # every member's input is in the sum, dropped ones too
    assert np.max(np.abs(recovered - plain)) <= _encoding_error(total)
    assert job.rounds[0].clients == N


def test_secagg_plus_neighbourhoods_recover_the_same_sum(clean: Fed) -> None:
    clean.transports["m4"].drop = True
    job = clean.run(secure_aggregation={"enabled": True, "neighbors": 2})  # threshold 2 of 3
    assert job.status == "completed", job.reason
    recovered, plain, total, _ = _recovered_mean(clean, job.id)
    assert np.max(np.abs(recovered - plain)) <= _encoding_error(total)


def test_one_dropout_more_fails_the_round_and_releases_nothing(clean: Fed) -> None:
    for name in list(clean.transports)[: N - THRESHOLD + 1]:
        clean.transports[name].drop = True
    job = clean.run(timeout=4)  # the unmask stage waits for its quorum until the deadline
    assert job.status == "failed"
    assert "secure aggregation failed in round 1" in job.reason
    assert "fewer than the threshold 3" in job.reason or "fewer than 3" in job.reason
    assert "nothing was released" in job.reason
    assert not (
        clean.cluster.state / "artifacts" / "jobs" / job.id / "model-000001.safetensors"
    ).exists()


def test_a_member_asked_for_both_shares_of_a_peer_refuses(clean: Fed) -> None:
    liar = clean.transports["m0"]
    liar.both = True
    job = clean.run()
    assert job.status == "completed", job.reason  # the four others unmask the sum
    assert "both shares" in job.declined["m0"]
    sent = [p for m, p, _ in liar.bodies if m == "POST" and p.endswith("/secagg/unmask")]
    assert not [p for p in sent if job.id in p]


def test_central_dp_and_an_adaptive_server_optimizer_work_on_the_recovered_sum(clean: Fed) -> None:
    job = clean.run(
        rounds=2,
        strategy={"name": "fedadam"},
        privacy={"mechanism": "gaussian", "noise_multiplier": 0.5, "clip_norm": 1.0},
    )
    assert job.status == "completed", job.reason
    assert job.rounds[-1].model_extra["epsilon"] > 0
    distributed = {"mechanism": "gaussian", "noise_multiplier": 0.5, "placement": "distributed"}
    job = clean.run(privacy=distributed)
    assert job.status == "completed", job.reason
    assert job.rounds[-1].model_extra["epsilon"] > 0


def test_a_restarted_coordinator_reruns_the_round_under_fresh_keys(tmp_path: Path) -> None:
    datasets = _datasets(tmp_path)
    made: list[MemberTransport] = []

    def transport(url: str, token: str, give_up: float | None) -> MemberTransport:
        made.append(MemberTransport(url, token, give_up))
        return made[-1]

    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        with agent_threads(
            cluster, datasets, tmp_path / "members", give_up_after=None, transport=transport
        ):
            cluster.wait_online(N)
            crashed = threading.Event()

            def crash() -> None:
                if not crashed.is_set():
                    crashed.set()
                    cluster.kill_server()

            made[0].on_masked = crash
            spec = make_spec(
                "restart", 1, clients=N, min_clients=2, timeout=30, features=FEATURES,
                classes=CLASSES, secure_aggregation={"enabled": True},
            )  # fmt: skip
            job_id = cluster.admin.submit(spec).id
            assert crashed.wait(30)
            time.sleep(0.5)
            cluster.start_server()
            job = cluster.admin.wait(job_id, timeout=60)
            assert job.status == "completed", job.reason
    for t in made:
        keys = [json.loads(b)["s_public"] for m, p, b in t.bodies if p.endswith("/secagg/keys")]
        masked = [hashlib.sha256(b).hexdigest() for m, p, b in t.bodies if p.endswith("/update")]
        runs: dict[str, set[str]] = {}
        for _m, p, b in t.bodies:
            if p.endswith("/secagg/keys"):
                current = json.loads(b)["s_public"]
            elif p.endswith("/update"):
                runs.setdefault(current, set()).add(hashlib.sha256(b).hexdigest())
        assert all(len(bodies) == 1 for bodies in runs.values()), "two vectors under one key"
        assert keys and masked
    first = made[0]
    advertised = {
        json.loads(b)["s_public"] for m, p, b in first.bodies if p.endswith("/secagg/keys")
    }
    assert len(advertised) >= 2  # the rerun used fresh keys
