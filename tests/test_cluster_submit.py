"""`ray job submit` against a head started with `ray start --head` on loopback.

The head runs as `ray start --block` in its own process group with its own temp dir, and is always
stopped by terminating that process (a plain `ray stop` would also kill the test session's Ray).
Ray 2.60 turns token authentication on for local clusters: RAY_AUTH_MODE=disabled on both sides.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from jobs import prepare
from jobs.config import PrepareConfig
from jobs.sample import SampleConfig, write_sample
from tests.test_prepare_job import read_dir

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    dashboard = free_port()
    process = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
         "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         # Free ports for the head's agents too: their defaults collide with any other Ray on the machine.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError("the Ray head did not come up") from None
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            # Ray's graceful stop waits on each of its processes in turn (about 30 s here); the head's
            # temp dir is deleted below, so nothing of a graceful stop is kept: kill the group after 5 s.
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # also what stayed after `ray start` itself exited
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(address, env, *args):
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
               "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--", "python", "-m", "jobs.prepare", *args]
    deadline = time.time() + 120
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        # The dashboard answers before its job agent is ready; nothing was submitted yet, so retry.
        if "No available agent to submit job" not in result.stderr or time.time() > deadline:
            return result
        time.sleep(3)


def test_submitted_job_equals_a_local_run(head, ray_local, tmp_path):
    address, env = head
    inputs = tmp_path / "in"
    write_sample(inputs, SampleConfig(rows=200, shards=2, seed=11))
    result = submit(address, env, "--input", str(inputs), "--output", str(tmp_path / "job"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "read 200 = kept" in result.stdout  # the job's own summary reaches the submitter's logs
    assert (tmp_path / "job" / "_SUCCESS").exists()

    local = tmp_path / "local"
    prepare.run(PrepareConfig.from_options({"input": [str(inputs)], "output": str(local)}))
    for subdir in ("data", "rejected"):
        ours, theirs = read_dir(tmp_path / "job", subdir), read_dir(local, subdir)
        assert len(ours) == len(theirs) and all(a.equals(b) for a, b in zip(ours, theirs)), subdir
    job = [r for t in read_dir(tmp_path / "job", "removed") for r in t.to_pylist()]
    here = [r for t in read_dir(local, "removed") for r in t.to_pylist()]
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in job] == [
        (r["id"], r["reason"], r["duplicate_of"]) for r in here
    ]


def test_relative_output_in_a_submitted_job_fails_with_the_reason(head, tmp_path):
    address, env = head
    result = submit(address, env, "--output", "relative-out", "--no-dedup")
    assert result.returncode != 0
    assert "relative path inside a Ray job" in result.stdout + result.stderr
