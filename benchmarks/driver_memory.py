"""The driver's memory with dedup on, from 100k to 1M rows, without embedding a million texts on CPU.

    python benchmarks/driver_memory.py                     # 100k and 1M rows, --dedup-on user
    python benchmarks/driver_memory.py --rows 20000,100000 --out /tmp/driver.json    # quick
    python benchmarks/driver_memory.py --keep-outputs /work/bench/dm    # keep the primed outputs; rerun: step 3 only

Issue 14 asks that the driver's memory stay flat from 100k to 1M rows with dedup on. Embedding 1M texts takes
40 min on a fast 2-core machine and hours on a slow one, and the embedder runs in an actor, not the driver: the
driver's share of the job is reading the candidates' keys, the plan, streaming vectors to the index, the
recall check and the keep rule. So each size runs in two steps, on the same output:

1. prime: the real job (`chatsieve prepare --input sample --sample-rows N ... --dedup-on user`) runs until the
   embed stage has stored its first block (the candidates are complete); then its process group is stopped.
2. stand-in vectors for every candidate text go into the job's vectors store (jobs/vectors.py, `write_block`,
   the layout the embed actors write): a hashed bag of words and word pairs, one pseudo-random 384-d direction
   per token, summed and normalized. Near-identical texts get near-identical vectors, like MiniLM's; the pair
   counts differ from MiniLM's and are recorded beside its own 1M run's.
3. measure: the same job again on that output (`--overwrite` keeps `_work/`): every vector is found stored
   (checked: the manifest says 0 embedded), and the rest of the job runs for real: read, tokenize, exact dedup,
   the sharded index (IVF above 200k, chosen by `--index auto`), its recall check, the keep rule, the commit.
   The process tree is sampled as in scaling.py (benchmarks/process_tree.py): the driver's peak RSS overall
   and per stage.

No timing asserts; the load average at start and end is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import BenchmarkRun, loadavg
from process_tree import memory_record, run_sampled
from scaling import int_list, job_command, manifest_summary

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DIM = 384
BLOCK = 8192
WORD = re.compile(r"\w+")


class StandIn:
    """Hashed bag of words and word pairs -> a unit 384-d vector (module doc, step 2)."""

    def __init__(self, seed: int = 0):
        self.seed, self.ids, self.directions = seed, {}, []

    def _token(self, token: str) -> int:
        index = self.ids.get(token)
        if index is None:
            index = self.ids[token] = len(self.directions)
            rng = np.random.default_rng([self.seed, zlib.crc32(token.encode())])
            self.directions.append(rng.standard_normal(DIM).astype(np.float32))
        return index

    def __call__(self, texts: list[str]) -> np.ndarray:
        tokens, owners = [], []
        for row, text in enumerate(texts):
            words = WORD.findall(text.lower()) or [""]
            grams = words + [a + " " + b for a, b in zip(words, words[1:])]
            tokens.extend(self._token(g) for g in grams)
            owners.extend([row] * len(grams))
        used, position = np.unique(np.asarray(tokens), return_inverse=True)  # only this block's directions
        table = np.stack([self.directions[i] for i in used.tolist()])
        sums = np.zeros((len(texts), DIM), np.float32)
        np.add.at(sums, np.asarray(owners), table[position])
        return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), np.float32(1e-12))


def prime(command: list[str], output: Path, log: Path, timeout_s: float) -> tuple[float, Path]:
    """Run the job until its embed stage has written the store's settings; stop it; (seconds, store dir)."""
    started = time.perf_counter()
    env = {**os.environ, "RAY_ADDRESS": "local"}
    with log.open("w") as handle:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # A first block in the store, not only its settings: a stopped job removes an output it created unless it
    # holds finished work (jobs/runtime.py, open_output).
    pattern = str(output / "_work" / "vectors" / "*" / "part-*.parquet")
    try:
        while not glob.glob(pattern):
            if proc.poll() is not None:
                raise RuntimeError(f"the job ended ({proc.returncode}) before embedding; see {log}")
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"no embed stage after {timeout_s:.0f} s; see {log}")
            time.sleep(1.0)
    finally:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
    time.sleep(3)  # Ray's processes in the group exit with it
    return time.perf_counter() - started, Path(glob.glob(pattern)[0]).parent


def fill_store(output: Path, store: Path, seed: int) -> dict:
    """Stand-in vectors for every distinct candidate text, written as the embed actors write them."""
    from jobs.vectors import STORED_COLUMNS, write_block
    from operators.exact_dedup import DEDUP_TEXT, TEXT_SHA1
    import pyarrow.fs as pafs

    started = time.perf_counter()
    for stale in store.glob("part-*.parquet"):  # blocks the primed job finished before it was stopped
        stale.unlink()
    table = pq.read_table(output / "_work" / "candidates", columns=[TEXT_SHA1, DEDUP_TEXT])
    sha1 = table.column(TEXT_SHA1).to_numpy(zero_copy_only=False)
    _, first = np.unique(sha1, return_index=True)
    table = table.take(np.sort(first))
    embed, fs = StandIn(seed), pafs.LocalFileSystem()
    for start in range(0, table.num_rows, BLOCK):
        chunk = table.slice(start, BLOCK)
        vectors = embed(chunk.column(DEDUP_TEXT).to_pylist())
        block = pa.Table.from_arrays(
            [chunk.column(TEXT_SHA1).combine_chunks(),
             pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), DIM),
             pa.array(np.ones(len(vectors), np.int16)), pa.array(np.zeros(len(vectors), bool))],
            names=STORED_COLUMNS,
        )
        write_block(fs, str(store), block)
    return {"texts": table.num_rows, "tokens": len(embed.ids), "seconds": round(time.perf_counter() - started, 1)}


def measure(rows: int, args, scratch: Path) -> dict:
    output = scratch / f"rows-{rows}" / "out"
    command = job_command(rows, True, output, args.job_args)
    primed = scratch / f"rows-{rows}" / "primed.json"  # steps 1-2 done: --keep-outputs reruns only step 3
    if primed.exists():
        prime_s, filled = json.loads(primed.read_text()).values()
        print(f"{rows}: reusing the primed output {output}", flush=True)
    else:
        prime_s, store = prime(command, output, scratch / f"prime-{rows}.log", args.job_timeout_s)
        print(f"{rows}: primed in {prime_s:.0f} s", flush=True)
        filled = fill_store(output, store, args.seed)
        print(f"{rows}: {filled}", flush=True)
        primed.write_text(json.dumps({"prime_s": prime_s, "stand_in_vectors": filled}))
    log = scratch / f"measure-{rows}.log"
    load = loadavg()
    returncode, wall_s, sampler = run_sampled(command, log, args)
    record = {"rows": rows, "command": " ".join(["python", *command[1:]]), "prime_s": round(prime_s, 1),
              "stand_in_vectors": filled, "returncode": returncode, "wall_s": round(wall_s, 1), "load_before": load,
              "load_after": loadavg(), "memory": memory_record(sampler)}
    manifest_path = output / "manifest.json"
    if returncode or not manifest_path.exists():
        record["log_tail"] = log.read_text(errors="replace").splitlines()[-40:]
        return record
    record["manifest"] = manifest_summary(json.loads(manifest_path.read_text()))
    embedded = record["manifest"]["dedup"]["vectors"]["embedded"]
    if embedded:
        raise RuntimeError(f"{rows}: the measured run embedded {embedded} texts; the stand-ins were not used")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int_list, default=[100_000, 1_000_000])
    parser.add_argument("--job-args", default="--dedup-on user", help="extra prepare flags (default: --dedup-on user)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stand-in token directions")
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling interval in s")
    parser.add_argument("--pss-every", type=int, default=8, help="the tree's PSS every this many samples")
    parser.add_argument("--job-timeout-s", type=float, default=4 * 3600)
    parser.add_argument("--tmp-dir", default="/tmp")
    parser.add_argument("--keep-outputs", type=Path, default=None,
                        help="keep the primed outputs here; a later run with the same DIR skips priming and filling")
    parser.add_argument("--out", type=Path, default=RESULTS / "driver_memory.json")
    args = parser.parse_args()
    run = BenchmarkRun("driver_memory", REPO)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="driver-memory-", dir=args.tmp_dir) as scratch_name:
        scratch = args.keep_outputs or Path(scratch_name)
        for rows in args.rows:
            (scratch / f"rows-{rows}").mkdir(parents=True, exist_ok=True)
            runs[str(rows)] = record = measure(rows, args, scratch)
            memory = record["memory"]
            print(f"{rows}: rc {record['returncode']}, {record['wall_s']} s, driver peak {memory['driver_peak_rss_mb']} "
                  f"MB (own heap {memory['driver_peak_anon_mb']} MB), timings "
                  f"{record.get('manifest', {}).get('timings_s')}", flush=True)
            if args.keep_outputs is None:
                shutil.rmtree(scratch / f"rows-{rows}", ignore_errors=True)
    done = [runs[str(r)] for r in args.rows if "manifest" in runs[str(r)]]
    summary = None
    if len(done) >= 2:
        small, large = done[0], done[-1]
        stages = [s for s in large["memory"]["per_stage"] if s in small["memory"]["per_stage"]]
        summary = {
            "rows": [r["rows"] for r in done],
            "driver_peak_rss_mb": [r["memory"]["driver_peak_rss_mb"] for r in done],
            "driver_peak_ratio_largest_vs_smallest": round(
                large["memory"]["driver_peak_rss_mb"] / small["memory"]["driver_peak_rss_mb"], 3),
            "driver_peak_rss_mb_per_stage": {
                s: [r["memory"]["per_stage"][s]["driver_peak_rss_mb"] for r in done] for s in stages},
            # RSS counts the object-store pages the driver read blocks from; its own heap is RssAnon.
            "driver_peak_anon_mb": [r["memory"]["driver_peak_anon_mb"] for r in done],
            "driver_peak_anon_ratio_largest_vs_smallest": round(
                large["memory"]["driver_peak_anon_mb"] / small["memory"]["driver_peak_anon_mb"], 3),
            "driver_peak_shmem_mb": [r["memory"]["driver_peak_shmem_mb"] for r in done],
            "driver_peak_anon_mb_per_stage": {
                s: [r["memory"]["per_stage"][s]["driver_peak_anon_mb"] for r in done] for s in stages},
        }
    run.write(args.out, settings={"job_args": args.job_args, "interval_s": args.interval, "seed": args.seed},
              runs=runs, driver_memory_vs_volume=summary)


if __name__ == "__main__":
    main()
