"""What a long simulation shows while it runs: a rich progress bar (round, accuracy, ETA).

The title (job, members, workers) is printed once above the bar, and the bar's
row stays within 80 columns: rich drops and cuts columns that do not fit, and
at 80 columns the round count and the ETA were the first to go.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedaas.protocol import RoundRecord

BAR_WIDTH = 12
"""Characters of the bar: what is left of 80 columns once the numbers are shown."""


class RoundProgress:
    """A progress bar over the job's rounds; a no-op when ``enabled`` is false."""

    def __init__(self, total: int, console: Console, *, enabled: bool, title: str) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._title, self._console = title, console
        if enabled:
            self._progress = Progress(
                TextColumn("round"),
                MofNCompleteColumn(),
                BarColumn(bar_width=BAR_WIDTH),
                TextColumn("accuracy {task.fields[accuracy]}"),
                TextColumn("{task.fields[seconds]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(title, total=total, accuracy="  -   ", seconds="")

    def __enter__(self) -> RoundProgress:
        if self._progress is not None:
            self._console.print(self._title, style="bold", highlight=False)
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, record: RoundRecord) -> None:
        """One more round closed."""
        if self._progress is None or self._task is None:
            return
        acc = "  -   " if record.accuracy is None else f"{record.accuracy:.4f}"
        self._progress.update(
            self._task, advance=1, accuracy=acc, seconds=f"{record.seconds:.3f} s/round"
        )
