"""Run a chatsieve job as a subprocess and sample the memory of its whole process tree (driver, raylet,
GCS, workers) from /proc: the part of scaling.py's job runs that end_to_end.py shares.

A sampler thread reads every `interval` s the driver's RSS, the RSS summed over its descendants, the
process count and MemAvailable; every `pss_every` samples also the tree's PSS (RSS counts a shared page
in full in every process that maps it; PSS splits it, so it is what the job really occupies). The
driver's "stage NAME ..." / "stage NAME done" log lines name the stage each sample belongs to.
psutil is not a dependency, so all of it comes from /proc.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

from machine import meminfo_gib

REPO = Path(__file__).resolve().parent.parent
# The job's progress display off a terminal (jobs/progress.py): "<stage>  started ..." and "<stage> ... done in ...".
STAGE_LINE = re.compile(r"^(\S+)\s+(started|.*done in )")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def process_table() -> tuple[dict[int, list[int]], dict[int, int]]:
    """(children by parent pid, CPU clock ticks used so far by pid) of every process, from /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path("/proc", entry.name, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return children, ticks


def descendants(root: int, children: dict[int, list[int]]) -> list[int]:
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def rss_kb(pid: int) -> int:
    try:
        return int(Path("/proc", str(pid), "statm").read_text().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def rss_parts_kb(pid: int) -> dict[str, int]:
    """RssAnon (the process's own heap) and RssShmem (shared memory it has touched: for a Ray driver, pages of
    the object store it read blocks from, which RSS counts though the store owns them)."""
    parts = {}
    try:
        for line in Path("/proc", str(pid), "status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssShmem:")):
                name, value = line.split(":", 1)
                parts[name] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return parts


def pss_kb(pid: int) -> int:
    try:
        for line in Path("/proc", str(pid), "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_name(pid: int) -> str:
    """A process's title, shortened: Ray workers name themselves (`ray::MapWorker(MapBatches(Tokenize))`,
    `ray::IDLE`), Ray's daemons by their executable, Python scripts by their module or script."""
    try:
        argv = Path("/proc", str(pid), "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return " ".join(words)[:80]
    name = os.path.basename(words[0])
    if name.startswith("python") and len(words) > 1:
        rest = words[2] if words[1] == "-m" and len(words) > 2 else os.path.basename(words[1])
        return f"python {rest}"[:80]
    return name[:80]


def mem_available_mb() -> float | None:
    gib = meminfo_gib("MemAvailable")
    return None if gib is None else round(gib * 1024)


class TreeSampler(threading.Thread):
    """Samples the driver's and its process tree's memory every `interval` s until stop()."""

    def __init__(self, pid: int, interval: float, pss_every: int):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_every = pid, interval, max(1, pss_every)
        self.stage = "startup"  # set by the log reader from the driver's "stage NAME" lines
        self.samples: list[dict] = []
        self.events: list[dict] = []
        self.cpu_ticks: dict[int, int] = {}  # last seen per process of the tree: their sum is the tree's CPU
        self.started = time.perf_counter()
        self.cpu_s = 0.0
        self.peak_tree_rss_mb, self.peak_breakdown = 0.0, []
        self._done = threading.Event()

    def sample(self) -> dict:
        children, ticks = process_table()
        tree = descendants(self.pid, children)
        self.cpu_ticks.update((pid, ticks[pid]) for pid in tree if pid in ticks)
        # PSS reads every mapping of a process (~1-3 ms each for Ray's workers): only every pss_every-th sample.
        with_pss = len(self.samples) % self.pss_every == 0
        rss = {pid: rss_kb(pid) for pid in tree}
        tree_rss_mb = round(sum(rss.values()) / 1024, 1)
        if tree_rss_mb > self.peak_tree_rss_mb:  # who holds the memory at the peak
            self.peak_tree_rss_mb = tree_rss_mb
            self.peak_breakdown = sorted(
                ({"process": process_name(pid), "rss_mb": round(kb / 1024, 1)} for pid, kb in rss.items()),
                key=lambda entry: -entry["rss_mb"],
            )
        driver_parts = rss_parts_kb(self.pid)
        return {
            "t": round(time.perf_counter() - self.started, 1),
            "stage": self.stage,
            "driver_rss_mb": round(rss_kb(self.pid) / 1024, 1),
            "driver_anon_mb": round(driver_parts.get("RssAnon", 0) / 1024, 1),
            "driver_shmem_mb": round(driver_parts.get("RssShmem", 0) / 1024, 1),
            "tree_rss_mb": tree_rss_mb,
            "tree_pss_mb": round(sum(pss_kb(p) for p in tree) / 1024, 1) if with_pss else None,
            "processes": len(tree),
            "mem_available_mb": mem_available_mb(),
        }

    def mark(self, stage: str, event: str) -> None:
        """A stage boundary: the driver's RSS right now, and the stage later samples belong to."""
        self.stage = stage if event == "start" else f"after_{stage}"
        self.events.append({
            "t": round(time.perf_counter() - self.started, 1), "stage": stage, "event": event,
            "driver_rss_mb": round(rss_kb(self.pid) / 1024, 1),
        })

    def run(self) -> None:
        cpu_started = time.thread_time()
        while not self._done.is_set():
            self.samples.append(self.sample())
            self._done.wait(self.interval)
        self.cpu_s = time.thread_time() - cpu_started

    def stop(self) -> None:
        self._done.set()
        self.join()

    @property
    def tree_cpu_s(self) -> float:
        """CPU time of every process seen in the tree, up to its last sample (a process's last < interval
        s, and processes that lived less than that, are missed)."""
        return sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")


def follow_log(stream, log_path: Path, sampler: TreeSampler) -> None:
    """Copy the driver's output to a file, and tell the sampler where the job is."""
    with open(log_path, "w") as log:
        for line in stream:
            log.write(line)
            match = STAGE_LINE.search(line)
            if match:
                sampler.mark(match.group(1), "start" if match.group(2) == "started" else "done")


def per_stage_memory(samples: list[dict], events: list[dict]) -> dict:
    """Peaks per stage (None where no sample fell in it: stages shorter than the interval), and the
    driver's RSS at each stage's start and end (read when its log line appeared)."""
    stages: dict[str, dict] = {}

    def entry(stage: str) -> dict:
        return stages.setdefault(stage, {"samples": 0, "driver_peak_rss_mb": None, "driver_peak_anon_mb": None,
                                         "tree_peak_rss_mb": None, "tree_peak_pss_mb": None,
                                         "min_mem_available_mb": None})

    def peak(record: dict, key: str, value, pick=max) -> None:
        if value is not None:
            record[key] = value if record[key] is None else pick(record[key], value)

    entry("startup")
    for e in events:
        entry(e["stage"])[f"driver_rss_at_{e['event']}_mb"] = e["driver_rss_mb"]
    for s in samples:
        record = entry(s["stage"])
        record["samples"] += 1
        peak(record, "driver_peak_rss_mb", s["driver_rss_mb"])
        peak(record, "driver_peak_anon_mb", s.get("driver_anon_mb"))
        peak(record, "tree_peak_rss_mb", s["tree_rss_mb"])
        peak(record, "tree_peak_pss_mb", s["tree_pss_mb"])
        peak(record, "min_mem_available_mb", s["mem_available_mb"], min)
    return stages


def wait_for(proc: subprocess.Popen, timeout_s: float | None) -> int:
    """The driver's exit code; past the timeout it is stopped (SIGTERM lets Ray shut its processes down)."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"  job ran past {timeout_s} s: stopping it", flush=True)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return -1


def run_sampled(command: list[str], log_path: Path, args) -> tuple[int, float, TreeSampler]:
    """Run the driver, sampling its process tree; (exit code, wall s, the sampler)."""
    # A fresh local Ray: never another user's instance, and every Ray process a descendant of the driver.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors="replace")
    sampler = TreeSampler(proc.pid, args.interval, args.pss_every)
    sampler.start()
    reader = threading.Thread(target=follow_log, args=(proc.stdout, log_path, sampler), daemon=True)
    reader.start()
    try:
        returncode = wait_for(proc, args.job_timeout_s)
    finally:
        if proc.poll() is None:  # interrupted: do not leave the job running
            proc.terminate()
            proc.wait()
        sampler.stop()
        reader.join(timeout=30)
    return returncode, time.perf_counter() - started, sampler


def memory_record(sampler: TreeSampler) -> dict:
    samples = sampler.samples

    def extreme(key: str, pick=max):
        return pick((s[key] for s in samples if s[key] is not None), default=None)

    return {
        "driver_peak_rss_mb": extreme("driver_rss_mb"),
        # The driver's own heap, and the object-store pages it touched (shared; RSS counts both).
        "driver_peak_anon_mb": extreme("driver_anon_mb"),
        "driver_peak_shmem_mb": extreme("driver_shmem_mb"),
        "tree_peak_rss_mb": extreme("tree_rss_mb"),
        "tree_peak_pss_mb": extreme("tree_pss_mb"),
        "min_mem_available_mb": extreme("mem_available_mb", min),
        "max_processes": extreme("processes"),
        "tree_peak_rss_by_process": sampler.peak_breakdown,
        "per_stage": per_stage_memory(samples, sampler.events),
    }
