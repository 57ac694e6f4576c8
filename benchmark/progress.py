"""One way for long work to say how it is going: the run's driver, its workers,
``medbench fidelity`` and ``medbench tune`` all report through a ``Progress``.

The engine is handed a ``Progress`` and calls only the methods below; every one does
nothing here, so a caller overrides what it shows and nothing else:

- ``log(text)``: a line for the reader (``note`` and ``warn`` prefix it);
- ``fitting(what, images, stored)`` / ``fitted(what, seconds, stored)``: a generator is
  being fitted (``stored``: its fit is a model the generator cache keeps, not SMOTE or
  oversampling, which are rebuilt from the real images in no time);
- ``started(text)``: a unit of work (a cell, a trial, a measured class) begins;
- ``advance(text, fraction)``: how far the piece of work inside it has come (a
  classifier's epochs, a generator's fit), 0..1;
- ``finished(done, text, unit=None)``: a unit ended, ``done`` of ``total`` units so far
  (``unit``: its key, for a display that counts down the plan's seconds per unit);
- ``status(text)``: a short state for the overall bar (the best trial so far);
- ``close()``: the work is over.

``ConsoleProgress`` draws rich bars on a terminal and prints one line per finished unit
otherwise; given the plan's seconds per unit (``medbench.plan``), its time left is the
plan's seconds of the units not yet done, scaled by how the finished units' actual time
compared with their plan, instead of the mean time of the units done so far (a GAN arm's
cell takes ten times a ``none`` cell's); ``WorkerProgress`` is what a worker process uses (its lines, tagged with its
pid; the driver draws the bars).
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                           ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

__all__ = ["ConsoleProgress", "PlannedTimeLeft", "Progress", "WorkerProgress"]


class Progress:
    """Silent progress: the protocol, with every method a no-op."""

    def log(self, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        self.log(f"note: {text}")

    def warn(self, text: str) -> None:
        self.log(f"warning: {text}")

    def fitting(self, what: str, images: int, stored: bool) -> None:
        self.log(f"fitting {what} on {images} real training images")

    def fitted(self, what: str, seconds: float, stored: bool) -> None:
        self.log(f"fitted {what} in {seconds:.1f} s")

    def started(self, text: str) -> None:
        pass

    def advance(self, text: str, fraction: float) -> None:
        pass

    def finished(self, done: int, text: str, unit: str | None = None) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlannedTimeLeft:
    """Time left from a plan: the planned seconds of the units not yet done, times the
    ratio of the actual to the planned seconds of those done (before any is done: the
    plan as it is, shared over ``jobs`` units at once)."""

    def __init__(self, planned: dict[str, float], jobs: int = 1):
        self.left = dict(planned)
        self.jobs = max(1, jobs)
        self.start = time.monotonic()
        self.planned_done = 0.0

    def finished(self, unit: str | None) -> None:
        if unit in self.left:
            self.planned_done += self.left.pop(unit)

    def seconds(self) -> float | None:
        rest = sum(self.left.values())
        elapsed = time.monotonic() - self.start
        if self.planned_done > 0:
            return rest * elapsed / self.planned_done
        # nothing done yet: the plan alone, less the time the first units have run
        return max(rest / self.jobs - elapsed, 0.0) if rest else 0.0


class _PlannedColumn(ProgressColumn):
    """rich's time-remaining column, fed by a ``PlannedTimeLeft``."""

    def __init__(self, left: PlannedTimeLeft):
        super().__init__()
        self.left = left

    def render(self, task) -> Text:
        s = self.left.seconds()
        if s is None:
            return Text("-:--:--", style="progress.remaining")
        s = int(round(s))
        return Text(f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}", style="progress.remaining")


class ConsoleProgress(Progress):
    """Two rich bars on a terminal (the units, and the piece of work inside the current
    one); on anything else one line per finished unit and per log line, on stderr.
    ``planned`` (unit key -> seconds, from ``medbench.plan``) makes the time left count
    down the plan rather than the mean of the units done so far."""

    def __init__(self, total: int | None, title: str, quiet: bool = False,
                 planned: dict[str, float] | None = None, jobs: int = 1):
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.total = total
        self.bar: RichProgress | None = None
        self.left = PlannedTimeLeft(planned, jobs) if planned else None
        if not quiet and self.console.is_terminal:
            remaining = (TimeRemainingColumn() if self.left is None
                         else _PlannedColumn(self.left))
            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                    MofNCompleteColumn(), TimeElapsedColumn(),
                                    remaining, console=self.console, transient=False)
            self.bar.start()
            self.units = self.bar.add_task(title, total=total)
            self.inner = self.bar.add_task("", total=1, visible=False)

    def log(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def started(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.inner, description=f"  {text}", completed=0, total=1,
                            visible=True)

    def advance(self, text: str, fraction: float) -> None:
        if self.bar is not None:
            self.bar.update(self.inner, description=f"  {text}", completed=fraction, total=1.0,
                            visible=True)

    def finished(self, done: int, text: str, unit: str | None = None) -> None:
        if self.left is not None:
            self.left.finished(unit)
        if self.bar is not None:
            self.bar.update(self.units, completed=done)
        self.log(f"[{done}/{self.total}] {text}" if self.total is not None else f"[{done}] {text}")

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.units, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class WorkerProgress(Progress):
    """Inside a worker process: log lines go to stderr with the worker's pid; there is
    no bar to move (the driver has it)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def log(self, text: str) -> None:
        if not self.quiet:
            print(f"(worker {os.getpid()}) {text}", file=sys.stderr, flush=True)
