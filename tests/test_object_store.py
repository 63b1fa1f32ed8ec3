"""The prepare job reading from and writing to an S3 object store (moto's standalone server on loopback).

Endpoint and credentials reach pyarrow only through the standard environment variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), in the driver and in
every Ray worker. Ray workers inherit the environment the raylet had when `ray.init` ran, and the test
session's Ray (conftest.py's `ray_local`) may start before this module's first test: so the variables
are set when this module is imported, during collection, before any fixture runs. They name a loopback
port and fake keys, which no other test uses.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import socket
import threading

import pytest

pytest.importorskip("moto.server", reason="needs moto's standalone server: pip install 'moto[server]'")

import boto3  # noqa: E402  (moto depends on it)
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from jobs import prepare  # noqa: E402
from jobs.config import PrepareConfig  # noqa: E402
from jobs.sample import SampleConfig, write_sample  # noqa: E402
from operators import schema  # noqa: E402
from operators.discover import InputFile, discover_inputs  # noqa: E402
from operators.read import iter_records  # noqa: E402
from operators.write import LOCK, LAYOUT, WORK_DIR, Output, OutputExistsError  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
BUCKET = "chatsieve-test"
# Distinctive, so finding it anywhere (manifest, logs) can only mean a leak.
SECRET = "chatsieve-secret-" + secrets.token_hex(12)
ENV = {
    "AWS_ENDPOINT_URL": ENDPOINT,
    "AWS_ACCESS_KEY_ID": "chatsieve-test-key",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe 169.254.169.254 for credentials
}
os.environ.update(ENV)

MUTATING = ("PUT", "POST", "DELETE")
_REQUEST = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP')


class RequestLog(logging.Handler):
    """moto serves through werkzeug, which logs one line per request once it is answered: in order."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def emit(self, record):
        match = _REQUEST.search(record.getMessage())
        if match:
            with self._lock:
                self.requests.append((match.group(1), match.group(2)))


class TextLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.stream = io.StringIO()

    def emit(self, record):
        self.stream.write(self.format(record) + "\n")


@pytest.fixture(scope="module")
def s3():
    werkzeug = logging.getLogger("werkzeug")
    log = RequestLog()
    saved = (werkzeug.level, werkzeug.propagate)
    werkzeug.addHandler(log)
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # one line per request: keep them out of pytest's report
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=PORT, verbose=False)
    server.start()
    try:
        client = boto3.client("s3")  # endpoint and keys from ENV, as pyarrow gets them
        client.create_bucket(Bucket=BUCKET)
        fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}/")
        yield {"client": client, "fs": fs, "log": log}
    finally:
        server.stop()
        werkzeug.removeHandler(log)
        werkzeug.setLevel(saved[0])
        werkzeug.propagate = saved[1]


def keys(s3, prefix: str) -> dict[str, object]:
    """Object key (relative to prefix) -> LastModified, without directory markers."""
    pages = s3["client"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    found = {o["Key"][len(prefix):]: o["LastModified"] for page in pages for o in page.get("Contents", [])}
    return {k: t for k, t in found.items() if k and not k.endswith("/")}


def get_body(s3, key: str) -> bytes:
    return s3["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read()


def get_text(s3, key: str) -> str:
    return get_body(s3, key).decode()


def upload(s3, local_dir, prefix: str) -> None:
    pafs.copy_files(str(local_dir), f"{BUCKET}/{prefix}", destination_filesystem=s3["fs"])


@pytest.fixture(scope="module")
def sample_in(s3, tmp_path_factory):
    """120 sample rows in 2 shards under a local directory named `in`, uploaded to s3://BUCKET/in/."""
    local = tmp_path_factory.mktemp("local") / "in"
    summary = write_sample(local, SampleConfig(rows=120, shards=2, seed=5))
    upload(s3, local, "in")
    return local, summary


def run_logged(options: dict, s3) -> tuple[dict, list[tuple[str, str]], str]:
    """Run the job; return its manifest, the object-store requests it made, and every log line."""
    text = TextLog()
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(text)
    root.setLevel(logging.INFO)
    first = len(s3["log"].requests)
    try:
        manifest = prepare.run(PrepareConfig.from_options(options))
    finally:
        root.removeHandler(text)
        root.setLevel(saved_level)
    return manifest, s3["log"].requests[first:], text.stream.getvalue()


# A complete output of an earlier run (it has _SUCCESS) that the dedup run replaces with --overwrite:
# more shards under other names, an old manifest. Every one must be gone or rewritten afterwards.
EARLIER_COMPLETE = {
    "data/part-00000-of-00003.parquet": b"earlier",
    "data/part-00002-of-00003.parquet": b"earlier",
    "neighbors/pairs/part-00000-of-00002.parquet": b"earlier",
    "manifest.json": b'{"earlier": true}',
    "_SUCCESS": b"",
}


@pytest.fixture(scope="module")
def dedup_run(ray_local, s3, sample_in):
    """The whole job, near-duplicate removal included, from s3://BUCKET/in/ to s3://BUCKET/out/, where
    a complete earlier output is replaced (--overwrite)."""
    for key, body in EARLIER_COMPLETE.items():
        s3["client"].put_object(Bucket=BUCKET, Key=f"out/{key}", Body=body)
    options = {
        "input": [f"s3://{BUCKET}/in/"], "output": f"s3://{BUCKET}/out/", "overwrite": True,
        # This test is about I/O: one tokenizer process, and short texts to embed (embedding a few
        # hundred word pieces per row on two shared cores would double its time).
        "rows_per_shard": 50, "tokenize_actors": 1, "embed_max_tokens": 128,
    }
    manifest, requests, log_text = run_logged(options, s3)
    return manifest, requests, log_text


def test_workers_see_the_object_store_environment(ray_local):
    @ray_local.remote(num_cpus=0.1)
    def environment():
        return {name: os.environ.get(name) for name in ENV}

    assert ray_local.get(environment.remote()) == ENV


def test_complete_layout_in_the_bucket(dedup_run, sample_in, s3):
    manifest, _, _ = dedup_run
    rows = manifest["rows"]
    assert rows["read"] == sample_in[1]["rows"] == rows["kept"] + rows["removed"] + rows["rejected"]
    assert rows["by_reason"].get(schema.EXACT_DUPLICATE) and rows["by_reason"].get(schema.NEAR_DUPLICATE)
    objects = keys(s3, "out/")
    top = {k.split("/", 1)[0] for k in objects}
    assert {"data", "removed", "rejected", "neighbors", "manifest.json", "README.md", "_SUCCESS"} <= top
    assert top <= set(LAYOUT) | {WORK_DIR}
    for subdir in ("data", "removed", "rejected"):
        names = sorted(k.split("/", 1)[1] for k in objects if k.startswith(subdir + "/"))
        count = len(names)
        assert names == [f"part-{i:05d}-of-{count:05d}.parquet" for i in range(count)], subdir
        assert names == manifest["files"][subdir]
    assert len(manifest["files"]["data"]) == -(-rows["kept"] // 50) >= 2  # cut every --rows-per-shard rows
    assert any(k.startswith("neighbors/pairs/") for k in objects) and any(k.startswith("neighbors/best/") for k in objects)
    # The files hold what the manifest says, read back through pyarrow's S3 filesystem.
    counted = {
        subdir: sum(pq.ParquetFile(f"{BUCKET}/out/{subdir}/{n}", filesystem=s3["fs"]).metadata.num_rows
                    for n in manifest["files"][subdir])
        for subdir in ("data", "removed", "rejected")
    }
    assert counted == {"data": rows["kept"], "removed": rows["removed"], "rejected": rows["rejected"]}
    assert json.loads(get_text(s3, "out/manifest.json"))["rows"] == rows
    assert get_text(s3, "out/_SUCCESS") == ""


def test_overwrite_replaced_every_object_of_the_earlier_output(dedup_run, s3):
    objects = keys(s3, "out/")
    survivors = [k for k, body in EARLIER_COMPLETE.items() if k in objects and body and get_body(s3, f"out/{k}") == body]
    assert not survivors


def test_success_is_written_last(dedup_run, s3):
    _, requests, _ = dedup_run
    # Written objects in request order (a multipart upload is several requests on one key; a batch
    # delete is a POST on the bucket).
    written = [path.split("?", 1)[0] for method, path in requests
               if method in MUTATING and (path.startswith(f"/{BUCKET}/out/") or path.startswith(f"/{BUCKET}?"))]
    success = f"/{BUCKET}/out/_SUCCESS"
    assert success in written
    first = written.index(success)
    # Nothing is written or deleted after it but the job's lock, released last (pyarrow's delete of the
    # lock object re-creates the prefix's directory marker, `out/`).
    assert set(written[first:]) <= {success, f"/{BUCKET}/out/{LOCK}", f"/{BUCKET}/out/"}, written[first:]
    assert f"/{BUCKET}/out/{LOCK}" in written[:first]  # taken before anything was written
    assert len(written[:first]) > 10  # ... and the data, manifest and card were written before it
    objects = keys(s3, "out/")
    assert objects["_SUCCESS"] == max(objects.values())  # LastModified (1 s resolution) agrees


def test_sources_are_named_as_in_a_local_run(dedup_run, sample_in, s3):
    manifest, _, _ = dedup_run
    local, _ = sample_in
    expected = [f.source for f in discover_inputs([str(local)])]  # what a local run of `in/` names them
    assert expected == ["in/shard-00000.jsonl", "in/shard-00001.jsonl.gz"]
    assert sorted(manifest["rows"]["by_source"]) == expected
    assert [i["source"] for i in manifest["inputs"]] == expected
    assert [i["uri"] for i in manifest["inputs"]] == [f"s3://{BUCKET}/{s}" for s in expected]
    table = pq.read_table(f"{BUCKET}/out/data", filesystem=s3["fs"])
    assert set(table.column("source").to_pylist()) <= set(expected)
    for row in table.select(["id", "source", "source_row"]).to_pylist():
        assert row["id"] == schema.row_id(row["source"], row["source_row"])


def test_no_credential_in_manifest_card_or_logs(dedup_run, s3, ray_local):
    manifest, _, log_text = dedup_run
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET  # the job really ran with it
    assert "stage read_normalize_tokenize_filter" in log_text  # the job's log was captured
    for text in (get_text(s3, "out/manifest.json"), get_text(s3, "out/README.md"), json.dumps(manifest), log_text):
        assert SECRET not in text
    # Every Ray process's log (driver, workers, actors, raylet, GCS) of this session.
    from ray._private import worker

    logs_dir = worker._global_node.get_logs_dir_path()
    leaked = []
    for directory, _, files in os.walk(logs_dir):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                if SECRET.encode() in handle.read():
                    leaked.append(path)
    assert not leaked


def test_a_complete_output_is_refused_without_overwrite(dedup_run, s3):
    before = keys(s3, "out/")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare.run(PrepareConfig.from_options({"input": [f"s3://{BUCKET}/in/"], "output": f"s3://{BUCKET}/out/"}))
    assert keys(s3, "out/") == before  # nothing touched


def test_stale_objects_of_an_incomplete_attempt_are_removed(ray_local, s3):
    # An earlier attempt that died before _SUCCESS: more shards under other names, neighbors/ and a
    # report from a dedup run, an old manifest and card; its checkpoints under _work/ may stay.
    stale = {
        "data/part-00000-of-00009.parquet": b"stale",
        "data/part-00008-of-00009.parquet": b"stale",
        "removed/part-00003-of-00004.parquet": b"stale",
        "neighbors/pairs/part-00000-of-00001.parquet": b"stale",
        "report/report.html": b"stale",
        "manifest.json": b'{"stale": true}',
        "README.md": b"stale",
    }
    for key, body in stale.items():
        s3["client"].put_object(Bucket=BUCKET, Key=f"retry/{key}", Body=body)
    # No --overwrite: an output without _SUCCESS is ours to clean. The built-in sample as input: it is
    # written to a local temp directory, since the output is an object store.
    options = {"input": ["sample"], "sample_rows": 100, "output": f"s3://{BUCKET}/retry", "no_dedup": True,
               "tokenize_actors": 1}
    manifest, _, _ = run_logged(options, s3)

    objects = keys(s3, "retry/")
    # Every stale object is gone or rewritten by this run (report/ and the card are rewritten).
    survivors = [k for k in stale if k in objects and get_body(s3, f"retry/{k}") == stale[k]]
    assert not survivors
    for subdir in ("data", "removed", "rejected"):
        assert sorted(k.split("/", 1)[1] for k in objects if k.startswith(subdir + "/")) == manifest["files"][subdir]
    assert "_SUCCESS" in objects and manifest["rows"]["read"] == 100
    table = pq.read_table(f"{BUCKET}/retry/data", filesystem=s3["fs"])
    assert table.num_rows == manifest["rows"]["kept"]
    assert all(s.startswith("sample/shard-") for s in table.column("source").to_pylist())


# --- no Ray needed ---------------------------------------------------------------------------------


def test_a_bucket_root_names_its_rows_after_the_bucket(s3, sample_in):
    assert [f.source for f in discover_inputs([f"s3://{BUCKET}/in"])] == ["in/shard-00000.jsonl", "in/shard-00001.jsonl.gz"]
    assert [f.source for f in discover_inputs([f"s3://{BUCKET}/in/*.gz"])] == ["in/shard-00001.jsonl.gz"]
    # The bucket is the input root: its parent is the store itself (as `/data` gives `data/...`).
    assert f"{BUCKET}/in/shard-00000.jsonl" in [f.source for f in discover_inputs([f"s3://{BUCKET}"])]


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@{BUCKET}/out",
        f"s3://AKIAEXAMPLE@{BUCKET}/out",
        f"s3://{BUCKET}/out?secret_key={SECRET}",
    ],
)
def test_credentials_in_a_uri_are_refused_without_echoing_them(uri):
    for make in (Output, lambda u: discover_inputs([u])):
        with pytest.raises(ValueError, match="environment") as caught:
            make(uri)
        assert SECRET not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


def test_an_input_a_worker_cannot_open_stops_the_job(s3, monkeypatch):
    # What a worker without the store's credentials sees: an unsigned request, refused. That is an
    # environment fault, not a data fault: it must not become rejected rows under a _SUCCESS.
    # (Uploaded with boto3: moto gives objects pyarrow wrote no ACL and then serves them to anyone.)
    s3["client"].put_object(Bucket=BUCKET, Key="private/a.jsonl", Body=b'{"messages": []}\n')
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    item = InputFile(uri=f"s3://{BUCKET}/private/a.jsonl", source="private/a.jsonl", kind="text")
    with pytest.raises(OSError, match="cannot open input .*listed at start-up"):
        list(iter_records(item))
