"""What Ray itself costs in CPU while a Ray Data pipeline runs: the tax every chatsieve stage pays on this machine.

    python benchmarks/ray_overhead.py [--pipeline-s 60] [--block-sleeps 0.5,10] [--idle-s 30] [--out ...]

Why: inside the job, embedding runs about 15% slower than a bare `encode` of the same rows, while the
embedding stage called in one process, and the same stage in a Ray actor, both cost what `encode` costs
(results/embed_stage.json, RESULTS.md). What is left is Ray's own processes competing for the cores.
This measures them with nothing else to do: a fresh local Ray (as `chatsieve prepare` starts it: dashboard
included), and a pipeline shaped like the embed stage (a read, a 1-actor pool with the stage's CPU
reservation, blocks streamed through it) whose actor only sleeps. Every CPU second the process tree uses
is then Ray's: the driver's streaming executor, Ray Data's service actors (stats, autoscaling coordinator,
actor locations), the raylet, GCS, dashboard and agents, idle workers, and the actor's own per-block cost.

Windows, CPU time of every process in the tree read from /proc (every 0.25 s, so processes that exit inside
a window count up to their last reading):
  idle          Ray started and settled, no dataset running (--idle-s).
  pipeline_Ns   the sleeping pipeline from start to end (about --pipeline-s), its actor sleeping N s per
                block, for each N of --block-sleeps: 0.5 s shows the per-block costs at their worst, 10 s is
                closer to the embed stage (a 1,024-row block takes 10-30 s to embed on 2 cores).
Reported per window: the tree's CPU in cores (CPU s / wall s), the same as a share of the machine's cores,
and the CPU by role. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from machine import BenchmarkRun
from process_tree import descendants, process_table

ROLES = (  # (role, substrings of the command line), first match wins
    ("driver executor", ("ray_overhead.py",)),
    ("the stage's actor", ("MapWorker",)),
    ("Ray Data service actors", ("_StatsActor", "AutoscalingCoordinator", "ActorLocationTracker")),
    # Workers between tasks are titled ray::IDLE: their CPU is the read/map tasks, their start-up, and idling.
    ("task workers", ("ray::IDLE",)),
    ("raylet + GCS", ("raylet/raylet", "gcs/gcs_server")),
    ("dashboard + agents + monitors", ("dashboard", "Agent", "log_monitor", "monitor.py", "agent")),
)


def role(command: str) -> str:
    return next((name for name, keys in ROLES if any(k in command for k in keys)), "other")


def cpu_by_process() -> dict[int, tuple[float, str]]:
    """CPU seconds so far and the command line of every process in this process's tree."""
    children, ticks = process_table()
    per_tick = 1 / os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in descendants(os.getpid(), children):
        try:
            command = Path("/proc", str(pid), "cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        out[pid] = (ticks.get(pid, 0) * per_tick, command)
    return out


class LastSeen(threading.Thread):
    """Reads the tree every `interval` s and keeps each process's last reading: a process that exits
    inside the window (the stage's actor does, when the dataset ends) still counts, up to its last sample."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.seen = interval, cpu_by_process()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.seen.update(cpu_by_process())

    def stop(self) -> dict[int, tuple[float, str]]:
        self._done.set()
        self.join()
        self.seen.update(cpu_by_process())
        return self.seen


def window(name: str, run) -> dict:
    """Run `run()`, return the tree's CPU over it: total, per role, as cores and as a share of the machine."""
    before = cpu_by_process()
    sampler = LastSeen()
    started = time.perf_counter()
    sampler.start()
    run()
    after = sampler.stop()
    wall = time.perf_counter() - started
    roles: dict[str, float] = {}
    for pid, (cpu, command) in after.items():
        used = cpu - before.get(pid, (0.0, ""))[0]  # a process born inside the window counts from 0
        roles[role(command)] = roles.get(role(command), 0.0) + used
    total = sum(roles.values())
    cores = len(os.sched_getaffinity(0))
    print(f"{name}: {wall:.1f} s wall, tree CPU {total:.1f} s = {total / wall:.3f} cores "
          f"({100 * total / wall / cores:.1f}% of {cores})", flush=True)
    return {
        "wall_s": round(wall, 2),
        "tree_cpu_s": round(total, 2),
        "cores_used": round(total / wall, 4),
        "share_of_machine": round(total / wall / cores, 4),
        "cpu_s_by_role": {k: round(v, 2) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])},
    }


class SleepingStage:
    """A stage that costs no CPU of its own: every CPU second around it is Ray's."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, batch):
        time.sleep(self.seconds)
        return batch


def run_pipeline(blocks: int, block_sleep_s: float) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    from jobs.resources import IO_TASK_CPUS, plan_embed

    plan = plan_embed(ray.cluster_resources(), None, 1.0)
    ds = ray.data.range(blocks, override_num_blocks=blocks)
    ds = ds.map_batches(
        SleepingStage,
        fn_constructor_args=(block_sleep_s,),
        batch_size=None,
        compute=ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus_per_actor,
    )
    ds = ds.map_batches(lambda batch: batch, batch_size=None, num_cpus=IO_TASK_CPUS)
    count = ds.count()
    if count != blocks:
        raise RuntimeError(f"the pipeline returned {count} rows, expected {blocks}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-s", type=float, default=60.0, help="about how long the pipeline runs (default 60)")
    parser.add_argument("--block-sleeps", default="0.5,10",
                        help="seconds the actor sleeps per block, one pipeline each (default 0.5,10)")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle window (default 30)")
    parser.add_argument("--settle-s", type=float, default=10.0, help="wait after Ray starts (default 10)")
    parser.add_argument("--out", default=str(HERE / "results" / "ray_overhead.json"))
    args = parser.parse_args(argv)
    sleeps = [float(x) for x in args.block_sleeps.split(",") if x.strip()]
    run = BenchmarkRun("ray_overhead", REPO)

    import ray

    # A fresh local Ray whatever RAY_ADDRESS says: every Ray process is then a descendant of this one.
    os.environ["RAY_ADDRESS"] = "local"
    ray.init(log_to_driver=False)
    try:
        time.sleep(args.settle_s)
        windows = {"idle": window("idle", lambda: time.sleep(args.idle_s))}
        for sleep_s in sleeps:
            blocks = max(1, round(args.pipeline_s / sleep_s))
            windows[f"pipeline_{sleep_s:g}s"] = window(f"pipeline, {blocks} blocks of {sleep_s:g} s",
                                                        partial(run_pipeline, blocks, sleep_s))
    finally:
        ray.shutdown()
    settings = {"pipeline_s": args.pipeline_s, "idle_s": args.idle_s, "block_sleeps_s": sleeps, "ray": ray.__version__}
    run.write(args.out, settings=settings, windows=windows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
