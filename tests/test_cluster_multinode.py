"""Several nodes: the actor pools spread over more than one node, and the output equals a single-node run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import prepare
from jobs.config import PrepareConfig
from jobs.sample import SampleConfig, write_sample
from tests.test_prepare_job import read_dir

pytestmark = pytest.mark.cluster
SCRIPT = Path(__file__).with_name("multinode_job.py")
REPO = Path(__file__).resolve().parents[1]


def test_three_nodes_spread_actors_and_match_a_local_run(ray_local, tmp_path):
    inputs = tmp_path / "in"
    write_sample(inputs, SampleConfig(rows=200, shards=2, seed=5))
    options = {"input": [str(inputs)], "tokenize_actors": 2, "embed_actors": 2, "index_shards": 2}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps({**options, "output": str(tmp_path / "multi")})],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
    report = json.loads(line[len("RESULT "):])
    assert report["nodes"] == 3
    for stage in ("MapWorker(MapBatches(Tokenize))", "MapWorker(MapBatches(EmbedToStore))", "IndexShard"):
        nodes = {a["node"] for a in report["actors"] if a["class"] == stage}
        assert len(nodes) > 1, f"{stage} ran on {len(nodes)} node(s)"

    local = prepare.run(PrepareConfig.from_options({**options, "output": str(tmp_path / "local")}))
    assert report["rows"] == local["rows"]
    for subdir in ("data", "rejected"):
        ours, theirs = read_dir(tmp_path / "multi", subdir), read_dir(tmp_path / "local", subdir)
        assert len(ours) == len(theirs) and all(a.equals(b) for a, b in zip(ours, theirs)), subdir
    multi = [r for t in read_dir(tmp_path / "multi", "removed") for r in t.to_pylist()]
    single = [r for t in read_dir(tmp_path / "local", "removed") for r in t.to_pylist()]
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in multi] == [
        (r["id"], r["reason"], r["duplicate_of"]) for r in single
    ]
    for a, b in zip(multi, single):
        if a["similarity"] is not None:
            assert abs(a["similarity"] - b["similarity"]) <= 1e-6
