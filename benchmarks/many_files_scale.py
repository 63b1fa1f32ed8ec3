"""Many files at scale: the same 1M rows as 10 files and as 1,000 files, side by side in one run; then
discovery of 100,000 objects on a local S3 server (moto), as `chatsieve prepare --input s3://...` lists them.

    python benchmarks/many_files_scale.py                    # 1M rows, 100,000 objects (~20 min on 2 cores)
    python benchmarks/many_files_scale.py --rows 100000 --objects 10000 --out /tmp/mfs.json   # quick

The rows are the built-in sample's (`--shards 10`), written once; the 1,000-file input cuts each of the 10 files
into 100 consecutive pieces, so both inputs hold the same lines in the same order and every file keeps one
shard's format. Each job is `chatsieve prepare --no-dedup` in a fresh process with its own local Ray (wall time
includes Ray's start-up, the same for both). The S3 objects are put straight into moto's in-process backend
(100,000 PUTs over HTTP would take longer than what is measured); discovery then lists them over HTTP through
pyarrow's S3 filesystem, as the job does. No timing asserts.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import BenchmarkRun  # noqa: E402
from benchmarks.many_files import run_job  # noqa: E402

BUCKET = "chatsieve-bench"


def sample_shards(rows: int, shards: int, scratch: Path) -> list[list[bytes]]:
    """The built-in sample's shards, each as its lines (gzip undone, blank lines kept: the reader counts them)."""
    from jobs.sample import SampleConfig, write_sample

    folder = scratch / "sample"
    write_sample(folder, SampleConfig(rows=rows, shards=shards, seed=0))
    out = []
    for shard in sorted(folder.iterdir()):
        data = shard.read_bytes()
        if shard.suffix == ".gz":
            data = gzip.decompress(data)
        out.append(data.rstrip(b"\n").split(b"\n"))
    shutil.rmtree(folder)
    return out


def write_pieces(shards: list[list[bytes]], pieces_per_shard: int, folder: Path) -> int:
    """Each shard cut into `pieces_per_shard` consecutive files, named so sorted order is shard order."""
    folder.mkdir(parents=True)
    count = 0
    for s, lines in enumerate(shards):
        for p in range(pieces_per_shard):
            piece = lines[p * len(lines) // pieces_per_shard:(p + 1) * len(lines) // pieces_per_shard]
            (folder / f"shard-{s:03d}-{p:04d}.jsonl").write_bytes(b"\n".join(piece) + b"\n")
            count += 1
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_discovery(objects: int) -> dict:
    """`objects` keys under 100 prefixes in a moto server's bucket, then `discover` over s3:// (timed)."""
    port = free_port()
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    import logging

    import boto3
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.server import ThreadedMotoServer

    from operators.discover import discover

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        backend = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]
        started = time.perf_counter()
        for i in range(objects):
            backend.put_object(BUCKET, f"tree/d{i // 1000:03d}/f{i:06d}.jsonl", b"{}\n")
        populate_s = time.perf_counter() - started
        started = time.perf_counter()
        found = discover([f"s3://{BUCKET}/tree/"])
        seconds = time.perf_counter() - started
        # The baseline: the same listing with boto3's paginator alone (what the server itself costs).
        started = time.perf_counter()
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="tree/")
        listed = sum(len(page.get("Contents", [])) for page in pages)
        boto3_s = time.perf_counter() - started
    finally:
        server.stop()
    return {"objects": objects, "files": len(found.files), "seconds": round(seconds, 2),
            "boto3_listing": {"objects": listed, "seconds": round(boto3_s, 2)},
            "populate_backend_s": round(populate_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--few-files", type=int, default=10, help="the baseline's files (default 10)")
    parser.add_argument("--pieces", type=int, default=100, help="files per baseline file in the many-file input")
    parser.add_argument("--objects", type=int, default=100_000, help="S3 objects to discover (0: skip)")
    parser.add_argument("--skip-jobs", action="store_true", help="only the S3 discovery")
    parser.add_argument("--tmp-dir", default="/tmp")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "many_files_scale.json"))
    args = parser.parse_args()
    run = BenchmarkRun("many_files_scale", REPO)
    fields: dict = {}
    if args.skip_jobs and Path(args.out).exists():  # keep the earlier run's jobs, with their date
        import json

        earlier = json.loads(Path(args.out).read_text())
        if "jobs" in earlier:
            fields.update(jobs_date=earlier.get("jobs_date", earlier["date"]), jobs_command=earlier.get(
                "jobs_command", earlier["command"]), **{k: earlier[k] for k in ("rows", "jobs", "many_vs_few_wall")})
    if not args.skip_jobs:
        with tempfile.TemporaryDirectory(prefix="many-files-scale-", dir=args.tmp_dir) as scratch_name:
            scratch = Path(scratch_name)
            shards = sample_shards(args.rows, args.few_files, scratch)
            few = write_pieces(shards, 1, scratch / "few")
            many = write_pieces(shards, args.pieces, scratch / "many")
            del shards
            jobs = {}
            for name, folder, files in (("few_files", "few", few), ("many_files", "many", many)):
                print(f"{name}: {files} files", flush=True)
                jobs[name] = {"files": files, **run_job(scratch / folder, scratch / f"out-{folder}")}
                print(f"{name}: {jobs[name]}", flush=True)
        fields.update(rows=args.rows, jobs=jobs,
                      many_vs_few_wall=round(jobs["many_files"]["wall_s"] / jobs["few_files"]["wall_s"], 3))
    if args.objects:
        fields["discovery_s3"] = s3_discovery(args.objects)
        print(fields["discovery_s3"], flush=True)
    run.write(args.out, **fields)


if __name__ == "__main__":
    main()
