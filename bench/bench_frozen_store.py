"""How long one small read waits on an object store that stopped answering.

Each cloud's emulator is started, given one small object, then frozen
(SIGSTOP: connections are still accepted, nothing is answered, as behind a
load balancer with no healthy server). The same ``fedaas.storage.read_bytes``
is then timed twice, side by side in threads: with fedaas's limits
(:mod:`fedaas.storage.timeouts`) and with the backends' own defaults. A read
still waiting after ``--cap`` seconds is printed as ``> cap``.

    .venv/bin/python bench/bench_frozen_store.py [--kinds s3 gs az] [--cap 600]
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from fedaas import storage
from fedaas.sim import emulators
from fedaas.storage import filesystems


def _time_read(url: str, options: dict[str, Any], results: dict[str, str], key: str) -> None:
    began = time.monotonic()
    try:
        storage.read_bytes(url, options)
        outcome = "answered"
    except storage.StorageError as exc:
        outcome = f"{exc.kind}: {str(exc).rsplit('(', 1)[-1].split(':')[0]}"
    results[key] = f"{time.monotonic() - began:.0f} s ({outcome})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", nargs="+", default=["s3", "gs", "az"])
    parser.add_argument("--cap", type=float, default=600.0)
    args = parser.parse_args()
    ours = filesystems.with_timeouts
    backends_own: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda _p, o: o  # noqa: E731
    results: dict[str, str] = {}
    threads: list[threading.Thread] = []
    started: list[emulators.Emulator] = []
    try:
        for kind in args.kinds:
            emulator = emulators.start(kind)
            started.append(emulator)
            url = storage.join(emulator.make_bucket("frozen"), "object.bin")
            storage.write_bytes(url, b"x" * 1024, emulator.storage_options)
            os.kill(emulator.pid, signal.SIGSTOP)
            for label, timeouts in (("fedaas", ours), ("backend", backends_own)):
                filesystems.with_timeouts = timeouts  # read at resolve(), before each call starts
                key = f"{kind} {label}"
                thread = threading.Thread(
                    target=_time_read,
                    args=(url, emulator.storage_options, results, key),
                    daemon=True,
                )
                thread.start()
                threads.append(thread)
                time.sleep(0.5)  # let this call resolve its filesystem before the switch
            filesystems.with_timeouts = ours
        deadline = time.monotonic() + args.cap
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        for emulator in started:
            os.kill(emulator.pid, signal.SIGCONT)
            emulator.stop()
    print(f"one 1 KiB read from a frozen store (cap {args.cap:.0f} s)")
    print("| store | fedaas limits | backend defaults |")
    print("|---|---|---|")
    for kind in args.kinds:
        own = results.get(f"{kind} fedaas", f"> {args.cap:.0f} s")
        theirs = results.get(f"{kind} backend", f"> {args.cap:.0f} s")
        print(f"| {kind} | {own} | {theirs} |")


if __name__ == "__main__":
    main()
