"""What every benchmark records about the machine it ran on: cores, memory, load, peak RSS.

These machines are shared and noisy: the load average at start and end says how much to trust
wall-clock numbers, and why the benchmarks report ratios against a baseline run side by side.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
from pathlib import Path


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def meminfo_gib(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    cpu = None
    try:
        cpu = next(
            (l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
             if l.startswith("model name")),
            None,
        )
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "mem_total_gib": meminfo_gib("MemTotal"),
        "mem_available_gib_at_start": meminfo_gib("MemAvailable"),
        "python": platform.python_version(),
    }


def write_report(report: dict, out: str | Path) -> None:
    """Write a benchmark's JSON (pretty, newline-terminated) and say where, how long, under what load."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['wall_s']} s, load {report['machine']['load_at_start']} -> "
          f"{report['machine']['load_at_end']})", flush=True)


def report_header(benchmark: str, started_at: str, load_start: list[float], repo: Path) -> dict:
    """The fields every benchmark's JSON starts with: name, command line (relative to the repo), date, machine."""
    script = os.path.relpath(sys.argv[0], repo)
    return {
        "benchmark": benchmark,
        "command": "python " + " ".join(shlex.quote(a) for a in [script, *sys.argv[1:]]),
        "date": started_at,
        "machine": {**machine(), "load_at_start": load_start, "load_at_end": loadavg(), "peak_rss_mb": peak_rss_mb()},
    }


class BenchmarkRun:
    """One benchmark's run: started when made (date, load, clock), written once with `write`, which puts the
    common header first (report_header), then the benchmark's own fields, then the run's wall time."""

    def __init__(self, benchmark: str, repo: Path):
        import datetime as dt
        import time

        self.benchmark, self.repo, self._clock = benchmark, repo, time.perf_counter
        self.started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.load_start = loadavg()
        self.started = self._clock()

    def write(self, out: str | Path, **fields) -> dict:
        report = {
            **report_header(self.benchmark, self.started_at, self.load_start, self.repo),
            **fields,
            "wall_s": round(self._clock() - self.started, 1),
        }
        write_report(report, out)
        return report
