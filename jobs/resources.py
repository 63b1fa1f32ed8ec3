"""How many actors each stage gets, and how many CPUs each may reserve, from the cluster's resources.

The 2-core deadlock (NOTES.md): read and write tasks need CPUs too. If the actor pools reserve every
CPU, the read never schedules and the job sits silently until Ray's no-progress timeout. So actors
share what is left after a fixed reserve for the I/O tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

# CPUs kept free for the read, length-filter and write tasks (each asks for IO_TASK_CPUS), so one
# of each can always run next to the actor pools.
IO_TASK_CPUS = 0.25
IO_RESERVE_CPUS = 3 * IO_TASK_CPUS


@dataclass(frozen=True)
class StagePlan:
    actors: int
    cpus_per_actor: float


def plan_tokenize(cluster_cpus: float, requested_actors: int | None) -> StagePlan:
    """One tokenizer actor per whole CPU by default; every actor gets an equal share of what the
    I/O reserve leaves, at most one CPU (a fast tokenizer call is single-threaded per batch here)."""
    if cluster_cpus <= IO_RESERVE_CPUS:
        raise ValueError(f"the Ray cluster has {cluster_cpus} CPUs; chatsieve needs more than {IO_RESERVE_CPUS}")
    actors = requested_actors or max(1, int(cluster_cpus))
    share = (cluster_cpus - IO_RESERVE_CPUS) / actors
    return StagePlan(actors=actors, cpus_per_actor=round(min(1.0, share), 4))
