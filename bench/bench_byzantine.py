"""Robust aggregation against 2 attacking members of 10, on the demo workload.

The demo's federation (digits, Dirichlet 0.5 over 10 members, MLP 64-64-10,
local SGD lr 0.05; ``bench/demo_federation.py``'s data) runs once clean and
once per attack, with 2 of the 10 members attacking:

- ``sign_flip``: the member uploads ``-4 x`` its honest update;
- ``scaled``: it uploads ``-50 x`` the global model with a plausible count;
- ``large_norm``: Gaussian noise of norm 1e4, claiming 10^12 examples;
- ``label_flip``: it trains honestly on labels ``9 - y``.

The 8 honest members are ``fedaas client`` processes; the 2 attackers are
member agents in this process whose transport rewrites each upload (or, for
label flipping, whose data is flipped). Each federation runs one job per
rule: FedAvg (``mean``, with the coordinator's default norm and count
bounds), coordinate-wise ``median``, ``trimmed_mean`` (beta 0.2), ``krum``
(f = 2), Multi-Krum (f = 2, m = n - f = 8), the mean with ``norm_bound = 1``
and ``screened_mean`` (f = 2: Krum-score and cosine screening, then FedAvg;
:mod:`fedaas.algorithms.screening`). Prints the final held-out accuracy of
each rule under each attack next to the clean FedAvg run, and the best
rule's gap to it. Two references: the clean federation with the screen on
(its cost when nobody attacks), and FedAvg over only the 8 members that
stay honest, without the attackers' members at all: what a perfect filter
could reach on this split.

With ``--memory``, instead: coordinator memory for one round of a ~10M-parameter
model (``bench/bench_memory.py``'s MLP 1000-3000-2300-10) with 10 and 50
members and each ``--memory-rules`` aggregator, as peak RSS above idle and
as a multiple of the model's size (the updates are spilled to disk and read
back in column blocks, so it should not grow with the members).

    .venv/bin/python bench/bench_byzantine.py [--rounds 30] [--attacks ...]
    .venv/bin/python bench/bench_byzantine.py --memory [--members 10 50]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fedaas import tensors
from fedaas.client.agent import Agent
from fedaas.client.transport import Transport
from fedaas.data.digits import digits_federation
from fedaas.data.source import write_npz
from fedaas.sim.cluster import LocalCluster
from fedaas.sim.demo import EXAMPLE_SPEC, demo_spec

MEMBERS, ATTACKERS = 10, 2
RULES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "median": {"aggregator": "median"},
    "trimmed_mean": {"aggregator": "trimmed_mean", "trim": 0.2},
    "krum": {"aggregator": "krum", "byzantine": 2},
    "multi_krum": {"aggregator": "krum", "byzantine": 2, "krum_select": 8},
    "norm_bound_1": {"norm_bound": 1.0},
    "screened": {"aggregator": "screened_mean", "byzantine": 2},
}
CLEAN_RULES = ["fedavg", "screened"]
"""Without attackers: FedAvg, and what the screen costs when nobody attacks."""
ATTACKS = ("sign_flip", "scaled", "large_norm", "label_flip")


class AttackTransport(Transport):
    """A member's transport that rewrites every update it uploads."""

    def __init__(self, server: str, token: str, attack: str) -> None:
        super().__init__(server, token, give_up_after=None)
        self.attack = attack
        self.rng = np.random.default_rng(abs(hash(token)) % 2**32)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if method == "PUT" and path.endswith("/update") and self.attack != "label_flip":
            delta, meta = tensors.decode(kwargs["content"])
            kwargs["content"] = self._poison(path, delta, dict(meta))
        return super().request(method, path, **kwargs)

    def _poison(self, path: str, delta: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
        if self.attack == "sign_flip":
            delta = {k: -4.0 * v for k, v in delta.items()}
        elif self.attack == "scaled":
            job, number = path.split("/")[3], int(path.split("/")[5])
            model = self._http.get(f"/v1/jobs/{job}/model", params={"round": number - 1})
            base, _ = tensors.decode(model.content)
            delta = {k: -50.0 * base[k] for k in delta}
        elif self.attack == "large_norm":
            noise = {k: self.rng.standard_normal(v.shape) for k, v in delta.items()}
            norm = np.sqrt(sum(float((n**2).sum()) for n in noise.values()))
            delta = {k: (1e4 / norm) * n for k, n in noise.items()}
            meta["num_examples"] = str(10**12)
        return tensors.encode(delta, meta)


@contextmanager
def federation(
    workdir: Path, attack: str | None, members: int = MEMBERS
) -> Iterator[tuple[LocalCluster, Path]]:
    """8 honest member processes and 2 attackers (in threads), or ``members`` honest ones.

    The data are always the 10-member split; ``members = 8`` leaves out the
    attackers' partitions (the last two) entirely.
    """
    parts, (x_test, y_test) = digits_federation(MEMBERS, 0.5, 0)
    data = workdir / "data"
    for i, (x, y) in enumerate(parts):
        flipped = attack == "label_flip" and i >= MEMBERS - ATTACKERS
        write_npz(str(data / f"client_{i}.npz"), x, 9 - y if flipped else y)
    write_npz(str(data / "test.npz"), x_test, y_test)
    agents: list[Agent] = []
    threads: list[threading.Thread] = []
    with LocalCluster(workdir / "cluster") as cluster:
        cluster.start_server()
        honest = members if attack is None else MEMBERS - ATTACKERS
        for i in range(honest):
            cluster.start_client(f"m{i}", str(data / f"client_{i}.npz"))
        for i in range(honest, MEMBERS if attack is not None else honest):
            transport = AttackTransport(cluster.url, cluster.admin.enroll(f"m{i}").token, attack)
            agent = Agent(transport, str(data / f"client_{i}.npz"), state_dir=workdir / f"a{i}")
            agent.poll_s = 1.0
            agents.append(agent)
            threads.append(threading.Thread(target=agent.run, daemon=True))
            threads[-1].start()
        cluster.wait_online(honest if attack is None else MEMBERS, timeout=600)
        try:
            yield cluster, data / "test.npz"
        finally:
            for agent in agents:
                agent.stop.set()
            for thread in threads:
                thread.join(timeout=30)


def run_rules(
    cluster: LocalCluster, holdout: Path, rounds: int, rules: list[str], members: int = MEMBERS
) -> dict:
    results = {}
    for rule in rules:
        _, spec = demo_spec(EXAMPLE_SPEC, members, rounds, holdout)
        spec["strategy"] = {"name": "fedavg", **RULES[rule]}
        started = time.monotonic()
        job = cluster.admin.wait(cluster.admin.submit(spec).id).model_dump()
        if job["status"] != "completed":
            results[rule] = float("nan")
            print(f"  {rule}: job {job['status']}: {job.get('reason')}", flush=True)
            continue
        results[rule] = job["rounds"][-1]["accuracy"]
        took = time.monotonic() - started
        print(f"  {rule:<14} final accuracy {results[rule]:.4f} ({took:.0f} s)", flush=True)
    return results


def memory(members: list[int], rules: list[str], workers: int) -> None:
    """Peak coordinator RSS above idle for one round per rule and member count."""
    from bench_memory import run

    rows = []
    for rule in rules:
        for n in members:
            with tempfile.TemporaryDirectory() as tmp:
                r = run(n, workers, Path(tmp), strategy=RULES[rule] or None)
            rows.append((rule, r))
            print(f"{rule} x {n}: peak {r['peak_above_idle_mb']:.1f} MB above idle", flush=True)
    print()
    print(f"{'rule':<14}{'members':>8}{'model MB':>10}{'peak above idle MB':>20}{'x model':>9}")
    for rule, r in rows:
        peak, model = r["peak_above_idle_mb"], r["model_mb"]
        print(f"{rule:<14}{r['members']:>8}{model:>10.1f}{peak:>20.1f}{peak / model:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memory", action="store_true", help="measure coordinator memory")
    parser.add_argument("--members", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--memory-rules", nargs="+", default=["median"], choices=list(RULES))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    args = parser.parse_args()
    if args.memory:
        memory(args.members, args.memory_rules, args.workers)
        return
    table: dict[str, dict[str, float]] = {}
    print("without the attackers' members (8 honest members only):", flush=True)
    with tempfile.TemporaryDirectory() as tmp, federation(Path(tmp), None, 8) as (cl, test):
        ceiling = run_rules(cl, test, args.rounds, ["fedavg"], members=8)["fedavg"]
    for attack in (None, *args.attacks):
        label = attack or "clean"
        print(f"{label}:", flush=True)
        rules = ["fedavg", *(r for r in CLEAN_RULES[1:] if r in args.rules)]
        rules = rules if attack is None else args.rules
        with tempfile.TemporaryDirectory() as tmp, federation(Path(tmp), attack) as (cl, test):
            table[label] = run_rules(cl, test, args.rounds, rules)
    clean = table["clean"]["fedavg"]
    print()
    print(f"clean FedAvg, 10 honest members: {clean:.4f}")
    for rule, value in table["clean"].items():
        if rule != "fedavg":
            print(f"clean {rule}, 10 honest members (cost of the rule): {value:.4f}")
    print(f"FedAvg over the 8 honest members only (perfect-filter ceiling): {ceiling:.4f}")
    print(
        f"{'attack (2 of 10)':<18}"
        + "".join(f"{r:>14}" for r in args.rules)
        + f"{'best - clean':>14}"
    )
    for attack in args.attacks:
        row = table[attack]
        best = max((v for v in row.values() if v == v), default=float("nan"))
        cells = "".join(f"{row.get(r, float('nan')):>14.4f}" for r in args.rules)
        print(f"{attack:<18}{cells}{best - clean:>+14.4f}")


if __name__ == "__main__":
    main()
