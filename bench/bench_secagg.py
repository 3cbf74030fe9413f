"""Secure aggregation vs plain rounds on the demo workload, side by side in one run.

The demo's job (digits, MLP 64-10, FedAvg, held-out evaluation on the
coordinator) with a real coordinator process and N member agents, each its
own OS process (``--members-as process``, the default: ``fedaas client``, as
deployed, so members' crypto and HTTP work runs in parallel as it does on
separate machines; a dropping member runs the same agent in this script's
``--member`` mode, with the fault injected) or all threads of this process
(``--members-as thread``: 50 members fit on a laptop, but their work is
serialized under one GIL), plain and with
``[secure_aggregation] enabled`` (SecAgg; ``--neighbors k`` adds SecAgg+
rows), at N = 10 and 50, with 0% and 20% dropouts. A dropout is a member
that dies after training, before its upload, in every round it is sampled
in (a plain round then waits for its deadline, ``--timeout``; a secure round
recovers the member's pairwise masks from its neighbours' shares). Printed
per setting: median and mean seconds per round (round 1, with its warm-up,
left out; a plain round with a dropout waits for its deadline, and the
member then sits out a few rounds, so the median hides those rounds), bytes up and down per member per round (what the coordinator counted:
model downloads, uploads and, for secure rounds, the key, share and unmask
messages), the coordinator's CPU seconds per round, a member's CPU seconds
per round (member processes only: summed over their processes, divided by
members and rounds), the final accuracy;
then secure / plain ratios measured in the same run. ``--hidden 512 512``
gives the MLP larger hidden layers, so that local training is not negligible.
``--repeat N`` runs each setting N times, plain and secure alternating, and
reports the median of each number (and the ratio of each back-to-back pair):
on a shared machine one run's plain round swings by a third. ``--rtt MS``
makes every member request wait MS first, as if the coordinator were a
network round trip away (members across organizations); such members run
the same agent in this script's ``--member`` mode.

    .venv/bin/python bench/bench_secagg.py [--rounds 6] [--members 10 50] [--dropouts 0 0.2]
        [--members-as process|thread] [--hidden 512 512] [--repeat 5] [--rtt 20]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from fedaas.client.agent import Agent
from fedaas.client.transport import ApiClientError, Transport
from fedaas.data.digits import digits_federation
from fedaas.data.source import write_npz
from fedaas.sim.cluster import LocalCluster
from fedaas.sim.demo import EXAMPLE_SPEC, demo_spec


class DroppingTransport(Transport):
    """A member that dies after training, before its upload (when ``drops``), and whose every
    request first waits ``rtt`` seconds (a network round trip away from the coordinator)."""

    drops = False
    rtt = 0.0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.drops and method == "PUT" and path.endswith("/update"):
            raise ApiClientError(0, "dropped", "benchmark: this member dropped out")
        if self.rtt:
            time.sleep(self.rtt)
        return super().request(method, path, **kwargs)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    members: int,
    secure: bool,
    dropout: float,
    rounds: int,
    timeout: float,
    neighbors: int | None,
    workdir: Path,
    processes: bool = True,
    hidden: list[int] | None = None,
    rtt: float = 0.0,
) -> dict[str, Any]:
    parts, (x_test, y_test) = digits_federation(members, 0.5, 0)
    for i, (x, y) in enumerate(parts):
        write_npz(str(workdir / f"m{i}.npz"), x, y)
    write_npz(str(workdir / "test.npz"), x_test, y_test)
    _, spec = demo_spec(EXAMPLE_SPEC, members, rounds, workdir / "test.npz")
    spec["federation"].update(min_clients=math.ceil(members / 2), round_timeout=timeout)
    if secure:
        spec["secure_aggregation"] = {"enabled": True}
        if neighbors is not None:
            spec["secure_aggregation"]["neighbors"] = neighbors
    if hidden:
        spec["model"]["hidden"] = hidden
    agents: list[Agent] = []
    with LocalCluster(workdir / "cluster") as cluster:
        cluster.start_server()
        for i in range(members):
            data, drops = str(workdir / f"m{i}.npz"), i < round(dropout * members)
            if processes and not drops and not rtt:
                cluster.start_client(f"m{i}", data)
                continue
            token = cluster.admin.enroll(f"m{i}").token
            if processes:  # the same agent in its own process, with the fault injected
                cluster.clients[f"m{i}"] = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--member",
                        cluster.url,
                        data,
                        str(workdir / f"s{i}"),
                        "drop" if drops else "stay",
                        str(rtt),
                    ],
                    env=cluster._env(FEDAAS_TOKEN=token),
                    stdin=subprocess.DEVNULL,
                    stdout=(cluster.logs / f"client-m{i}.log").open("ab"),
                    stderr=subprocess.STDOUT,
                )
                continue
            transport = DroppingTransport(cluster.url, token, give_up_after=60)
            transport.drops, transport.rtt = drops, rtt
            agents.append(Agent(transport, data, state_dir=workdir / f"s{i}", poll_s=5))
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        cluster.wait_online(members, timeout=300)
        assert cluster.server is not None
        pids = [p.pid for p in cluster.clients.values()] if processes else []
        cpu0, t0 = cpu_seconds(cluster.server.pid), time.perf_counter()
        members0 = sum(cpu_seconds(pid) for pid in pids)
        job = cluster.admin.wait(cluster.admin.submit(spec).id, timeout=3600)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(cluster.server.pid) - cpu0
        members_cpu = sum(cpu_seconds(pid) for pid in pids) - members0
        for a in agents:
            a.stop.set()
        for t in threads:
            t.join(timeout=30)
    if job.status != "completed":
        raise SystemExit(f"job {job.status}: {job.reason}")
    later = job.rounds[1:] or job.rounds
    return {
        "members": members,
        "mode": ("secagg+" if neighbors else "secagg") if secure else "plain",
        "as": "process" if processes else "thread",
        "dropout": dropout,
        "median_s": statistics.median(r.seconds for r in later),
        "mean_s": statistics.mean(r.seconds for r in later),
        "up_kb": statistics.median((r.bytes_up or 0) / max(r.clients or 1, 1) for r in later) / 1e3,
        "down_kb": statistics.median((r.bytes_down or 0) / max(r.clients or 1, 1) for r in later)
        / 1e3,
        "cpu_s": cpu / len(job.rounds),
        "member_cpu_s": members_cpu / len(job.rounds) / members if processes else math.nan,
        "wall_s": wall,
        "accuracy": job.rounds[-1].accuracy or 0.0,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one setting as one: the median of each measured number."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def member(url: str, data: str, state: str, drops: str, rtt: str) -> None:
    """``--member``: one agent with the fault (``drop``) or network delay injected (its own
    process, as ``fedaas client``)."""
    import torch

    torch.set_num_threads(1)  # as LocalCluster's members
    transport = DroppingTransport(url, os.environ["FEDAAS_TOKEN"], give_up_after=60)
    transport.drops, transport.rtt = drops == "drop", float(rtt)
    Agent(transport, data, state_dir=Path(state)).run()


def main() -> None:
    if sys.argv[1:2] == ["--member"]:
        member(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--members", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--timeout", type=float, default=10.0, help="round_timeout (s)")
    parser.add_argument("--neighbors", type=int, default=None, help="also run SecAgg+ with k")
    parser.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        help="ms each member request waits first: a round trip to a distant coordinator",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per setting, modes alternating (a noisy machine)",
    )
    parser.add_argument(
        "--members-as",
        choices=["process", "thread"],
        default="process",
        help="process: one `fedaas client` process per member (as deployed); thread: all "
        "members in this process (for 50 members on a small machine; one GIL)",
    )
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=None, help="MLP hidden sizes (demo: 64)"
    )
    args = parser.parse_args()
    modes: list[tuple[bool, int | None]] = [(False, None), (True, None)]
    if args.neighbors:
        modes.append((True, args.neighbors))
    results = []
    for n in args.members:
        for dropout in args.dropouts:
            runs: dict[str, list[dict[str, Any]]] = {}
            for rep in range(args.repeat):  # the modes alternate: a slow spell hits both
                for secure, k in modes:
                    if k is not None and k >= n:
                        continue
                    with tempfile.TemporaryDirectory() as tmp:
                        r = run(
                            n,
                            secure,
                            dropout,
                            args.rounds,
                            args.timeout,
                            k,
                            Path(tmp),
                            processes=args.members_as == "process",
                            hidden=args.hidden,
                            rtt=args.rtt / 1e3,
                        )
                    runs.setdefault(r["mode"], []).append(r)
                    print(
                        f"{n} members, {r['mode']}, {dropout:.0%} dropouts, run {rep + 1}: "
                        f"median round {r['median_s']:.3f} s",
                        flush=True,
                    )
            results.extend(_median_run(rs) for rs in runs.values())
            if args.repeat > 1 and "plain" in runs:
                for mode, rs in runs.items():
                    if mode != "plain":
                        pairs = zip(rs, runs["plain"], strict=True)
                        ratios = ", ".join(
                            f"x{a['median_s'] / b['median_s']:.2f}" for a, b in pairs
                        )
                        print(
                            f"{n} members, {dropout:.0%} dropouts, {mode} / plain by run: {ratios}"
                        )
    print()
    model = "hidden " + " ".join(map(str, args.hidden or [64]))
    kind = "processes" if args.members_as == "process" else "threads"
    runs_note = f", median of {args.repeat} runs each" if args.repeat > 1 else ""
    rtt_note = f", {args.rtt:g} ms round trip per request" if args.rtt else ""
    print(f"members as {kind}, MLP {model}, {args.rounds} rounds{runs_note}{rtt_note}")
    print(
        f"{'members':>7} {'mode':>8} {'drop':>5} {'s/round':>8} {'mean s':>7} {'up kB':>7} {'down kB':>8} "
        f"{'coord CPU s':>11} {'member CPU s':>12} {'accuracy':>8}"
    )
    for r in results:
        print(
            f"{r['members']:>7} {r['mode']:>8} {r['dropout']:>5.0%} {r['median_s']:>8.3f} "
            f"{r['mean_s']:>7.3f} "
            f"{r['up_kb']:>7.1f} {r['down_kb']:>8.1f} {r['cpu_s']:>11.3f} "
            f"{r['member_cpu_s']:>12.4f} {r['accuracy']:>8.4f}"
        )
    plain = {(r["members"], r["dropout"]): r for r in results if r["mode"] == "plain"}
    print()
    for r in results:
        base = plain.get((r["members"], r["dropout"]))
        if r["mode"] == "plain" or base is None:
            continue
        print(
            f"{r['members']} members, {r['dropout']:.0%} dropouts, {r['mode']} / plain: "
            f"round time x{r['median_s'] / base['median_s']:.2f}, "
            f"bytes up x{r['up_kb'] / base['up_kb']:.2f}, "
            f"down x{r['down_kb'] / base['down_kb']:.2f}, "
            f"coordinator CPU x{r['cpu_s'] / base['cpu_s']:.2f}"
        )


if __name__ == "__main__":
    main()
