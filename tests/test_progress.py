"""The progress display: lines per stage off a terminal, one line redrawn in place on it."""

from __future__ import annotations

import io

from jobs import progress
from jobs.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_a_stage_prints_when_it_starts_once_a_minute_and_when_it_ends(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    display = Progress(out)
    with display.stage("embed", total=1000, unit="texts"):
        for _ in range(10):
            clock[0] += 15  # 150 s in all: two minute lines
            display.advance(100)
    lines = out.getvalue().splitlines()
    assert lines[0] == "embed     started (1,000 texts)"
    assert lines[1].startswith("embed     400/1,000 texts  6.7 texts/s  1 min 00 s  ETA 1 min 30 s")
    assert lines[2].startswith("embed     800/1,000 texts")
    assert lines[3] == "embed     1,000/1,000 texts  6.7 texts/s  done in 2 min 30 s"
    assert len(lines) == 4


def test_on_a_terminal_the_line_is_redrawn_in_place(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    out = Terminal()
    display = Progress(out)
    with display.stage("read"):
        for _ in range(3):
            clock[0] += 1
            display.advance(500)
    text = out.getvalue()
    assert text.count("\r\033[K") == 4 and text.count("\n") == 1  # 3 redraws + the final line
    assert text.endswith("\r\033[Kread      1,500 rows  500 rows/s  done in 3.0 s\n")


def test_a_disabled_display_prints_nothing():
    out = io.StringIO()
    display = Progress(out, enabled=False)
    with display.stage("read", total=3):
        display.advance(3)
    assert out.getvalue() == ""
