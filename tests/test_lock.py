"""One job per output (jobs/lock.py) and the resume check of jobs/runtime.open_output, without Ray."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from jobs.lock import OutputLock, OutputLockedError
from jobs.runtime import JOB_FILE, open_output
from operators.write import LOCK, SUCCESS, WORK_DIR, Output, OutputExistsError


def snapshot(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, files in os.walk(root) for f in files
    )


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_held_lock_refuses_a_second_holder_and_is_released(tmp_path):
    output = Output(str(tmp_path / "out"))
    with OutputLock(output, "prepare"):
        record = json.loads((tmp_path / "out" / LOCK).read_text())
        assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(OutputLockedError, match=rf"being written by another chatsieve job \(pid {os.getpid()}"):
            OutputLock(output, "prepare").acquire()
    assert not (tmp_path / "out" / LOCK).exists()


def test_a_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    with caplog.at_level(logging.WARNING), OutputLock(Output(str(tmp_path / "out")), "prepare"):
        assert json.loads((tmp_path / "out" / LOCK).read_text())["pid"] == os.getpid()
    assert "no longer running" in caplog.text


def test_a_reused_pid_is_not_taken_for_the_dead_holder(tmp_path):
    # Our own pid, but another process start time: the holder died and the pid was reused.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK).write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "process_start": "1"}))
    with OutputLock(Output(str(tmp_path / "out")), "prepare"):
        pass


def test_a_lock_held_on_another_host_is_refused_with_advice(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(OutputLockedError, match=f"if that job is dead, delete {tmp_path}/out/{LOCK}"):
        OutputLock(Output(str(tmp_path / "out")), "prepare").acquire()


def test_a_running_job_makes_a_second_one_write_and_delete_nothing(tmp_path):
    out = tmp_path / "out"
    with open_output(str(out), False, {"command": "prepare", "config": {"a": 1}}) as output:
        (out / "_work" / "rows").mkdir()
        (out / "_work" / "rows" / "part.parquet").write_bytes(b"rows")
        before = snapshot(out)
        for overwrite in (False, True):
            with pytest.raises(OutputLockedError):
                with open_output(str(out), overwrite, {"command": "prepare", "config": {"a": 1}}):
                    pytest.fail("entered a locked output")
        assert snapshot(out) == before
        output.mark_success()
    assert not (out / LOCK).exists()


def test_an_unfinished_output_resumes_only_the_same_job(tmp_path):
    out = tmp_path / "out"
    job = {"command": "prepare", "config": {"dedup": {"threshold": 0.95}}}
    with pytest.raises(RuntimeError, match="killed"):
        with open_output(str(out), False, job):
            (out / WORK_DIR / "vectors").mkdir()
            (out / WORK_DIR / "vectors" / "part-1.parquet").write_bytes(b"finished work")
            raise RuntimeError("killed")
    assert json.loads((out / WORK_DIR / JOB_FILE).read_text()) == job and not (out / LOCK).exists()
    other = {"command": "prepare", "config": {"dedup": {"threshold": 0.9}}}
    with pytest.raises(OutputExistsError, match=r"dedup\.threshold: 0\.95 then, 0\.9 now.*rerun that job's command"):
        with open_output(str(out), False, other):
            pass
    with open_output(str(out), False, job):  # the same job resumes, its checkpoints kept
        assert (out / WORK_DIR / "vectors" / "part-1.parquet").exists()
    with open_output(str(out), True, other):  # --overwrite may change the job
        pass
    assert json.loads((out / WORK_DIR / JOB_FILE).read_text()) == other


def test_a_failed_first_run_leaves_no_output_behind_unless_it_finished_work(tmp_path):
    with pytest.raises(ValueError):
        with open_output(str(tmp_path / "new"), False, {"command": "prepare"}):
            raise ValueError("the tokenizer does not exist")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with open_output(str(tmp_path / "kept"), False, {"command": "prepare"}):
            raise ValueError("late failure")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / LOCK).exists()


def test_a_complete_output_is_refused_before_the_lock_is_taken(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / SUCCESS).write_text("")
    before = snapshot(out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with open_output(str(out), False, {"command": "prepare"}):
            pass
    assert snapshot(out) == before
