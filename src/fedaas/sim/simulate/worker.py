"""A worker process of the embedded backend: frames in on stdin, frames out on stdout.

Started by :class:`fedaas.sim.simulate.pool.LocalPool` as
``python -m fedaas.sim.simulate.worker``; each frame it reads is handled by
:class:`~fedaas.sim.simulate.members.VirtualMembers` and answered with one
frame. It ends at the end of its input. Anything else it would print goes to
stderr, so stdout carries frames only.
"""

from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy and torch load their thread pools


def main() -> None:
    import torch

    from fedaas.sim.simulate.members import VirtualMembers
    from fedaas.sim.simulate.wire import read_frame, write_frame

    torch.set_num_threads(1)
    frames_in, frames_out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt a frame
    members = VirtualMembers()
    while (frame := read_frame(frames_in)) is not None:
        write_frame(frames_out, members.handle(frame))


if __name__ == "__main__":
    main()
