"""One progress display for a job, in rows per stage (rows read, tokenized, embedded, searched, written), with
rate and ETA where the total is known.

On a terminal the current stage's line is redrawn in place; elsewhere (a `ray job submit` log, a file, CI) a
stage prints a line when it starts, one a minute while it runs, and one when it ends. Ray's own progress
bars and its 10-second operator dumps are off unless --verbose (jobs/runtime.quiet_ray): they count Ray Data
blocks per operator, which for one large file stays at 0/1 for minutes and whose totals jump as blocks split.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import TextIO

# A stage's line on a non-terminal: at most one a minute, so a day-long job logs about 1,500 lines.
LOG_EVERY_S = 60.0
REDRAW_EVERY_S = 0.5


class Progress:
    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None, enabled: bool = True):
        self._stream = stream  # None: whatever sys.stderr is when a line is written
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.enabled = enabled
        self._stage: _Stage | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    @contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "rows"):
        stage = _Stage(name, total, unit)
        self._stage = stage
        if self.enabled and not self.interactive:
            self._print(f"{name:<10}started" + (f" ({total:,} {unit})" if total is not None else ""))
        try:
            yield stage
        finally:
            stage.finished = time.perf_counter()
            if self.enabled:
                self._print(stage.line(done=True), final=True)
            self._stage = None

    def advance(self, count: int) -> None:
        """`count` more units of the current stage are done."""
        stage = self._stage
        if stage is None:
            return
        stage.done += count
        now = time.perf_counter()
        if not self.enabled:
            return
        if self.interactive and now - stage.last_shown >= REDRAW_EVERY_S:
            stage.last_shown = now
            self._print(stage.line(done=False))
        elif not self.interactive and now - stage.last_shown >= LOG_EVERY_S:
            stage.last_shown = now
            self._print(stage.line(done=False))

    def _print(self, line: str, final: bool = False) -> None:
        if self.interactive:
            end = "\n" if final else ""
            self.stream.write(f"\r\033[K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class _Stage:
    def __init__(self, name: str, total: int | None, unit: str):
        self.name, self.total, self.unit = name, total, unit
        self.done = 0
        self.started = time.perf_counter()
        self.last_shown = self.started
        self.finished: float | None = None

    def line(self, done: bool) -> str:
        elapsed = (self.finished or time.perf_counter()) - self.started
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{count} {self.unit}"]
        if self.done:
            parts.append(f"{rate:,.0f} {self.unit}/s" if rate >= 10 else f"{rate:,.1f} {self.unit}/s")
        if done:
            parts.append(f"done in {_duration(elapsed)}")
        else:
            parts.append(_duration(elapsed))
            if self.total and self.done and self.done < self.total:
                parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return f"{self.name:<10}" + "  ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# The job's display: set by the command line (run_command), a silent one otherwise (library use, tests).
_current = Progress(enabled=False)


def current() -> Progress:
    return _current


@contextmanager
def using(progress: Progress):
    """`progress` is the job's display inside the `with` block; the one before it afterwards."""
    global _current
    previous, _current = _current, progress
    try:
        yield progress
    finally:
        _current = previous
