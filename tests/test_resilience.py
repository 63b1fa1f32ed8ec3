"""The job survives what a long run over scraped data meets: pathological rows and files, a kill during
embedding (the rerun resumes), a Ray actor dying mid-job, and a second job on the same output."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import cli, prepare
from jobs.config import PrepareConfig
from jobs.sample import SampleConfig, write_sample
from jobs.vectors import VectorStore
from operators import schema
from operators.write import LOCK, Output

ROOT = Path(__file__).resolve().parents[1]
CONV = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "Paris."}]}
DEEP = "[" * 10_000 + "]" * 10_000


def conv(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question number {i}: how do I sort a list?"},
                         {"role": "assistant", "content": f"Answer {i}: use sorted(items) or items.sort()."}]}


# --- one job over a corpus holding every bad case -------------------------------------------------------


def write_corpus(root: Path) -> dict[str, dict[str, int]]:
    """Every case of the issue in one input tree; returns per source the rows expected per status."""
    root.mkdir(parents=True)
    lines = [json.dumps(conv(0)), '{"messages": ' + DEEP + "}",
             '{"messages": [{"role": "user", "content": "x\\ud800"}, {"role": "assistant", "content": "y"}]}',
             json.dumps(conv(1)), "{not json"]
    (root / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    (root / "bom_array.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([conv(2), conv(3), conv(4)], indent=2).encode())
    (root / "pretty.json").write_text(json.dumps(conv(5), indent=2))
    (root / "deep_element.json").write_text("[" + json.dumps(conv(6)) + ', {"messages": ' + DEEP + "}, "
                                            + json.dumps(conv(7)) + "]")
    (root / "empty.jsonl").write_text("")
    body = gzip.compress(("\n".join(json.dumps(conv(10 + i)) for i in range(400)) + "\n").encode())
    (root / "cut.jsonl.gz").write_bytes(body[: len(body) // 2])
    (root / "sub").mkdir()
    (root / "sub" / "plain.jsonl").write_text(json.dumps(conv(8)) + "\n" + json.dumps(CONV) + "\n")
    os.symlink(".", root / "sub" / "self")  # read 41 times before
    os.symlink(root / "sub", root / "again")  # the same directory under a second name
    return {
        "corpus/mixed.jsonl": {"kept": 2, "rejected": 3},
        "corpus/bom_array.json": {"kept": 3},
        "corpus/pretty.json": {"kept": 1},
        "corpus/deep_element.json": {"kept": 2, "rejected": 1},
        "corpus/sub/plain.jsonl": {"kept": 2},
    }


def test_one_job_over_every_bad_case_finishes_and_accounts_per_file(ray_local, data_context, tmp_path, capsys):
    expected = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    rc = cli.main(["prepare", "--input", str(tmp_path / "corpus"), "--output", str(out), "--no-dedup",
                   "--tokenize-actors", "1"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "_SUCCESS").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    by_source = manifest["rows"]["by_source"]
    gz = by_source.pop("corpus/cut.jsonl.gz")
    assert gz["rejected"] == 1 and gz["kept"] > 50  # the lines before the damage, one row for the rest
    assert {s: {k: v for k, v in c.items() if v} for s, c in by_source.items()} == expected
    rows = manifest["rows"]
    assert rows["read"] == rows["kept"] + rows["removed"] + rows["rejected"]
    rejected = {(r["source"], r["source_row"]): r for t in tables(out, "rejected") for r in t.to_pylist()}
    errors = {key: r["error"] for key, r in rejected.items()}
    assert errors == {
        ("corpus/mixed.jsonl", 1): schema.TOO_DEEPLY_NESTED,
        ("corpus/mixed.jsonl", 2): schema.INVALID_UNICODE,
        ("corpus/mixed.jsonl", 4): schema.INVALID_JSON,
        ("corpus/deep_element.json", 1): schema.TOO_DEEPLY_NESTED,
        ("corpus/cut.jsonl.gz", gz["kept"]): schema.TRUNCATED_FILE,
    }
    assert all(r["detail"] and r["raw"] for r in rejected.values())
    assert {(s["path"], s["reason"]) for s in manifest["inputs_skipped"]} == {
        ("corpus/again", "directory already read as corpus/sub"),
        ("corpus/sub/self", "directory already read as corpus/sub"),
    }
    # Nothing of this machine's paths beyond what was typed: the typed input is the only one.
    text = (out / "manifest.json").read_text() + (out / "report" / "report.html").read_text()
    assert text.count(str(tmp_path)) == text.count(str(tmp_path / "corpus")) + text.count(str(out))
    assert str(out) not in (out / "report" / "report.html").read_text()


def tables(out, subdir):
    return [pq.read_table(f) for f in sorted((Path(out) / subdir).glob("*.parquet"))]


# --- a job run as a user runs it: its own process, its own Ray --------------------------------------------


class JobProcess:
    """`python -m jobs.cli prepare ...` in its own session with its own local Ray (temp dir of its own), so a
    test can kill the whole of it, and nothing it started outlives the test."""

    def __init__(self, args: list[str], log: Path):
        self.ray_dir = tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp")  # short: Ray's socket paths are bounded
        env = dict(os.environ, RAY_TMPDIR=self.ray_dir, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "prepare", "--address", "local", *args], cwd=ROOT, env=env,
            start_new_session=True, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL to every process of the job's session: the driver, Ray's daemons, every worker."""
        for pid in session_pids(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        deadline = time.time() + 30
        while session_pids(self.process.pid) and time.time() < deadline:
            time.sleep(0.2)

    def close(self) -> None:
        if self.process.poll() is None or session_pids(self.process.pid):
            self.kill()
        subprocess.run(["rm", "-rf", self.ray_dir], check=False)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.fixture
def job_processes():
    started: list[JobProcess] = []

    def start(args, log):
        job = JobProcess(args, log)
        started.append(job)
        return job

    yield start
    for job in started:  # a failing test leaves no Ray behind
        job.close()


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def vector_files(out: Path) -> list[Path]:
    return sorted((out / "_work" / "vectors").glob("*/part-*.parquet"))


def rows_by_id(out: Path, subdir: str) -> dict[str, dict]:
    return {r["id"]: r for t in tables(out, subdir) for r in t.to_pylist()}


def assert_same_result(a: Path, b: Path) -> None:
    """Equal by content (sorted by id), similarities within 1e-6 (docs/architecture.md, "Same input")."""
    for subdir in ("data", "rejected"):
        assert rows_by_id(a, subdir) == rows_by_id(b, subdir), subdir
    removed_a, removed_b = rows_by_id(a, "removed"), rows_by_id(b, "removed")
    assert removed_a.keys() == removed_b.keys()
    for key, row in removed_a.items():
        other = removed_b[key]
        assert (row["reason"], row["duplicate_of"]) == (other["reason"], other["duplicate_of"]), key
        if row["similarity"] is not None:
            assert abs(row["similarity"] - other["similarity"]) <= 1e-6


SAMPLE_ROWS = 300
# Every text in fp32 (--embed-prefilter none) on any CPU: one vectors store, whose resume these tests follow (with
# the default on a bf16 CPU a second, fp32 store holds only the confirmed texts).
JOB_OPTIONS = ["--sample-rows", str(SAMPLE_ROWS), "--embed-max-tokens", "128", "--embed-block-rows", "16",
               "--tokenize-actors", "1", "--embed-prefilter", "none"]


def in_process(out: Path, **extra) -> dict:
    options = {"input": ["sample"], "output": str(out), "sample_rows": SAMPLE_ROWS, "embed_max_tokens": 128,
               "embed_block_rows": 16, "tokenize_actors": 1, "embed_prefilter": "none", **extra}
    return prepare.run(PrepareConfig.from_options(options))


@pytest.fixture(scope="module")
def clean_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    return out, in_process(out)


def test_a_job_killed_during_embedding_resumes_without_embedding_again(
    clean_run, data_context, tmp_path, job_processes
):
    out = tmp_path / "out"
    job = job_processes(["--output", str(out), *JOB_OPTIONS], tmp_path / "killed.log")
    # Killed once some blocks are stored, well before all are.
    wait_for(lambda: len(vector_files(out)) >= 2, 300, "two embedded blocks")
    job.kill()
    assert not (out / "_SUCCESS").exists()
    [settings_dir] = {f.parent for f in vector_files(out)}
    store = VectorStore(Output(str(out)), settings_dir.name)
    stored_before = set(store.stored_hashes().to_pylist())
    clean_out, clean = clean_run
    total = clean["dedup"]["vectors"]["rows"]
    assert 0 < len(stored_before) < total

    resumed = in_process(out)  # the same job: resumes the unfinished output (its lock is stale)
    vectors = resumed["dedup"]["vectors"]
    assert vectors["rows"] == total
    assert vectors["embedded"] == total - len(stored_before) < total
    assert_same_result(out, clean_out)
    assert resumed["rows"] == clean["rows"]


def test_a_rerun_after_adding_rows_embeds_only_the_new_texts(clean_run, tmp_path):
    clean_out, clean = clean_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(clean_out), str(copy)], check=True)
    inputs = tmp_path / "grown" / "sample"
    inputs.parent.mkdir()
    subprocess.run(["cp", "-a", str(clean_out / "_work" / "sample"), str(inputs)], check=True)
    added = 20  # 5% more rows, each with a text no earlier row had
    (inputs / "added.jsonl").write_text("".join(json.dumps(conv(1000 + i)) + "\n" for i in range(added)))
    grown = in_process(copy, input=[str(inputs)], overwrite=True)
    vectors = grown["dedup"]["vectors"]
    assert (vectors["embedded"], vectors["rows"]) == (added, clean["dedup"]["vectors"]["rows"] + added)
    assert grown["rows"]["read"] == clean["rows"]["read"] + added


def ray_worker_pids(title: str) -> list[int]:
    """This test session's Ray worker processes whose title (Ray sets it per actor) holds `title`."""
    own = os.getsid(0)
    found = []
    for pid in session_pids(own):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if title.encode() in cmdline.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_actors_killed_mid_job_are_restarted_and_the_result_is_unchanged(clean_run, data_context, tmp_path):
    out = tmp_path / "out"
    outcome: dict = {}

    def job():
        try:
            outcome["manifest"] = in_process(out, tokenize_batch_size=8)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    try:
        killed = []
        for title, ready in (("MapBatches(Tokenize)", lambda: True),
                             ("MapBatches(EmbedToStore)", lambda: len(vector_files(out)) >= 1)):
            pids = wait_for(lambda t=title, r=ready: r() and ray_worker_pids(t), 300, f"a {title} actor")
            time.sleep(0.5)  # let it take a batch
            os.kill(pids[0], signal.SIGKILL)
            killed.append(title)
        thread.join(timeout=600)
        assert not thread.is_alive(), "the job did not finish after its actors were killed"
    finally:
        thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert killed == ["MapBatches(Tokenize)", "MapBatches(EmbedToStore)"]
    clean_out, clean = clean_run
    assert outcome["manifest"]["rows"] == clean["rows"]
    assert_same_result(out, clean_out)


def test_a_second_job_on_the_same_output_exits_at_once(tmp_path, job_processes):
    out = tmp_path / "out"
    first = job_processes(["--output", str(out), "--sample-rows", "600", "--no-dedup"], tmp_path / "first.log")
    wait_for(lambda: (out / LOCK).exists(), 120, "the first job's lock")
    for extra in ([], ["--overwrite"]):
        started = time.time()
        second = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "prepare", "--output", str(out), "--sample-rows", "600",
             "--no-dedup", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert second.returncode == 2, second.stderr
        assert "is being written by another chatsieve job" in second.stderr
        assert time.time() - started < 30  # no Ray started, nothing waited for
    assert first.wait(timeout=600) == 0, first.log.read_text()[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["read"] == 600  # not every row twice
    assert not (out / LOCK).exists()


# --- a full disk ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only, as in CI): room for the lock, not for the rows."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_in_one_line_and_the_rerun_finishes(ray_local, data_context, tmp_path, small_disk, capsys):
    inputs = tmp_path / "in"
    write_sample(inputs, SampleConfig(rows=600, shards=2, seed=3))
    out = small_disk / "out"
    args = ["prepare", "--input", str(inputs), "--output", str(out), "--no-dedup", "--tokenize-actors", "1"]
    assert cli.main(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"chatsieve: failed: no space left on the device under {out}")
    assert not (out / "_SUCCESS").exists() and not (out / LOCK).exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert cli.main(args) == 0
    assert json.loads((out / "manifest.json").read_text())["rows"]["read"] == 600
