"""Defaults derived from the cluster's resources (jobs/resources.py) for three clusters: a 2-core
laptop, one node with 8 GPUs and 64 CPUs, and four such nodes. No Ray needed.

The invariant (docs/notes.md, the 2-core deadlock): while a stage's actor pool holds its reservations, the
read, length-filter and write tasks (IO_TASK_CPUS each, IO_RESERVE_CPUS together) must still fit, or the
job hangs silently until Ray's no-progress timeout. Ray accounts resources in units of 1e-4, so the
sums here are exact at that granularity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from jobs.resources import IO_RESERVE_CPUS, IO_TASK_CPUS, plan_embed, plan_index_cpus, plan_tokenize

RAY_UNIT = 1e-4  # Ray's resource granularity


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[float, ...]  # CPUs per node that Ray may schedule on
    gpus: float

    @property
    def cpus(self) -> float:
        return sum(self.nodes)

    @property
    def resources(self) -> dict:
        return {"CPU": self.cpus, "GPU": self.gpus} if self.gpus else {"CPU": self.cpus}


LAPTOP = Cluster("laptop-2-cores", (2.0,), 0.0)
GPU_NODE = Cluster("1-node-64-cpus-8-gpus", (64.0,), 8.0)
GPU_NODES = Cluster("4-nodes-64-cpus-8-gpus", (64.0,) * 4, 32.0)
# cluster/kuberay-*.yaml: a head with num-cpus 0 and 4 pods of 8 CPUs and 1 GPU each.
KUBERAY = Cluster("kuberay-recipe-4x8-cpus-1-gpu", (8.0,) * 4, 4.0)

def tokenize_plan(cluster: Cluster, requested: int | None = None):
    return plan_tokenize(cluster.cpus, requested, nodes=len(cluster.nodes))


def fits(actors: int, cpus_per_actor: float, cluster: Cluster) -> bool:
    """Actors plus one of each I/O task fit in the cluster's CPUs, at Ray's granularity."""
    units = round(actors * round(cpus_per_actor / RAY_UNIT) + IO_RESERVE_CPUS / RAY_UNIT)
    return units <= round(cluster.cpus / RAY_UNIT)


def io_can_always_run(actors: int, cpus_per_actor: float, cluster: Cluster) -> bool:
    """Whatever node Ray puts each actor on, some node keeps room for an I/O task.

    Starvation needs every node i to hold k_i actors with cpus_i - k_i * c < IO_TASK_CPUS; node i holds
    at most floor(cpus_i / c) actors. If the fewest actors that starve every node exceed what the
    nodes hold, or exceed the pool, no placement starves the I/O tasks.
    """
    c = cpus_per_actor
    if c <= 0:
        return True
    starve, hold = 0, 0
    for node in cluster.nodes:
        most = math.floor(node / c + 1e-9)
        least = max(0, math.floor((node - IO_TASK_CPUS) / c + 1e-9) + 1)
        if least > most:
            return True  # this node always keeps room
        starve, hold = starve + least, hold + most
    return not (starve <= actors <= hold)


# --- tokenizer actors ------------------------------------------------------------------------------


def test_tokenize_defaults_one_actor_per_cpu():
    plan = tokenize_plan(LAPTOP)
    assert (plan.actors, plan.cpus_per_actor) == (2, 0.625)  # (2 - 0.75) / 2
    for cluster in (GPU_NODE, GPU_NODES, KUBERAY):
        plan = tokenize_plan(cluster)
        assert cluster.cpus - 1 <= plan.actors <= cluster.cpus and 0.95 <= plan.cpus_per_actor <= 1.0, cluster.name


@pytest.mark.parametrize(
    "cluster, requested",
    [
        (LAPTOP, None),
        (LAPTOP, 4),
        (KUBERAY, None),  # 31.25 / 32
        (GPU_NODE, None),
        (GPU_NODES, None),
        (GPU_NODES, 100),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_tokenize_reservations_leave_the_io_reserve(cluster, requested):
    plan = tokenize_plan(cluster, requested)
    assert fits(plan.actors, plan.cpus_per_actor, cluster)


@pytest.mark.parametrize(
    "cluster",
    [
        LAPTOP,
        GPU_NODE,
        (GPU_NODES),
        (KUBERAY),
    ],
    ids=lambda c: c.name,
)
def test_tokenize_pool_never_starves_the_reads_on_any_node(cluster):
    plan = tokenize_plan(cluster)
    assert io_can_always_run(plan.actors, plan.cpus_per_actor, cluster)


def test_a_cluster_too_small_for_the_io_reserve_is_refused():
    with pytest.raises(ValueError, match="CPUs"):
        plan_tokenize(IO_RESERVE_CPUS, None)


# --- embedding actors ------------------------------------------------------------------------------


def test_embed_on_the_laptop_is_one_cpu_actor_using_both_cores():
    plan = plan_embed(LAPTOP.resources, None, 1.0, node_cpus=2.0)
    assert (plan.actors, plan.gpus_per_actor, plan.device, plan.threads) == (1, 0.0, "cpu", 2)
    assert plan.cpus_per_actor == 1.0 and fits(plan.actors, plan.cpus_per_actor, LAPTOP)
    # Asking for GPU packing on a machine with none never asks Ray for a GPU.
    assert plan_embed(LAPTOP.resources, None, 0.25, node_cpus=2.0).gpus_per_actor == 0.0


@pytest.mark.parametrize(
    "cluster, gpus_per_actor, actors",
    [
        (GPU_NODE, 1.0, 8),
        (GPU_NODE, 0.25, 32),  # four small-model actors per GPU
        (GPU_NODES, 1.0, 32),
        (GPU_NODES, 0.25, 128),
        (KUBERAY, 1.0, 4),
    ],
    ids=str,
)
def test_embed_defaults_one_actor_per_gpu_share(cluster, gpus_per_actor, actors):
    plan = plan_embed(cluster.resources, None, gpus_per_actor, node_cpus=max(cluster.nodes))
    assert (plan.actors, plan.gpus_per_actor, plan.device, plan.threads) == (actors, gpus_per_actor, "cuda", None)
    assert plan.actors * plan.gpus_per_actor == cluster.gpus  # every GPU used, none over-asked
    # Whole actors per GPU: 1 / 0.25 = 4 on each, so Ray packs them without leftovers.
    assert (1 / gpus_per_actor).is_integer()
    assert plan.cpus_per_actor == 1.0 and fits(plan.actors, plan.cpus_per_actor, cluster)
    # Per node: its GPUs' actors and their CPUs fit on that node (nodes are alike here).
    per_node = plan.actors / len(cluster.nodes)
    assert per_node * plan.cpus_per_actor + IO_RESERVE_CPUS <= cluster.nodes[0]


def test_requested_embed_actors_are_honoured():
    plan = plan_embed(GPU_NODE.resources, 4, 1.0, node_cpus=64.0)
    assert (plan.actors, plan.gpus_per_actor) == (4, 1.0)


@pytest.mark.parametrize("requested, gpus_per_actor, gpus", [(16, 1.0, 8.0), (None, 2.0, 1.0)], ids=str)
def test_more_gpus_than_the_cluster_has_are_refused(requested, gpus_per_actor, gpus):
    with pytest.raises(ValueError, match="GPU"):
        plan_embed({"CPU": 64.0, "GPU": gpus}, requested, gpus_per_actor, node_cpus=64.0)


# --- index shard actors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cluster, shards, expected",
    [
        (LAPTOP, 1, 1.0),
        (LAPTOP, 2, 0.625),
        (LAPTOP, 4, 0.3125),  # four shards on two cores (docs/notes.md)
        (LAPTOP, 3, None),  # 0.4167 x 3
        (GPU_NODE, 4, 1.0),
        (GPU_NODES, 4, 1.0),
        (GPU_NODES, 64, 1.0),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_index_cpus_per_shard_fit_next_to_the_io_reserve(cluster, shards, expected):
    cpus = plan_index_cpus(cluster.cpus, shards, None)
    if expected is not None:
        assert cpus == expected
    assert 0 < cpus <= 1.0 and fits(shards, cpus, cluster)


def test_index_cpus_requested_are_used_as_given():
    assert plan_index_cpus(LAPTOP.cpus, 4, 0.1) == 0.1
