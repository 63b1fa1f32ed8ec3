"""How many actors each stage gets, and how many CPUs each may reserve, from the cluster's resources.

The 2-core deadlock (docs/notes.md): read and write tasks need CPUs too. If the actor pools reserve every
CPU, the read never schedules and the job sits silently until Ray's no-progress timeout. So actors
share what is left after a fixed reserve for the I/O tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# CPUs kept free for the read, length-filter and write tasks (each asks for IO_TASK_CPUS), so one
# of each can always run next to the actor pools.
IO_TASK_CPUS = 0.25
IO_RESERVE_CPUS = 3 * IO_TASK_CPUS


@dataclass(frozen=True)
class StagePlan:
    actors: int
    cpus_per_actor: float


def _floor_unit(share: float) -> float:
    # Ray accounts CPUs in units of 1e-4; rounding a share up would overbook by a unit per actor.
    return math.floor(share * 1e4) / 1e4


def plan_tokenize(cluster_cpus: float, requested_actors: int | None, nodes: int = 1) -> StagePlan:
    """One tokenizer actor per whole CPU by default; every actor gets an equal share of what the
    I/O reserve leaves, at most one CPU (a fast tokenizer call is single-threaded per batch here).

    On several nodes the reserve is cluster-wide but actors pack node by node: fractional actors just
    under one CPU would leave every node a sliver too small for an I/O task. There, actors take whole
    CPUs and number one fewer than the CPUs, so a whole CPU stays free on some node."""
    if cluster_cpus <= IO_RESERVE_CPUS:
        raise ValueError(f"the Ray cluster has {cluster_cpus} CPUs; chatsieve needs more than {IO_RESERVE_CPUS}")
    if nodes > 1 and requested_actors is None and cluster_cpus >= 2:
        return StagePlan(actors=int(cluster_cpus) - 1, cpus_per_actor=1.0)
    actors = requested_actors or max(1, int(cluster_cpus))
    share = (cluster_cpus - IO_RESERVE_CPUS) / actors
    return StagePlan(actors=actors, cpus_per_actor=_floor_unit(min(1.0, share)))


@dataclass(frozen=True)
class EmbedPlan:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float  # 0 on a CPU-only cluster: a stage never asks for a GPU the cluster lacks
    device: str
    threads: int | None  # torch threads per CPU actor (Ray would otherwise pin OMP to 1 in fractional actors)


def plan_embed(
    cluster: dict, requested_actors: int | None, gpus_per_actor: float, node_cpus: float | None = None
) -> EmbedPlan:
    """GPUs present: one actor per `gpus_per_actor` GPUs (all of them by default), fp16 on cuda.
    CPU only: one actor using every core's threads (torch parallelises one big batch better than
    several actors share two cores), unless more are requested."""
    cpus, gpus = cluster.get("CPU", 1.0), cluster.get("GPU", 0.0)
    if gpus > 0:
        actors = requested_actors or max(1, int(gpus / gpus_per_actor))
        if actors * gpus_per_actor > gpus + 1e-9:
            # Actors that do not fit never start: the stage would wait for Ray's no-progress timeout.
            raise ValueError(
                f"{actors} embedding actors x {gpus_per_actor} GPUs need more than the cluster's {gpus} GPUs: "
                "lower --embed-actors or --embed-gpus-per-actor"
            )
        share = (cpus - IO_RESERVE_CPUS) / actors
        return EmbedPlan(actors, _floor_unit(max(0.0, min(1.0, share))), gpus_per_actor, "cuda", None)
    actors = requested_actors or 1
    share = (cpus - IO_RESERVE_CPUS) / actors
    if share <= 0:
        raise ValueError(f"the Ray cluster has {cpus} CPUs; embedding needs more than {IO_RESERVE_CPUS}")
    # The reservation is accounting, the threads are the real work: at most one CPU reserved, so an
    # actor fits a 1-CPU node of a multi-node cluster, but threads for a fair share of the cores.
    # `node_cpus` (the largest node's) bounds the threads: an actor's cores are all on one node.
    threads = max(1, min(int(cpus // actors), int(node_cpus or cpus)))
    return EmbedPlan(actors, _floor_unit(min(1.0, share)), 0.0, "cpu", threads)


def largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def plan_index_cpus(cluster_cpus: float, shards: int, requested: float | None) -> float:
    """CPUs each index shard actor reserves: fractional, so 4 shards fit on 2 cores (docs/notes.md)."""
    if requested is not None:
        return requested
    return _floor_unit(min(1.0, (cluster_cpus - IO_RESERVE_CPUS) / shards))


def every_node_has_bf16() -> bool:
    """Whether every alive node's CPU has bf16 units (OpenVINO's capabilities), asked on each node by a task that
    reserves no CPU: an embedding actor may land on any node, and bf16 on a CPU without them is an error."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from operators.embed_backends import cpu_has_bf16

    check = ray.remote(num_cpus=0, max_calls=1)(cpu_has_bf16)  # its worker exits: no idle process keeps OpenVINO
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    answers = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
               for node in nodes]
    return bool(nodes) and all(ray.get(answers))
