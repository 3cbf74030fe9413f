"""Coordinator memory while it receives large updates from many members.

A real coordinator process runs one round of a ~10M-parameter model (an MLP
1000-3000-2300-10, 9.9M float32 parameters, 40 MB per update) with 10 and
then 50 members. Members are played by a pool of worker processes that
long-poll for the task and upload a 40 MB safetensors update each, several
at a time. Before the first upload the coordinator's peak-RSS counter is
reset (``/proc/PID/clear_refs``); the script prints how far the peak rose
above that idle level, side by side for 10 and 50 members, against the model
size. Streaming aggregation keeps it flat; holding every update would cost
members x model size.

    .venv/bin/python bench/bench_memory.py [--members 10 50] [--workers 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fedaas import tensors
from fedaas.sim.cluster import LocalCluster

SPEC = {
    "job": {"name": "memory-bench", "rounds": 1, "seed": 0},
    "model": {"name": "mlp", "hidden": [3000, 2300]},
    "data": {"features": 1000, "classes": 10},
    "federation": {"round_timeout": 900},
}


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _member(url: str, token: str, body: bytes) -> tuple[float, float]:
    """Poll for the task and upload; returns (start, end) wall times of the upload."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=600) as http:
        while True:
            r = http.get("/v1/tasks/next", params={"timeout": 30}, headers=headers)
            if r.status_code == 200:
                break
        task = r.json()
        start = time.time()
        r = http.put(
            f"/v1/jobs/{task['job_id']}/rounds/{task['round']}/update",
            content=body,
            headers={**headers, "Idempotency-Key": token[-16:]},
        )
        r.raise_for_status()
    return start, time.time()


def play_members(
    url: str, tokens: list[str], manifest: dict[str, list[int]], concurrent: bool = False
) -> list[tuple[float, float]]:
    """One worker process playing several members: one after another, or all at once (threads)."""
    rng = np.random.default_rng(len(tokens))
    delta = {
        k: (rng.standard_normal(tuple(v)) * 1e-3).astype(np.float32) for k, v in manifest.items()
    }
    body = tensors.encode(delta, {"num_examples": "100", "metrics": "{}"})
    del delta
    if not concurrent:
        return [_member(url, token, body) for token in tokens]
    with ThreadPoolExecutor(len(tokens)) as pool:
        return list(pool.map(lambda token: _member(url, token, body), tokens))


def poll_once(url: str, token: str) -> None:
    httpx.get(
        f"{url}/v1/tasks/next", params={"timeout": 0}, headers={"Authorization": f"Bearer {token}"}
    )


def run(
    members: int,
    workers: int,
    workdir: Path,
    model: dict[str, Any] | None = None,
    features: int = 1000,
    concurrent: bool = False,
    strategy: dict[str, Any] | None = None,
) -> dict[str, float]:
    """One round with ``members`` uploads; coordinator memory and throughput.

    ``strategy``: the job's ``[strategy]`` (e.g. ``{"aggregator": "median"}``).
    """
    spec = dict(
        SPEC,
        federation={**SPEC["federation"], "clients_per_round": members, "min_clients": members},
        model=model or SPEC["model"],
        data={"features": features, "classes": 10},
    )
    if strategy:
        spec["strategy"] = strategy
    with LocalCluster(workdir) as cluster:
        cluster.start_server()
        assert cluster.server is not None
        pid = cluster.server.pid
        tokens = [cluster.admin.enroll(f"m{i}").token for i in range(members)]
        for token in tokens:  # members announce themselves so the round can be sampled
            poll_once(cluster.url, token)
        job = cluster.admin.submit(spec).model_dump()
        model = httpx.get(
            f"{cluster.url}/v1/jobs/{job['id']}/model",
            headers={"Authorization": f"Bearer {cluster.admin_token}"},  # any job, any time
            timeout=120,
        ).content
        manifest = {k: list(v) for k, v in tensors.SafetensorsFile(model).manifest.items()}
        model_mb = len(model) / 2**20
        del model
        time.sleep(1.0)
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak-RSS counter
        idle = rss_mb(pid, "VmRSS")
        t0 = time.perf_counter()
        groups = [tokens[i::workers] for i in range(workers)]
        with mp.get_context("spawn").Pool(workers) as pool:
            spans = [
                span
                for spans in pool.starmap(
                    play_members, [(cluster.url, g, manifest, concurrent) for g in groups]
                )
                for span in spans
            ]
        sent = len(spans)
        uploading = max(end for _, end in spans) - min(start for start, _ in spans)
        while cluster.admin.job(job["id"]).status not in ("completed", "failed"):
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        peak = rss_mb(pid, "VmHWM")
        final = cluster.admin.job(job["id"]).model_dump()
    if (
        final["status"] != "completed"
        or final["rounds"][0]["clients"] != members
        or sent != members
    ):
        raise SystemExit(
            f"round did not count every update: {final['status']} {final.get('reason')}"
        )
    return {
        "members": members,
        "model_mb": model_mb,
        "idle_mb": idle,
        "peak_above_idle_mb": peak - idle,
        "seconds": elapsed,
        "updates_per_s": members / uploading,
        "mb_per_s": members * model_mb / uploading,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    results = []
    for n in args.members:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(n, args.workers, Path(tmp)))
        r = results[-1]
        print(f"{n} members: peak {r['peak_above_idle_mb']:.1f} MB above idle", flush=True)
    print()
    print(
        f"{'members':>8} {'model MB':>9} {'idle RSS MB':>12} {'peak above idle MB':>19} {'x model':>8} {'updates/s':>10}"
    )
    for r in results:
        print(
            f"{r['members']:>8} {r['model_mb']:>9.1f} {r['idle_mb']:>12.1f} {r['peak_above_idle_mb']:>19.1f} "
            f"{r['peak_above_idle_mb'] / r['model_mb']:>8.2f} {r['updates_per_s']:>10.2f}"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"{b['members']} vs {a['members']} members: peak above idle x{b['peak_above_idle_mb'] / a['peak_above_idle_mb']:.2f} "
            f"(holding every update would be x{b['members'] / a['members']:.0f})"
        )


if __name__ == "__main__":
    main()
