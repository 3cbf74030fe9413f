"""Secure aggregation core: time per stage and bytes per member, next to a plain sum.

Runs the pure protocol of ``fedaas.algorithms.secagg`` in one process (no
network, no training): members and coordinator of one round, for the demo
model (MLP 64-64-10, 4,810 parameters) and a 1M-parameter model, at 10 and
50 members, SecAgg (everyone) and SecAgg+ (sparse graph), with 0% and 20%
of the members dropping after their masked upload. Per stage: the mean CPU
time of one member and the coordinator's time; the bytes one member sends
and receives per stage; and the coordinator's total against a plain round's
aggregation (float64 weighted sum of the float32 updates), measured side by
side in the same run. The whole-federation comparison (with training and
HTTP) is ``bench/bench_secagg.py``.

    .venv/bin/python bench/bench_secagg_core.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from fedaas.algorithms.secagg import (
    FixedPoint,
    IdentityKey,
    RoundContext,
    SecAggMember,
    SecAggParams,
    SecAggServer,
)

DEMO_PARAMETERS = 64 * 64 + 64 + 64 * 10 + 10  # MLP 64-64-10


def _size(value: object) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, list | tuple):
        return sum(_size(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_size(getattr(value, f)) for f in value.__dataclass_fields__)
    return 8


def one_round(n: int, d: int, neighbors: int | None, drop: float) -> dict[str, float]:
    """Times (s) and bytes of one secure round, and of the plain weighted sum for comparison."""
    rng = np.random.default_rng(0)
    ids = [f"member-{i:03d}" for i in range(n)]
    identities = {m: IdentityKey.generate() for m in ids}
    public = {m: k.public_bytes() for m, k in identities.items()}
    group = n if neighbors is None else neighbors + 1
    threshold = group // 2 + 1
    encoding = FixedPoint.for_round(n, clip=1.0, max_weight=1000.0)
    params = SecAggParams(threshold, neighbors, encoding)
    context = RoundContext("bench", 1, 0)
    updates = {m: (v := rng.normal(size=d).astype(np.float32)) / np.linalg.norm(v) for m in ids}
    weights = {m: float(rng.integers(50, 1000)) for m in ids}
    dropped = set(ids[: int(round(drop * n))])

    t: dict[str, float] = defaultdict(float)
    b: dict[str, float] = defaultdict(float)

    def clock(key: str, fn, *args):  # type: ignore[no-untyped-def]
        start = time.process_time()
        out = fn(*args)
        t[key] += time.process_time() - start
        return out

    members = {m: SecAggMember(m, identities[m], context, params) for m in ids}
    server = SecAggServer(context, params, public, encoding.encoded_length(d))
    for m in ids:
        ad = clock("member advertise", members[m].advertise)
        b["up advertise"] += _size(ad)
        clock("server advertise", server.receive_advertisement, ad)
    ads = clock("server advertise", server.close_advertise)
    b["down advertise"] = _size(ads) * n
    for m in ids:
        shares = clock("member share keys", members[m].share_keys, ads, public)
        b["up share keys"] += _size(shares)
        clock("server share keys", server.receive_shares, m, shares)
    routed = clock("server share keys", server.close_share_keys)
    b["down share keys"] = sum(_size(v) for v in routed.values())
    for m in ids:
        encoded = clock("member encode", encoding.encode, updates[m], weights[m])
        masked = clock("member mask", members[m].masked_input, routed[m], encoded)
        if m not in dropped:
            b["up masked input"] += _size(masked)
            clock("server masked input", server.receive_masked_input, m, masked)
    request = clock("server masked input", server.close_masked_input)
    survivors = request.survivors
    b["down unmask"] = _size(request) * len(survivors)
    for m in survivors:
        answer = clock("member unmask", members[m].unmask, request)
        b["up unmask"] += _size(answer)
        clock("server unmask", server.receive_unmask, answer)
    total = clock("server unmask", server.finish)
    weighted, _ = clock("server unmask", encoding.decode, total)

    start = time.process_time()  # the plain round's aggregation, same updates
    plain = np.zeros(d, dtype=np.float64)
    for m in survivors:
        plain += weights[m] * updates[m].astype(np.float64)
    t["plain server sum"] = time.process_time() - start
    exact = sum(weights[m] * updates[m].astype(np.float64) for m in survivors)
    assert np.max(np.abs(weighted - exact)) <= encoding.error_bound(len(survivors))
    out = {k: v / (n if k.startswith("member") and "unmask" not in k else 1) for k, v in t.items()}
    out["member unmask"] = t["member unmask"] / max(len(survivors), 1)
    out.update({f"bytes {k}": v / n for k, v in b.items()})
    out["plain upload bytes"] = d * 4
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the demo model size")
    args = parser.parse_args()
    sizes = [DEMO_PARAMETERS] if args.quick else [DEMO_PARAMETERS, 1_000_000]
    print(
        "| d | n | graph | drop | member ms: advertise/share/encode/mask/unmask | "
        "coordinator ms: advertise/share/sum/unmask (total vs plain sum) | "
        "B up per member: keys/shares/masked/unmask (total vs plain fp32) | "
        "B down per member: keys/shares/unmask |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for d in sizes:
        for n, neighbors in ((10, None), (50, None), (50, 10)):
            for drop in (0.0, 0.2):
                r = one_round(n, d, neighbors, drop)
                ms = {k: 1000 * v for k, v in r.items() if not k.startswith(("bytes", "plain up"))}
                member = "/".join(
                    f"{ms[f'member {s}']:.2f}"
                    for s in ("advertise", "share keys", "encode", "mask", "unmask")
                )
                stages = ("advertise", "share keys", "masked input", "unmask")
                server = "/".join(f"{ms[f'server {s}']:.1f}" for s in stages)
                secure = sum(ms[f"server {s}"] for s in stages)
                ratio = secure / max(ms["plain server sum"], 1e-3)
                alive = 1 - drop
                ups = [
                    r["bytes up advertise"],
                    r["bytes up share keys"],
                    r["bytes up masked input"] / alive,
                    r["bytes up unmask"] / alive,
                ]
                downs = [
                    r["bytes down advertise"],
                    r["bytes down share keys"],
                    r["bytes down unmask"] / alive,
                ]
                plain = r["plain upload bytes"]
                graph = "all" if neighbors is None else f"k={neighbors}"
                print(
                    f"| {d:,} | {n} | {graph} | {drop:.0%} | {member} | {server} "
                    f"({secure:.1f} vs {ms['plain server sum']:.1f}, {ratio:.1f}x) | "
                    f"{'/'.join(f'{u:,.0f}' for u in ups)} ({sum(ups) / plain:.3f}x) | "
                    f"{'/'.join(f'{u:,.0f}' for u in downs)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
