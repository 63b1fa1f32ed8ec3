"""Run the prepare job on a 3-node Ray cluster simulated on this machine; print where actors ran.

Used by tests/test_cluster_multinode.py in a subprocess (a process joins one Ray cluster, and the
test session already holds a local one). The head has no CPUs; two workers have one CPU each, so the
logical CPUs never exceed the machine's two (docs/notes.md) and every actor pool must span both workers.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ray  # noqa: E402
from ray._private import state  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.data import DataContext  # noqa: E402


def main(options: dict) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        DataContext.get_current().execution_no_progress_timeout_s = 300
        from jobs import prepare
        from jobs.config import PrepareConfig

        manifest = prepare.run(PrepareConfig.from_options(options))
        actors = [
            {"class": a["ActorClassName"], "node": a["Address"]["NodeID"]} for a in state.actors().values()
        ]
        print("RESULT " + json.dumps({"actors": actors, "nodes": len(ray.nodes()), "rows": manifest["rows"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
