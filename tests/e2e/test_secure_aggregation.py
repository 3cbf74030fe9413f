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

import base64
import hashlib
import json
import re
import secrets
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

from fedaas.algorithms.secagg import FixedPoint, fingerprint
from fedaas.client.secagg import SecureTraining
from fedaas.client.transport import ApiClientError
from fedaas.protocol import TASK_BUNDLE, decode_bundle, encode_bundle
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import RecordingTransport, agent_threads
from fixtures.safetensors_edit import header, with_metadata
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
        self.tamper_ahead = False  # the keys sent ahead are not the ones signed
        self.forge_shares = False  # the shares sent ahead claim another sender for one
        self.strip_inbound = False  # tasks arrive without the shares ahead (too big to ride)
        self.garble_for: set[str] = set()  # its shares for these peers do not decrypt
        self.forge_seed = False  # its unmask answer carries one made-up seed share
        self.refused: list[tuple[str, str]] = []  # (path, error code) the coordinator answered
        self.bodies: list[tuple[str, str, bytes]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        upload = method == "PUT" and path.endswith("/update")
        if self.tamper_ahead and upload and (ahead := _keys_ahead(kwargs["content"])):
            swapped = {**ahead, "c_public": ahead["s_public"], "s_public": ahead["c_public"]}
            kwargs["content"] = with_metadata(
                kwargs["content"], next_keys=json.dumps(swapped)
            )  # signature broken
        if self.forge_seed and path.endswith("/secagg/unmask") and kwargs.get("json"):
            kwargs["json"] = _forged_seed(kwargs["json"])
        if self.garble_for and kwargs.get("json"):
            kwargs["json"] = _garbled(kwargs["json"], self.garble_for)
        shared = (kwargs.get("json") or {}).get("next_shares")
        if self.forge_shares and shared:
            first = {**shared["shares"][0], "sender": shared["shares"][-1]["recipient"]}
            forged = {"shares": [first, *shared["shares"][1:]]}
            kwargs["json"] = {**kwargs["json"], "next_shares": forged}
        body = kwargs.get("content")
        if body is None and kwargs.get("json") is not None:
            body = json.dumps(kwargs["json"], sort_keys=True).encode()
        self.bodies.append((method, path, body or b""))
        if method == "PUT" and path.endswith("/update") and self.on_masked is not None:
            self.on_masked()
        if self.drop and method == "GET" and path.endswith("/secagg/unmask"):
            raise ApiClientError(0, "dropped", "test: this member dropped after its upload")
        try:
            response = super().request(method, path, **kwargs)
        except ApiClientError as exc:
            self.refused.append((path, exc.code))
            raise
        question = response.status_code == 200 and (
            (method == "GET" and path.endswith("/secagg/unmask"))
            or (method == "PUT" and b'"survivors"' in response.content)  # the upload's answer
        )
        if question and self.drop:
            raise ApiClientError(0, "dropped", "test: this member dropped after its upload")
        bundle = response.headers.get("content-type", "").startswith(TASK_BUNDLE)
        task, model = decode_bundle(response.content) if bundle else (b"", b"")
        if self.strip_inbound and task and (parsed := json.loads(task)).get("secure"):
            parsed["secure"]["inbound"] = None
            body = encode_bundle(json.dumps(parsed).encode(), model)
            headers = {k: v for k, v in response.headers.items() if k != "content-length"}
            return httpx.Response(200, headers=headers, content=body, request=response.request)
        if question and self.both:
            asked = response.json()
            asked["dropped"] = sorted({*asked["dropped"], asked["survivors"][-1]})
            return httpx.Response(200, json=asked, request=response.request)
        return response


def _forged_seed(body: dict[str, Any]) -> dict[str, Any]:
    """An unmask answer whose first seed share keeps its point and gets a made-up value."""
    first, *rest = body["seed_shares"]
    point = base64.b64decode(first["share"])[:2]
    made_up = point + b"\x00" + secrets.token_bytes(32)  # a value below 2^256: in the field
    first = {**first, "share": base64.b64encode(made_up).decode()}
    return {**body, "seed_shares": [first, *rest]}


def _garbled(body: dict[str, Any], peers: set[str]) -> dict[str, Any]:
    """Stage 2's shares (sent now or ahead) with those for ``peers`` flipped in one byte."""

    def garble(shares: dict[str, Any]) -> dict[str, Any]:
        out = []
        for share in shares["shares"]:
            if share["recipient"] in peers:
                raw = bytearray(base64.b64decode(share["ciphertext"]))
                raw[-1] ^= 1
                share = {**share, "ciphertext": base64.b64encode(bytes(raw)).decode()}
            out.append(share)
        return {**shares, "shares": out}

    if "shares" in body:
        return garble(body)
    if body.get("next_shares"):
        return {**body, "next_shares": garble(body["next_shares"])}
    return body


def _keys_ahead(body: bytes) -> dict[str, Any] | None:
    """The next round's keys a masked upload carries in its metadata (``None``: none)."""
    ahead = header(body)[0]["__metadata__"].get("next_keys")
    return json.loads(ahead) if ahead else None


@dataclass
class Fed:
    cluster: LocalCluster
    transports: dict[str, MemberTransport]
    seen: dict[tuple[str, int, str, int], tuple[np.ndarray, float, np.ndarray]] = field(
        default_factory=dict
    )
    """(job, round, member, attempt) -> (the update as encoded, its weight, the base model)."""
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
                key = (self.task.job_id, self.task.round, self.session.member, self.session.attempt)
                holder["fed"].seen[key] = (
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
    """The members reset and every one of them back to waiting for a task: a member that
    dropped in the last test pauses before it polls again, and a round that opened meanwhile
    would close its key stage with the quorum, without it."""
    for t in fed.transports.values():
        t.drop = t.both = t.tamper_ahead = t.forge_shares = t.strip_inbound = False
        t.garble_for = set()
        t.forge_seed = False
        t.on_masked = None
        t.refused.clear()
    fed.seen.clear()
    deadline = time.monotonic() + 30
    while any(t.sent[-1] != ("GET", "/v1/tasks/next") for t in fed.transports.values()):
        assert time.monotonic() < deadline, "a member did not come back to polling for tasks"
        time.sleep(0.05)
    return fed


def _recovered_mean(fed: Fed, job_id: str) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """``(recovered mean, plain weighted mean, total weight, base)`` of round 1 of ``job_id``."""
    path = fed.cluster.state / "artifacts" / "jobs" / job_id / "model-000001.safetensors"
    from fedaas import tensors

    model, _ = tensors.load(path)
    after = np.concatenate([model[k].astype(np.float64).ravel() for k in sorted(model)])
    updates = [u for (job, number, _, _), u in fed.seen.items() if (job, number) == (job_id, 1)]
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
_RUN = re.compile(  # 32 or more numbers in a row, apart only by separators: a printed vector
    rb"(?:(?:-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+)[\s,;\[\]()]+){31,}"
    rb"(?:-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+)"
)


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
    for run in _RUN.finditer(text):  # not the numbers of unrelated log lines strung together
        found.append(np.asarray([float(m) for m in _NUMBER.findall(run.group())]))
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
    model, the released mean, a constant, every published model). The score is the largest
    |correlation| over
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


def test_members_register_their_identity_key_when_they_start(clean: Fed) -> None:
    listed = {m.name: m.identity for m in clean.cluster.admin.members()}
    for name, t in clean.transports.items():
        method, path, body = t.bodies[0]  # before any task: the agent registers as it starts
        assert (method, path) == ("PUT", "/v1/members/me/identity")
        assert listed[name] == fingerprint(base64.b64decode(json.loads(body)["signing_key"]))


def test_the_curious_coordinator_learns_only_the_sum(clean: Fed) -> None:
    job = clean.run()
    assert job.status == "completed", job.reason
    recovered, plain, total, base = _recovered_mean(clean, job.id)
    assert len(clean.seen) == N
    assert np.max(np.abs(recovered - plain)) <= _encoding_error(total)
    stored = _read_all(clean.cluster.workdir)
    released = [  # every model the coordinator published (other jobs' too) is no secret
        v
        for path, raw in stored.items()
        if path.name.startswith("model-")
        for v in _vectors_in(path, raw)
        if v.size == D
    ]
    public = np.column_stack([base, plain, np.ones(D), *released])
    vectors = [v for p, raw in stored.items() for v in _vectors_in(p, raw)]
    assert vectors, "the scan found nothing at all: it would miss a leak too"
    for member, (update, _, _) in clean.seen.items():
        assert _leak_score(vectors, update, public) < 1.0, member
        needle = update.astype("<f4").tobytes()[:64]
        assert not any(needle in raw for raw in stored.values()), member
    # the same scan finds an update (or a part of it) wherever it were stored: it can fail
    assert _leak_score([np.concatenate([np.ones(3), update, np.ones(5)])], update, public) > 3
    assert _leak_score([update[17:400]], update, public) > 3
    logged = b"12:00:01 INFO round 1 update [" + ", ".join(map(str, update)).encode() + b"]\n"
    assert _leak_score(_vectors_in(Path("coordinator.log"), logged), update, public) > 3


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


def test_a_member_whose_shares_do_not_decrypt_evicts_nobody(clean: Fed) -> None:
    """One member's shares for two peers never decrypt, every round (stage 2 sent now and
    ahead): they set those shares aside and go on, the others' shares rebuild its secrets.
    Before, each such peer refused the round and left the job, and the job failed."""
    clean.transports["m4"].garble_for = {"m0", "m1"}
    job = clean.run(rounds=3)
    assert job.status == "completed", job.reason
    assert job.declined == {}
    assert [r.clients for r in job.rounds] == [N, N, N]


def test_a_made_up_seed_share_is_left_out_and_its_sender_named(clean: Fed) -> None:
    """One member answers every unmask stage with a made-up seed share. The coordinator
    leaves it out (the other shares agree without it), names the member in its log, and the
    recovered sum matches the plain one; before, a pseudorandom mask stayed in the model."""
    clean.transports["m0"].forge_seed = True  # the lowest share point: its shares are used
    job = clean.run()
    assert job.status == "completed", job.reason
    recovered, plain, total, _ = _recovered_mean(clean, job.id)
    assert np.max(np.abs(recovered - plain)) <= _encoding_error(total)
    log = (clean.cluster.logs / "server.log").read_text()
    assert "m0 sent a wrong share of" in log and "it was left out" in log, log[-2000:]


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
            crashed, crasher, once = threading.Event(), [], threading.Lock()

            def crash_at(t: MemberTransport) -> Any:
                def crash() -> None:  # the first masked upload of round 2, by any member (one
                    with once:  # that was slow to advertise may sit out round 1, under load)
                        if not crashed.is_set() and "/rounds/2/update" in t.bodies[-1][1]:
                            crashed.set()
                            crasher.append(t)
                            cluster.kill_server()

                return crash

            for t in made:
                t.on_masked = crash_at(t)
            spec = make_spec(
                "restart", 2, clients=N, min_clients=2, timeout=30, features=FEATURES,
                classes=CLASSES, secure_aggregation={"enabled": True},
            )  # fmt: skip
            job_id = cluster.admin.submit(spec).id
            assert crashed.wait(30)
            time.sleep(0.5)
            cluster.start_server()
            job = cluster.admin.wait(job_id, timeout=60)
            assert job.status == "completed", job.reason
    for t in made:  # a masked upload is under the keys last sent: in stage 1, or ahead
        keys = _mask_keys(t)
        masked = [hashlib.sha256(b).hexdigest() for m, p, b in t.bodies if p.endswith("/update")]
        runs: dict[str, set[str]] = {}
        current = None
        for _m, p, b in t.bodies:
            if p.endswith("/secagg/keys"):
                current = json.loads(b)["s_public"]
            elif p.endswith("/update"):
                runs.setdefault(str(current), set()).add(hashlib.sha256(b).hexdigest())
                if ahead := _keys_ahead(b):  # the next round's upload is under these
                    current = ahead["s_public"]
        assert all(len(bodies) == 1 for bodies in runs.values()), "two vectors under one key"
        assert keys and masked
    (t,) = crasher  # its round-2 upload before the crash and the rerun's: under other keys
    assert len(_round_keys(t, 2)) >= 2


def _round_keys(t: MemberTransport, number: int) -> set[str]:
    """The mask public keys a member's masked uploads of round ``number`` were made under."""
    out, current = set(), None
    for _m, p, b in t.bodies:
        if p.endswith("/secagg/keys"):
            current = json.loads(b)["s_public"]
        elif p.endswith("/update"):
            if f"/rounds/{number}/update" in p:
                out.add(str(current))
            if ahead := _keys_ahead(b):
                current = ahead["s_public"]
    return out


def _mask_keys(t: MemberTransport) -> set[str]:
    """Every mask public key a member sent: in stage 1 and ahead with its masked uploads."""
    out = {json.loads(b)["s_public"] for m, p, b in t.bodies if p.endswith("/secagg/keys")}
    for m, p, b in t.bodies:
        if m == "PUT" and p.endswith("/update") and (ahead := _keys_ahead(b)):
            out.add(ahead["s_public"])
    return out


def _sent(t: MemberTransport, job_id: str, suffix: str) -> list[dict[str, Any]]:
    """The JSON bodies a member POSTed to ``suffix`` for ``job_id``, in order."""
    return [
        json.loads(b) for m, p, b in t.bodies if m == "POST" and job_id in p and p.endswith(suffix)
    ]


def _uploads(t: MemberTransport, job_id: str) -> list[bytes]:
    return [b for m, p, b in t.bodies if m == "PUT" and job_id in p and p.endswith("/update")]


def test_stages_one_and_two_ride_on_the_last_round_two_requests_a_round(clean: Fed) -> None:
    job = clean.run(rounds=3)
    assert job.status == "completed", job.reason
    assert [r.clients for r in job.rounds] == [N, N, N]
    for t in clean.transports.values():
        ahead = [_keys_ahead(b) for b in _uploads(t, job.id)]
        assert len(ahead) == 3 and ahead[0] and ahead[1] and ahead[2] is None
        assert ahead[0] != ahead[1]  # fresh keys for every round
        answers = _sent(t, job.id, "/secagg/unmask")
        shared = [a["next_shares"] for a in answers]
        assert len(shared) == 3 and shared[0] and shared[1] and shared[2] is None
        assert len(shared[0]["shares"]) == N - 1  # one to each peer of the roster
        for number in (2, 3):  # the masked upload, answered with the question; the answer
            here = f"/jobs/{job.id}/rounds/{number}/"
            sent = [(m, p.rsplit("/", 1)[-1]) for m, p in t.sent if here in p]
            assert sent == [("PUT", "update"), ("POST", "unmask")], sent


def test_secagg_plus_rounds_pipeline_too(clean: Fed) -> None:
    job = clean.run(rounds=3, secure_aggregation={"enabled": True, "neighbors": 2})
    assert job.status == "completed", job.reason
    assert [r.clients for r in job.rounds] == [N, N, N]
    for t in clean.transports.values():
        answers = _sent(t, job.id, "/secagg/unmask")
        assert [len(a["next_shares"]["shares"]) for a in answers[:2]] == [2, 2]  # neighbours
        assert len(_sent(t, job.id, "/secagg/keys")) == 1  # round 1 only


def test_a_member_that_drops_after_its_upload_makes_the_next_round_start_afresh(
    clean: Fed,
) -> None:
    m0, uploads = clean.transports["m0"], []

    def drop_once() -> None:  # m0 drops after round 1's masked upload: it shares nothing ahead
        uploads.append(1)
        m0.drop = len(uploads) == 1

    m0.on_masked = drop_once
    job = clean.run(rounds=3)
    assert job.status == "completed", job.reason
    assert job.rounds[0].clients == N  # m0's masked input is in the sum
    back = next(r.round for r in job.rounds[1:] if "m0" in r.participants)
    assert len(_sent(m0, job.id, "/secagg/keys")) == 2  # round 1, and back through stage 1
    for name, t in clean.transports.items():
        if name == "m0":
            continue
        # round 2 ran all four stages under a fresh attempt: the keys shared ahead for round 2
        # were never sent again (shares of one secret for two rosters could unmask it)
        ahead = _keys_ahead(_uploads(t, job.id)[0])
        resent = _sent(t, job.id, "/secagg/keys")
        assert len(resent) >= 2 and ahead not in resent
        assert any(p.endswith(f"/rounds/{back}/secagg/keys") for _, p in t.sent)


def _round_refusals(t: MemberTransport) -> list[str]:
    """The error codes of a member's refused round requests (a final-model download of an
    earlier job may be refused too: not those)."""
    return [code for path, code in t.refused if "/rounds/" in path]


@pytest.mark.parametrize(
    ("cheat", "code", "in_sum"),
    [
        ("tamper_ahead", "invalid_keys", N - 1),  # keys ahead not signed for the next round
        ("forge_shares", "invalid_shares", N),  # shares ahead in another member's name
    ],
)
def test_bad_stages_ahead_are_refused_with_the_request_they_came_in(
    clean: Fed, cheat: str, code: str, in_sum: int
) -> None:
    m1 = clean.transports["m1"]
    setattr(m1, cheat, True)
    job = clean.run(rounds=2)
    assert job.status == "completed", job.reason
    assert _round_refusals(m1)[0] == code
    # keys ride on the masked upload, which is refused whole (m1 is not in round 1's sum);
    # shares on the unmask answer, after the masked input was in (round 1 unmasks without it)
    assert job.rounds[0].clients == in_sum
    assert ("m1" in job.rounds[0].participants) == (in_sum == N)
    if cheat == "forge_shares":  # m1's keys were in round 2's roster, its shares refused:
        for t in clean.transports.values():  # round 2 ran afresh (m1, backing off after its
            if t is not m1:  # refused answer, may miss round 2's key stage)
                assert any(p.endswith(f"/jobs/{job.id}/rounds/2/secagg/keys") for _, p in t.sent)


def test_shares_ahead_too_big_for_the_task_are_fetched_with_stage_twos_request(
    clean: Fed,
) -> None:
    m3 = clean.transports["m3"]
    m3.strip_inbound = True
    job = clean.run(rounds=3)
    assert job.status == "completed", job.reason
    assert [r.clients for r in job.rounds] == [N, N, N]
    sent = _sent(m3, job.id, "/secagg/shares")
    assert len(sent) == 3  # round 1's stage 2, then its shares ahead posted again, once a round
    assert sent[1] == _sent(m3, job.id, "/secagg/unmask")[0]["next_shares"]
    assert sent[2] == _sent(m3, job.id, "/secagg/unmask")[1]["next_shares"]
    assert not [p for _, p in m3.sent if job.id in p and p.endswith("/secagg/keys")][1:]
