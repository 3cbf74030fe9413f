"""The privacy audit: what a canary attack proves vs the epsilon fedaas reports.

For each mechanism and placement, run the mechanism itself many times with and
without a canary (Jagielski et al., NeurIPS 2020; Nasr et al., IEEE S&P 2021;
:mod:`fedaas.algorithms.audit`) and print the attack's 95% lower bound on
epsilon beside the accountant's epsilon. A lower bound above the reported
epsilon means the claim is false; the ``distributed`` row shows why that
placement is refused, the ``OU as independent`` row what an unsound accountant
would claim. Never gates CI.

    .venv/bin/python bench/bench_audit.py [--trials 200000]
"""

from __future__ import annotations

import argparse
import time

from fedaas.algorithms.accounting import epsilon, record_epsilon_after
from fedaas.algorithms.audit import Audit, audit_gaussian, audit_ou
from fedaas.algorithms.privacy import noise_std

DELTA = 1e-5


def audits(trials: int) -> list[tuple[Audit, str]]:
    out = []
    z, t = 1.0, 4
    out.append(
        (
            audit_gaussian("gaussian, central, q=1", trials, t, z, epsilon(z, 1, t, DELTA), DELTA),
            "z=1, T=4",
        )
    )
    z, q, t = 0.5, 0.1, 2
    out.append(
        (
            audit_gaussian(
                "gaussian, central, Poisson q=0.1", trials, t, z, epsilon(z, q, t, DELTA), DELTA, q
            ),
            "z=0.5, T=2",
        )
    )
    z, t = 1.0, 4
    out.append(
        (
            audit_gaussian(
                "gaussian, local (coordinator's view)", trials, t, z, epsilon(z, 1, t, DELTA), DELTA
            ),
            "z=1, T=4",
        )
    )
    z, theta, t = 8.0, 0.9, 5
    ou = audit_ou(
        "ou theta=0.9, central", trials, t, z, theta, epsilon(z, 1, t, DELTA, theta=theta), DELTA
    )
    out.append((ou, "z=8, T=5"))
    out.append(
        (
            Audit(
                "  same, accounted as independent (unsound)",
                ou.lower_bound,
                epsilon(z, 1, t, DELTA),
            ),
            "never done",
        )
    )
    q, z, steps = 0.1, 0.6, 10
    out.append(
        (
            audit_gaussian(
                "record level (DP-SGD steps)",
                trials,
                steps,
                z,
                record_epsilon_after(1, steps, q, z, DELTA, accountant="pld"),
                DELTA,
                q,
            ),
            "q=0.1, z=0.6, 10 steps",
        )
    )
    z, quorum, t = 4.0, 10, 5
    share = noise_std(z, 1.0, "distributed", members=quorum)
    out.append(
        (
            audit_gaussian(
                "gaussian, distributed (REFUSED)", trials, t, share, epsilon(z, 1, t, DELTA), DELTA
            ),
            "z=4, quorum 10, T=5",
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200_000, help="trials per world")
    args = parser.parse_args()
    began = time.perf_counter()
    rows = audits(args.trials)
    print(f"delta {DELTA:g}, {args.trials} trials per world, Clopper-Pearson 95%\n")
    print(
        f"| {'mechanism, placement':44} | {'setting':22} | attack eps_LB | reported eps | LB / reported |"
    )
    print(f"|{'-' * 46}|{'-' * 24}|--------------:|-------------:|--------------:|")
    for audit, setting in rows:
        ratio = audit.lower_bound / audit.reported if audit.reported else float("inf")
        flag = "  VIOLATED" if audit.lower_bound > audit.reported else ""
        print(
            f"| {audit.name:44} | {setting:22} | {audit.lower_bound:13.2f} | {audit.reported:12.2f} | {ratio:13.2f} |{flag}"
        )
    print(f"\n{time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
