"""A long simulation's progress bar shows the round, the accuracy and the ETA on an 80-column
terminal (rich drops or cuts the columns that do not fit: the round count and the ETA went
first, under a long title)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from fedaas.protocol import RoundRecord
from fedaas.sim.simulate.progress import RoundProgress

TITLE = "digits-fedavg-with-a-long-name: 1000 members, 2 local worker(s)"


def _last_row(width: int, total: int, seconds: float) -> tuple[str, str]:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    with RoundProgress(total, console, enabled=True, title=TITLE) as bar:
        for number in (1, 2):
            bar.advance(RoundRecord(round=number, accuracy=0.59171, seconds=seconds, clients=3))
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue())
    return text.splitlines()[0], text.split("\r")[-1].strip()


def test_round_accuracy_and_eta_fit_80_columns() -> None:
    for total, seconds in [(30, 0.012), (10_000, 123.456)]:
        title, row = _last_row(80, total, seconds)
        assert title == TITLE  # printed once, whole, above the bar
        assert row.startswith("round") and f" 2/{total} " in row, row
        assert "accuracy 0.5917" in row and f"{seconds:.3f} s/round" in row, row
        assert re.search(r"ETA \d+:\d\d:\d\d$", row), row
        assert "…" not in row and len(row) <= 80, row


def test_no_bar_when_disabled() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True)
    with RoundProgress(3, console, enabled=False, title=TITLE) as bar:
        bar.advance(RoundRecord(round=1, accuracy=0.5, seconds=0.1, clients=3))
    assert out.getvalue() == ""
