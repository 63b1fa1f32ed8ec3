"""What a new user sees: fast refusals with nothing written, exit statuses that mean something, rejections
that say what to do, a quiet default run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import cli
from operators import schema

ROOT = Path(__file__).resolve().parents[1]
CONV = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def chatsieve(*args, timeout=120, **env):
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
    )


def test_help_imports_neither_ray_nor_torch():
    probe = ("import sys\nfrom jobs.cli import main\ntry:\n    main(['prepare', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('ray', 'torch', 'faiss', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--embed-block-rows" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_mistyped_option_shows_the_subcommands_usage_and_the_closest_option():
    done = chatsieve("prepare", "--treshold", "0.9")
    assert done.returncode == 2
    assert "usage: chatsieve prepare" in done.stderr
    assert "unrecognized arguments: --treshold 0.9 (did you mean --threshold?)" in done.stderr


@pytest.mark.parametrize(
    "inputs, message",
    [
        (["{tmp}/missing"], "does not exist"),
        (["s3://AKIAEXAMPLE:secret@bucket/chats/"], "credentials in a URI"),
    ],
)
def test_a_refused_input_fails_before_ray_starts_and_writes_nothing(tmp_path, inputs, message):
    out = tmp_path / "out"
    started = time.time()
    done = chatsieve("prepare", "--input", *[i.format(tmp=tmp_path) for i in inputs], "--output", str(out))
    assert done.returncode == 2 and message in done.stderr
    assert time.time() - started < 10
    assert "Ray" not in done.stderr and not out.exists()
    assert "secret" not in done.stderr


def test_a_python_tag_in_the_config_file_is_refused_in_one_line(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("max_tokens: !!python/object/apply:os.system ['echo owned']\n")
    done = chatsieve("prepare", "--config", str(config), "--output", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"chatsieve: {config} (line 1): not a plain YAML mapping of options: could not determine a constructor "
        "for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"]
    assert "owned" not in done.stdout and not (tmp_path / "out").exists()


def test_a_run_that_keeps_nothing_writes_its_audit_and_exits_3(ray_local, data_context, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "table.csv").write_text("question,answer\nhi,hello\n2+2,4\n")
    (tmp_path / "in" / "empty.jsonl").write_text("")
    (tmp_path / "in" / "questions.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}))
    out = tmp_path / "out"
    rc = cli.main(["prepare", "--input", str(tmp_path / "in" / "table.csv"), str(tmp_path / "in" / "empty.jsonl"),
                   str(tmp_path / "in" / "questions.jsonl"), "--output", str(out), "--tokenize-actors", "1"])
    captured = capsys.readouterr()
    assert rc == 3
    assert captured.err.strip().splitlines()[-1] == (
        "chatsieve: no row was kept (invalid_json 3, no_assistant_turn 1); removed/ and rejected/ say why row by row")
    assert (out / "_SUCCESS").exists() and pq.read_table(out / "rejected").num_rows == 3
    # An empty data/ shard has the features, and loads with datasets (streaming: datasets refuses an
    # empty split otherwise).
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train", streaming=True)
    assert list(loaded) == [] and set(loaded.features) == set(schema.DATA_SCHEMA.names)


def test_a_conversation_under_another_name_is_rejected_with_the_flag_that_reads_it(
    ray_local, data_context, tmp_path, capsys
):
    arena = {"question_id": "q1", "model_a": "a", "model_b": "b", "winner": "model_a",
             "conversation_a": CONV["messages"], "conversation_b": CONV["messages"]}
    (tmp_path / "arena.jsonl").write_text(json.dumps(arena) + "\n")
    rc = cli.main(["prepare", "--input", str(tmp_path / "arena.jsonl"), "--output", str(tmp_path / "out"),
                   "--no-dedup", "--tokenize-actors", "1"])
    printed = capsys.readouterr().out
    assert rc == 3
    [row] = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    assert row["error"] == schema.UNKNOWN_FORMAT
    assert "field 'conversation_a' looks like a conversation: pass --messages-field conversation_a" in row["detail"]
    # The end-of-run summary groups rejections with one example, suggestion included.
    assert "rejected rows, by error (one example each):" in printed
    assert "unknown_format" in printed and "--messages-field conversation_a" in printed
    rc = cli.main(["prepare", "--input", str(tmp_path / "arena.jsonl"), "--output", str(tmp_path / "fixed"),
                   "--no-dedup", "--tokenize-actors", "1", "--messages-field", "conversation_a"])
    assert rc == 0 and pq.read_table(tmp_path / "fixed" / "data").num_rows == 1


def test_a_default_run_is_quiet_and_says_what_it_does(tmp_path):
    # The default sample run, smaller: the number of lines does not grow with the rows (one a minute at most).
    ray_dir = tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp")  # short: Ray's socket paths are bounded
    try:
        done = chatsieve("prepare", "--output", str(tmp_path / "out"), "--sample-rows", "120",
                         "--embed-max-tokens", "64", "--address", "local", timeout=600, RAY_TMPDIR=ray_dir)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    text = "\n".join(lines)
    for noise in ("Token authentication", "core_worker", "logging_progress", "streaming_executor", "Loading weights",
                  "UserWarning"):
        assert noise not in text
    for stage in ("read", "embed", "search", "sort", "write"):
        assert any(line.startswith(f"{stage:<10}") and "done in" in line for line in lines), stage
    assert "read 120 = kept" in done.stdout


def test_a_bad_sample_option_is_refused_in_one_line(tmp_path, capsys):
    assert cli.main(["sample", "--rows", "30", "--output", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "chatsieve: --rows must be at least 100 so every planted kind fits; got 30"]
    assert not (tmp_path / "s").exists()
