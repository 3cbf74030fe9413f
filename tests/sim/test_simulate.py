"""The simulation engine: the service's round on virtual members, reproducible bit for bit."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from fedaas import tensors
from fedaas.algorithms.seeds import member_seed
from fedaas.client.privacy import MemberPrivacy
from fedaas.client.training import train_round
from fedaas.data.digits import digits_federation
from fedaas.data.source import read_npz
from fedaas.models import build_model
from fedaas.protocol import NoPrivacy
from fedaas.sim.simulate import PartitionError, Stragglers, simulate
from fedaas.sim.simulate.wire import WireError, pack, unpack
from fixtures.simulation import InlinePool, digits_spec


def test_a_run_folder_like_a_service_job(spec, out: Path) -> None:
    result = simulate(spec, "dirichlet:digits:6", backend=InlinePool(), out_dir=out, progress=False)
    assert result.job.status == "completed" and result.job.round == 3
    assert {"metrics.json", "accuracy.png", "model.safetensors", "spec.json"} <= {
        p.name for p in out.iterdir()
    }
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    assert all(r["clients"] == 4 and r["accuracy"] is not None for r in doc["rounds"])
    assert len(doc["rounds"][0]["participants"]) == 4  # no DP: the service publishes them too
    assert not (out / ".sim").exists()  # the scratch space is gone
    model, meta = tensors.load(out / "model.safetensors")
    assert meta["round"] == "3"
    assert all(np.array_equal(model[k], result.model[k]) for k in model)


def test_same_model_bit_for_bit_whatever_the_arrival_order(spec, tmp_path: Path) -> None:
    shas = set()
    for i in range(2):
        result = simulate(
            spec,
            "dirichlet:digits:6",
            backend=InlinePool(),
            out_dir=tmp_path / f"r{i}",
            progress=False,
        )
        shas.add(result.model_sha256)
    assert len(shas) == 1
    other = simulate(  # another seed is another model
        spec,
        "dirichlet:digits:6",
        backend=InlinePool(),
        out_dir=tmp_path / "r9",
        progress=False,
        seed=4,
    )
    assert other.model_sha256 not in shas


def test_one_round_is_fedavg_of_the_members_own_training(tmp_path: Path) -> None:
    """The engine's first model equals the example-weighted mean of what each member's
    ``train_round`` (the agent's code, seeded by name) gives, computed here independently."""
    spec = digits_spec(rounds=1, federation={"clients_per_round": 5, "min_clients": 5})
    result = simulate(
        spec, "dirichlet:digits:5", backend=InlinePool(), out_dir=tmp_path / "r", progress=False
    )
    module = build_model(spec.model, spec.data, seed=spec.job.seed)
    from fedaas.models import get_state, set_state

    initial = get_state(module)
    total: dict[str, np.ndarray] = {k: np.zeros(v.shape, np.float64) for k, v in initial.items()}
    weight = 0
    for i in range(5):
        x, y = read_npz(str(tmp_path / "r" / "data" / f"member-{i}.npz"))
        from fedaas.data.dataset import ArrayDataset

        set_state(module, initial)
        update, _, _ = train_round(
            module,
            ArrayDataset(x, y),
            spec.train,
            initial,
            NoPrivacy(),
            MemberPrivacy(tmp_path / "state", f"member-{i}"),
            job_id="j",
            number=1,
            seed=member_seed(spec.job.seed, 1, f"member-{i}"),
            max_epsilon=None,
        )
        for k in total:
            total[k] += len(y) * update[k]
        weight += len(y)
    for k, v in initial.items():
        np.testing.assert_allclose(result.model[k], v + total[k] / weight, rtol=1e-5, atol=1e-6)


def test_member_randomness_follows_the_name_not_the_file(spec, tmp_path: Path) -> None:
    """The same partitions under other file names give the same model; swapped names do not."""
    parts, _ = digits_federation(4, 0.5, 0)
    urls = []
    for i, (x, y) in enumerate(parts):
        from fedaas.data.source import write_npz

        write_npz(str(tmp_path / f"file-{i}.npz"), x, y)
        write_npz(str(tmp_path / f"other-{i}.npz"), x, y)
        urls.append(i)
    spec = digits_spec(federation={"clients_per_round": 4, "min_clients": 4}, evaluation={})
    a = {f"m{i}": str(tmp_path / f"file-{i}.npz") for i in urls}
    b = {f"m{i}": str(tmp_path / f"other-{i}.npz") for i in urls}
    swapped = {f"m{(i + 1) % 4}": str(tmp_path / f"file-{i}.npz") for i in urls}

    def run(parts: dict[str, str], name: str) -> str:
        out = tmp_path / name
        return simulate(spec, parts, backend=InlinePool(), out_dir=out, progress=False).model_sha256

    assert run(a, "a") == run(b, "b")
    assert run(a, "a2") != run(dict(sorted(swapped.items())), "c")


def test_stragglers_dropped_send_nothing(tmp_path: Path) -> None:
    spec = digits_spec(rounds=2, federation={"clients_per_round": 10, "min_clients": 1})
    pool = InlinePool()
    result = simulate(
        spec,
        "dirichlet:digits:10",
        backend=pool,
        out_dir=tmp_path / "r",
        progress=False,
        stragglers=Stragglers(0.9, drop=True),
    )
    assert [r.clients for r in result.job.rounds] == [1, 1]
    assert pool.tasks == 2  # dropped members are not even asked
    with pytest.raises(ValueError, match="within"):
        Stragglers(1.5)


def test_central_dp_reproducible_runs_match_and_are_accounted(tmp_path: Path) -> None:
    privacy = {
        "mechanism": "gaussian",
        "placement": "central",
        "unit": "client",
        "noise_multiplier": 0.5,
        "clip_norm": 1.0,
        "reproducible": True,
    }
    spec = digits_spec(rounds=2, privacy=privacy)
    runs = [
        simulate(
            spec,
            "dirichlet:digits:8",
            backend=InlinePool(),
            out_dir=tmp_path / f"r{i}",
            progress=False,
        )
        for i in range(2)
    ]
    assert runs[0].model_sha256 == runs[1].model_sha256
    last = runs[0].job.rounds[-1].model_dump()
    assert last["epsilon"] > 0 and last["private"] is False  # reproducible: marked NOT private
    assert last["participants"] == [] and last["clients"] is None  # DP: what the service hides


def test_partitions_are_checked(spec, tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match="how many members"):
        simulate(spec, "dirichlet:digits", backend=InlinePool(), out_dir=tmp_path / "a")
    with pytest.raises(PartitionError, match="names 6 members but members is 5"):
        simulate(
            spec, "dirichlet:digits:6", members=5, backend=InlinePool(), out_dir=tmp_path / "b"
        )
    with pytest.raises(PartitionError, match="ALPHA,BETA"):
        simulate(spec, "synthetic:1:30", backend=InlinePool(), out_dir=tmp_path / "c")
    with pytest.raises(PartitionError, match="no folder"):
        simulate(spec, str(tmp_path / "missing"), backend=InlinePool(), out_dir=tmp_path / "d")
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        simulate(spec, "dirichlet:digits:6", backend=InlinePool(), out_dir=keep)
    assert (keep / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("partitions", "says"),
    [
        ("dirichlet:digits:5:-1", "alpha must be positive"),
        ("dirichlet:digits:5:nan", "alpha must be positive"),
        ("dirichlet:digits:5000", "cannot split 1437 examples across 5000"),
        ("synthetic:-1,1:5", "alpha must be a finite number >= 0"),
        ("synthetic:1,inf:5", "beta must be a finite number >= 0"),
    ],
)
def test_generator_values_it_cannot_use_are_refused_by_name(
    spec, tmp_path: Path, partitions: str, says: str
) -> None:
    with pytest.raises(PartitionError, match=says) as refused:
        simulate(spec, partitions, backend=InlinePool(), out_dir=tmp_path / "o")
    assert str(refused.value).startswith(partitions.split(":")[0])  # names the generator
    assert not (tmp_path / "o").exists()


def test_a_refused_rerun_leaves_the_earlier_run_folder_as_it_was(spec, tmp_path: Path) -> None:
    out = tmp_path / "run"
    simulate(spec, "dirichlet:digits:6", backend=InlinePool(), out_dir=out, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("metrics.json") in before
    with pytest.raises(PartitionError, match="alpha must be positive"):
        simulate(spec, "dirichlet:digits:6:0", backend=InlinePool(), out_dir=out)
    with pytest.raises(ValueError, match="unknown backend"):
        simulate(spec, "dirichlet:digits:6", backend="spark", out_dir=out)  # type: ignore[arg-type]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_an_object_store_it_cannot_list_is_one_line(spec, tmp_path: Path, monkeypatch) -> None:
    """No credentials, or a store that does not answer: a PartitionError naming the URL."""
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret-value")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(PartitionError, match="cannot list s3://parts/members") as refused:
        simulate(spec, "s3://parts/members", backend=InlinePool(), out_dir=tmp_path / "o")
    assert "\n" not in str(refused.value) and "s3cret-value" not in str(refused.value)


def test_a_folder_of_partitions_one_member_per_file(tmp_path: Path) -> None:
    parts, _ = digits_federation(3, 0.5, 0)
    folder = tmp_path / "parts"
    from fedaas.data.source import write_npz

    for name, (x, y) in zip(["clinic-b", "clinic-a", "clinic-c"], parts, strict=True):
        write_npz(str(folder / f"{name}.npz"), x, y)
    spec = digits_spec(rounds=1, federation={"clients_per_round": 2, "min_clients": 2})
    result = simulate(
        spec, folder, members=2, backend=InlinePool(), out_dir=tmp_path / "r", progress=False
    )
    assert result.members == ["clinic-a", "clinic-b"]
    assert result.accuracy is None  # no held-out set in the spec, none from a folder


def test_a_folder_written_by_datasets_export_trains_its_members_and_holds_out_its_test(
    tmp_path: Path,
) -> None:
    """``fedaas datasets export`` writes ``client_0`` .. ``client_11`` and ``test``: the
    members come in number order, and ``test`` is the held-out set, never trained on."""
    from typer.testing import CliRunner

    from fedaas.cli import app

    folder = tmp_path / "parts"
    done = CliRunner().invoke(
        app, ["datasets", "export", "digits", "--out", str(folder), "--members", "12"]
    )
    assert done.exit_code == 0, done.output
    spec = digits_spec(rounds=1, federation={"clients_per_round": 12, "min_clients": 12})
    result = simulate(spec, folder, backend=InlinePool(), out_dir=tmp_path / "r", progress=False)
    assert result.members == [f"client_{i}" for i in range(12)]
    assert result.accuracy is not None  # measured on test.npz, the export's held-out split


def test_frames_carry_json_and_bytes_only() -> None:
    header, body = unpack(pack({"op": "x", "n": 1}, b"\x00\x01"))
    assert header == {"op": "x", "n": 1} and body == b"\x00\x01"
    with pytest.raises(WireError):
        unpack(b"\x00\x00\x00\x09{}")
    with pytest.raises(WireError):
        unpack(b"\x00\x00\x00\x02[]")


def test_federated_evaluation_sums_the_members_reports(tmp_path: Path) -> None:
    spec = digits_spec(rounds=2, evaluation={"validation_split": 0.2})
    result = simulate(
        spec, "dirichlet:digits:6", backend=InlinePool(), out_dir=tmp_path / "r", progress=False
    )
    last = result.job.rounds[-1].model_dump()
    assert 0 < last["federated_accuracy"] <= 1 and last["federated_examples"] > 0
    assert last["accuracy"] is not None  # the digits held-out set, not overwritten


def test_what_is_not_simulated_is_refused(spec, tmp_path: Path) -> None:
    data = spec.to_dict()
    data["secure_aggregation"] = {"enabled": True}
    from fedaas.sim.simulate import NotSimulated
    from fedaas.spec import parse_spec

    with pytest.raises(NotSimulated, match="secure aggregation is not simulated"):
        simulate(parse_spec(data), "dirichlet:digits:6", backend=InlinePool(), out_dir=tmp_path)


def test_a_quorum_above_the_members_is_refused_before_anything_runs(spec, tmp_path: Path) -> None:
    data = spec.to_dict()
    data["federation"].update(min_clients=7, clients_per_round=None)
    from fedaas.sim.simulate import NotSimulated
    from fedaas.spec import parse_spec

    out = tmp_path / "run"
    with pytest.raises(NotSimulated, match="min_clients is 7 but 6 member"):
        simulate(parse_spec(data), "dirichlet:digits:6", backend=InlinePool(), out_dir=out)
    assert not out.exists()  # refused before the run folder (or a worker) was made


def test_the_command_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedaas.cli import app

    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nname = "x"\nrounds = 1\n[model]\nname = "logreg"\n[data]\nfeatures = 64\nclasses = 10\n'
    )
    runner = CliRunner()
    done = runner.invoke(
        app,
        ["simulate", str(job), "--partitions", "dirichlet:digits", "--out", str(tmp_path / "o")],
    )
    assert done.exit_code == 2
    assert "say how many members" in done.output and "Traceback" not in done.output
    done = runner.invoke(  # ":-1:" is text, not rich's thumbs-down emoji
        app,
        [
            "simulate",
            str(job),
            "--partitions",
            "dirichlet:digits:5:-1",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert done.exit_code == 2 and "dirichlet:digits:5:-1: alpha must be positive" in done.output
    done = runner.invoke(app, ["simulate", str(job), "--partitions", "x", "--backend", "spark"])
    assert done.exit_code == 2 and "use local or ray" in done.output


def test_a_worker_cache_keeps_what_fits_through_rounds_that_visit_everyone(
    tmp_path: Path, monkeypatch
) -> None:
    """A round visits every member in turn. Least-recently-used eviction dropped each member
    just before its next use once they outgrew the cache (1000 Synthetic members: 89 MiB,
    every partition read again every round); the members that fit now stay. With a
    validation split the bytes counted are the whole dataset's (a 1000-member run once
    failed on a count that went negative)."""
    from fedaas.sim.simulate import members as virtual
    from fedaas.spec import parse_spec
    from fixtures.specs import make_spec

    monkeypatch.setattr(virtual, "CACHE_BYTES", 40_000)
    worker = virtual.VirtualMembers()
    worker.spec = parse_spec(make_spec(evaluation={"validation_split": 0.25}))
    rng = np.random.default_rng(0)
    urls = []
    for i in range(40):  # 40 x 7,200 bytes: five fit
        urls.append(tmp_path / f"m{i}.npz")
        np.savez(urls[-1], x=rng.normal(size=(100, 16)).astype(np.float32), y=np.arange(100) % 4)
    first = [worker._data(f"m{i}", str(url)) for i, url in enumerate(urls)]
    for train, validation in first:
        assert validation is not None and len(train.y) + len(validation.y) == 100
    again = [worker._data(f"m{i}", str(url)) for i, url in enumerate(urls)]
    kept = [i for i in range(40) if again[i] is first[i]]
    assert kept == [0, 1, 2, 3, 4]  # the next round finds them: not read again
    assert worker._cached_bytes == sum(size for _, size in worker._cache.values()) <= 40_000


def test_members_go_out_in_chunks_and_any_chunking_gives_the_same_model(
    spec, tmp_path: Path
) -> None:
    from fedaas.sim.simulate.wire import chunked

    members = list(range(1, 101))
    chunks = chunked(members, 2)
    assert [m for c in chunks for m in c] == members  # all of them, in member order
    sizes = [len(c) for c in chunks]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 25 and sizes[-1] == 1
    shas, tasks = set(), []
    for size in (1, 50):  # chunks of several members per frame, or one each
        pool = InlinePool()
        pool.size = size
        out = tmp_path / f"s{size}"
        result = simulate(spec, "dirichlet:digits:6", backend=pool, out_dir=out, progress=False)
        shas.add(result.model_sha256)
        tasks.append(pool.tasks)
    assert len(shas) == 1 and tasks[0] < tasks[1]


def test_a_member_that_fails_inside_a_chunk_declines_alone(spec, tmp_path: Path) -> None:
    from fedaas.sim.simulate.members import VirtualMembers

    result = simulate(
        spec, "dirichlet:digits:6", backend=InlinePool(), out_dir=tmp_path / "r", progress=False
    )
    worker = VirtualMembers()
    urls = sorted((tmp_path / "r" / "data").glob("member-*.npz"))
    worker.handle(
        pack({"op": "job", "spec": spec.to_dict(), "job_id": "j", "state_root": str(tmp_path)})
    )
    worker.handle(pack({"op": "model", "round": 0}, tensors.encode(result.model)))
    tasks = [
        {"member": 1, "name": "a", "url": str(urls[0])},
        {"member": 2, "name": "b", "url": str(tmp_path / "missing.npz")},
        {"member": 3, "name": "c", "url": str(urls[1])},
    ]
    header, body = unpack(
        worker.handle(
            pack({"op": "train", "round": 1, "privacy": NoPrivacy().model_dump(), "members": tasks})
        )
    )
    answers = header["answers"]
    assert [a["member"] for a in answers] == [1, 2, 3]
    assert "error" in answers[1] and answers[1]["bytes"] == 0
    assert "error" not in answers[0] and "error" not in answers[2]
    first = answers[0]["bytes"]
    assert len(body) == first + answers[2]["bytes"]
    update, meta = tensors.decode(body[:first])
    assert set(update) == set(result.model) and int(meta["num_examples"]) > 0


def test_a_bad_update_inside_a_chunk_fails_the_run_naming_its_member(spec, tmp_path: Path) -> None:
    class Corrupting(InlinePool):
        def run(self, frames, on_answer) -> None:  # type: ignore[no-untyped-def]
            def corrupt(i: int, answer: bytes) -> None:
                header, body = unpack(answer)
                first = header["answers"][0]
                if len(header["answers"]) > 1:  # the first member's update: NaN everywhere
                    update, meta = tensors.decode(body[: first["bytes"]])
                    bad = tensors.encode({k: v * np.nan for k, v in update.items()}, meta)
                    assert len(bad) == first["bytes"]
                    answer = pack(header, bad + body[first["bytes"] :])
                on_answer(i, answer)

            super().run(frames, corrupt)

    result = simulate(
        spec, "dirichlet:digits:6", backend=Corrupting(), out_dir=tmp_path / "r", progress=False
    )
    assert result.job.status == "failed" and result.job.round == 0
    assert "NaN or Inf" in (result.job.reason or "") and "member-" in (result.job.reason or "")
