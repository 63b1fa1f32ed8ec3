"""Many small input files: the same rows as one file, as 5,000 one-line files read in groups (the default),
and as 5,000 files read one Ray task per file (`--read-group-mb 0`, the behaviour before grouping), side by
side in one run; then discovery of 100,000 local files.

    python benchmarks/many_files.py                      # 5,000 files, 100,000 for discovery (~8 min on 2 cores)
    python benchmarks/many_files.py --files 500 --discover-files 10000 --out /tmp/many_files.json   # quick

Each job is `chatsieve prepare --no-dedup` in a fresh process with its own local Ray (wall time includes Ray's
start-up, the same for all three). The rows are the built-in sample's, one per file. No timing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import BenchmarkRun  # noqa: E402


def sample_lines(rows: int, scratch: Path) -> list[bytes]:
    from jobs.sample import SampleConfig, write_sample

    write_sample(scratch / "sample", SampleConfig(rows=rows, shards=1, seed=0))
    [shard] = sorted((scratch / "sample").iterdir())
    data = shard.read_bytes()
    if shard.suffix == ".gz":
        import gzip

        data = gzip.decompress(data)
    return [line for line in data.split(b"\n") if line.strip()][:rows]


def run_job(inputs: Path, out: Path, *extra: str) -> dict:
    ray_dir = tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_dir, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "prepare", "--input", str(inputs), "--output", str(out), "--no-dedup",
         "--address", "local", *extra], cwd=REPO, env=env, capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    shutil.rmtree(ray_dir, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"job failed ({done.returncode}): {done.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out, ignore_errors=True)  # 1M rows (many_files_scale.py): about a GB
    rows = manifest["rows"]
    return {"wall_s": round(wall, 1), "rows_read": rows["read"], "kept": rows["kept"], "removed": rows["removed"],
            "rejected": rows["rejected"], "read_stage_s": manifest["timings_s"].get("read_normalize_tokenize_filter"),
            "timings_s": manifest["timings_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--discover-files", type=int, default=100_000)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "many_files.json"))
    args = parser.parse_args()
    run = BenchmarkRun("many_files", REPO)
    with tempfile.TemporaryDirectory(prefix="many-files-") as scratch_name:
        scratch = Path(scratch_name)
        lines = sample_lines(args.files, scratch)
        one = scratch / "one"
        one.mkdir()
        (one / "all.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        many = scratch / "many"
        many.mkdir()
        for i, line in enumerate(lines):
            (many / f"part-{i:06d}.jsonl").write_bytes(line + b"\n")
        jobs = {
            "one_file": run_job(one, scratch / "out-one"),
            "many_files_grouped": run_job(many, scratch / "out-grouped"),
            "many_files_one_task_each": run_job(many, scratch / "out-each", "--read-group-mb", "0"),
        }
        from operators.discover import discover

        tree = scratch / "tree"
        for i in range(args.discover_files):
            folder = tree / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"f{i:06d}.jsonl").write_bytes(b"{}\n")
        started = time.perf_counter()
        found = discover([str(tree)])
        discovery = {"files": len(found.files), "seconds": round(time.perf_counter() - started, 2)}
    grouped, each, single = (jobs[k]["wall_s"] for k in ("many_files_grouped", "many_files_one_task_each", "one_file"))
    report = run.write(
        args.out,
        files=args.files,
        jobs=jobs,
        grouped_speedup_vs_one_task_each=round(each / grouped, 2),
        grouped_vs_one_file=round(grouped / single, 2),
        discovery_local=discovery,
    )
    print(report["grouped_speedup_vs_one_task_each"], report["grouped_vs_one_file"], discovery)


if __name__ == "__main__":
    main()
