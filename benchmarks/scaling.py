"""Scaling: index build + cross-shard search at 10k-1M vectors, and the whole job at 100k-1M rows.

    python benchmarks/scaling.py                   # both parts, the recorded run (several hours: see --help)
    python benchmarks/scaling.py --part index      # index scaling only; merged into the JSON's "index" part
    python benchmarks/scaling.py --part job        # full jobs only; merged into the JSON's "job" part
    python benchmarks/scaling.py --sizes 10000 --job-rows-nodedup 5000,20000 --job-rows-dedup 3000 \
        --out /tmp/scaling_small.json              # a quick check (~4 min on a busy 2-core machine)

Part "index" measures the index, not the model: for each N of --sizes, 384-d unit vectors come from
index_search.py's generator (clustered background, 2% of the rows in planted near-duplicate groups of 2-10,
rows shuffled) and every variant runs once, in this process, on FAISS's default threads:
  ivf_train    train_quantizer on the stage's training sample (64 * nlist rows, nlist = round(4 sqrt N)):
               the shared quantizer, trained once per N and passed to both ivf runs (`trained=`), so
               ivf_S's own time is add + search and its build + search total is ivf_train + ivf_S.
  ivf_S        search_in_process(ranks, vectors, IndexConfig("ivf", shards=S), 0.90, trained=...) in full,
               for every S of --shards (1 and 4), at every N.
  flat_S       search_in_process(..., IndexConfig("flat", shards=S), 0.90) in full, for N <= --flat-full-max
               (100k; a full 1M flat search is ~72 min on this machine, by the issue's estimate).
  exact_sample the truth on a query sample: --sample (20,000) evenly spaced rows (all rows when N is
               smaller), each searched against ALL N vectors with a raw faiss.IndexFlatIP range search at
               0.90 - 1e-4, the candidates' cosines recomputed with pair_similarity and kept at >= 0.90
               (the stage's own rule): every exact pair that involves a sample row, whichever rank is lower.
               Raw FAISS, not the stage, because a shard reports a pair only to its lower-ranked row, so the
               stage cannot return the pairs in which a sample row is the higher rank.
  flat_sample_S
               the stage's own flat work for the same sample, to time it: S IndexShard(flat) objects, all N
               rows added in QUERY_BATCH batches as search_in_process does, then only the sample rows
               searched against every shard (k-NN k=65, the re-search of queries that hit the bound, the
               recomputed cosines). Extrapolated linearly to all N queries:
               add_s + search_s * N / sample_rows (wall and process CPU). Where flat_S also ran in full, the
               measured/extrapolated ratio checks the extrapolation. Its pairs (sample row = lower rank)
               must equal the exact pairs whose lower rank is a sample row (`matches_exact`).
Quality per N: ivf recall on the sample (exact pairs involving a sample row that ivf_S also reported; ivf
reports only recomputed cosines >= 0.90, so it has no false pairs - counted as a check); where flat ran in
full, ivf recall vs flat_1 over all pairs, whether 1 and 4 shards give identical pairs, planted pairs found.
Memory per variant: the RSS it started from and its own peak (VmHWM, reset before each variant where
/proc/self/clear_refs allows it; memory the allocator kept from earlier runs is part of both), and the
process peak (ru_maxrss, kept as a running max across the resets). The 1M vectors are 1.5 GB; generating
them grows the process by about 4-5x that (float64 noise; measured at 10k), before any variant runs.

Part "job" runs the real CLI as a subprocess, one run at a time, on a fresh local Ray (RAY_ADDRESS=local,
so it never joins another Ray instance on the machine, and every Ray process is a descendant of the driver):
    python -m jobs.cli prepare --input sample --sample-rows N --output <tmp>/out --overwrite [--no-dedup]
for each N of --job-rows-nodedup with --no-dedup (100k and 1M: the driver's memory must not grow with the
text volume, so both sizes run) and each N of --job-rows-dedup with dedup on (100k; defaults otherwise: flat
index, 1 shard, the CPU embedder). --job-args appends flags (e.g. "--index ivf"). A sampler thread reads
/proc every --interval (0.5) s: the driver's RSS, and the RSS summed over the driver's process tree (raylet,
GCS, workers), the process count and the machine's MemAvailable; every --pss-every (4) samples also the PSS
summed over the tree (RSS counts a shared page - the object store, libraries - in full in every process that
maps it; PSS splits it between them, so the tree's PSS is what the job really occupies; it costs ~1-3 ms a
process to read, hence every 2 s). psutil is not a dependency here, so all of it comes from /proc. The
driver's log lines "stage NAME ..." / "stage NAME done" name the stage each sample belongs to, so every stage
of the manifest gets its peak driver RSS, peak tree RSS/PSS and the driver's RSS at its start and end (stages
shorter than the interval get the latter only; the time after a stage is "after_NAME": after the last one,
the report and Ray's shutdown). Recorded per run: wall time, the tree's CPU time (utime + stime of every
process seen in the tree, at its last sample), the manifest's timings_s and row counts, the dedup counts,
input/output sizes, a timeline (one sample per --timeline-s) and the sampler's own CPU time. The output (1M rows: a few GB) is deleted afterwards (--keep-outputs keeps it);
the job's log is kept under --tmp-dir only when the run failed. "driver_memory_vs_volume" compares the
no-dedup runs' driver peaks against their input sizes.

Each part records the exact command line, date, machine (machine.py) and load average at start and end;
running one part keeps the other part of an existing --out file. No timing asserts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import faiss
import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(REPO))

from index_search import (
    DIM,
    _status_mb,
    make_vectors,
    pair_keys,
    planted_pairs,
    reset_hwm,
)
from index_search import machine as index_machine
from machine import loadavg
from machine import machine as base_machine
from process_tree import mem_available_mb, memory_record, run_sampled

from operators.index import (
    QUERY_BATCH,
    IndexConfig,
    IndexShard,
    default_nlist,
    pair_similarity,
    search_in_process,
    train_quantizer,
    training_sample_ranks,
)

DEFAULT_OUT = REPO / "benchmarks" / "results" / "scaling.json"
# FAISS finds candidates this far below the threshold; the recomputed cosine then decides with `>=`
# (the stage's margin for d=384, operators/index.py `_margin`).
CANDIDATE_MARGIN = np.float32(1e-4)
LOG_TAIL_LINES = 60


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# --- index part: measuring one call ----------------------------------------------------------------


class Meter:
    """Wall, process CPU and memory of one call; the process peak is kept across the VmHWM resets
    (resetting VmHWM also resets ru_maxrss: both read the same high-water mark)."""

    def __init__(self):
        self.can_reset = reset_hwm()
        self.process_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def _note_peak(self) -> None:
        hwm_mb = _status_mb("VmHWM") or 0.0  # can read a little above ru_maxrss: keep the larger
        self.process_peak_kb = max(
            self.process_peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, int(hwm_mb * 1024)
        )

    def run(self, fn):
        gc.collect()  # the previous variant's garbage must not count as this one's starting RSS
        rss_before = _status_mb("VmRSS")
        self._note_peak()
        if self.can_reset:
            reset_hwm()
        load_before = loadavg()[0]
        started, cpu_started = time.perf_counter(), time.process_time()
        result = fn()
        record = {
            "wall_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(time.process_time() - cpu_started, 2),
            "rss_before_mb": rss_before,
            "peak_mb": _status_mb("VmHWM") if self.can_reset else None,
            "load_1m_before": load_before,
            "load_1m_after": loadavg()[0],
        }
        self._note_peak()
        return result, record

    @property
    def process_peak_mb(self) -> float:
        self._note_peak()
        return round(self.process_peak_kb / 1024, 1)


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """`count` row numbers spread evenly over 0..n-1 (all of them when n <= count)."""
    return np.unique(np.linspace(0, n - 1, num=min(count, n)).astype(np.int64))


def canonical_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique pair keys min*n + max: the same pair from either side is one key."""
    return np.unique(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b).astype(np.int64))


def involving(keys: np.ndarray, sample: np.ndarray, n: int) -> np.ndarray:
    return keys[np.isin(keys // n, sample) | np.isin(keys % n, sample)]


# --- index part: the variants ----------------------------------------------------------------------


def exact_pairs_involving(vectors: np.ndarray, sample: np.ndarray, threshold: float) -> np.ndarray:
    """Keys of every pair with recomputed cosine >= threshold that involves a sample row (raw FAISS)."""
    n = len(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    radius = float(np.float32(threshold) - CANDIDATE_MARGIN)
    keys = []
    for start in range(0, len(sample), QUERY_BATCH):
        queries = sample[start:start + QUERY_BATCH]
        lims, _, ids = index.range_search(vectors[queries], radius)
        rows = np.repeat(queries, np.diff(lims.astype(np.int64)))
        ids = ids.astype(np.int64)
        other = ids != rows
        rows, ids = rows[other], ids[other]
        keep = pair_similarity(vectors[rows], vectors[ids]) >= np.float32(threshold)
        keys.append(canonical_keys(rows[keep], ids[keep], n))
    return np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)


def flat_sample_search(vectors: np.ndarray, sample: np.ndarray, shards: int, threshold: float) -> dict:
    """The stage's flat shards with all rows added and only the sample searched; add and search timed apart."""
    n = len(vectors)
    ranks = np.arange(n, dtype=np.int64)
    config = IndexConfig(kind="flat", shards=shards)
    started, cpu_started = time.perf_counter(), time.process_time()
    index_shards = [IndexShard(config, vectors.shape[1], shard_id=s) for s in range(shards)]
    for start in range(0, n, QUERY_BATCH):  # batches as search_in_process adds them
        for shard in index_shards:
            shard.add(ranks[start:start + QUERY_BATCH], vectors[start:start + QUERY_BATCH])
    add_s, add_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    started, cpu_started = time.perf_counter(), time.process_time()
    results = [
        shard.search(sample[start:start + QUERY_BATCH], vectors[sample[start:start + QUERY_BATCH]], threshold)
        for start in range(0, len(sample), QUERY_BATCH)
        for shard in index_shards
    ]
    search_s, search_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    pairs_a = np.concatenate([r.pairs_a for r in results])
    pairs_b = np.concatenate([r.pairs_b for r in results])
    scale = n / len(sample)
    return {
        "sample_rows": len(sample),
        "add_s": round(add_s, 2),
        "add_cpu_s": round(add_cpu_s, 2),
        "search_s": round(search_s, 2),
        "search_cpu_s": round(search_cpu_s, 2),
        "extrapolated_s": round(add_s + search_s * scale, 1),
        "extrapolated_cpu_s": round(add_cpu_s + search_cpu_s * scale, 1),
        "pairs": len(pairs_a),
        "researched_queries": int(np.unique(np.concatenate([r.researched for r in results])).size),
        "_keys": canonical_keys(pairs_a, pairs_b, n),
    }


def ivf_build(vectors: np.ndarray) -> tuple[bytes, dict]:
    """The shared quantizer, trained on the same ranks as search_in_process would pick."""
    n = len(vectors)
    nlist = default_nlist(n)
    train_ranks = training_sample_ranks(n, nlist)
    trained = train_quantizer(vectors[train_ranks], nlist)
    return trained, {"nlist": nlist, "training_rows": len(train_ranks)}


def describe_data(n, vectors, groups, threshold, generate) -> dict:
    pa_, pb_, ps_ = planted_pairs(vectors, groups)
    return {
        "n": n,
        "vectors_mb": round(vectors.nbytes / 2**20, 1),
        "planted_groups": len(groups),
        "planted_rows": int(sum(len(g) for g in groups)),
        "planted_pairs": len(pa_),
        "planted_pairs_at_or_above_threshold": int((ps_ >= np.float32(threshold)).sum()),
        "generate": generate,
        "_planted_keys": canonical_keys(pa_[ps_ >= np.float32(threshold)], pb_[ps_ >= np.float32(threshold)], n),
    }


def index_at_size(n: int, args, meter: Meter) -> dict:
    """Every variant at one N: their records, quality and the extrapolation check (the vectors die here)."""
    (vectors, groups), generate = meter.run(
        partial(make_vectors, n, args.dup_fraction, args.background, args.seed)
    )
    data = describe_data(n, vectors, groups, args.threshold, generate)
    print(f"N={n}: {data['planted_pairs']} planted pairs, generated in {generate['wall_s']} s", flush=True)
    sample = evenly_spaced(n, args.sample)
    variants, keys, truth = run_variants(vectors, sample, args, meter)
    return {
        "data": {k: v for k, v in data.items() if not k.startswith("_")},
        "variants": variants,
        "quality": index_quality(n, keys, truth, sample, data["_planted_keys"]),
        "flat_extrapolation_check": extrapolation_check(variants, args.shards),
    }


def run_variants(vectors: np.ndarray, sample: np.ndarray, args, meter: Meter):
    """(records by variant, pair keys of the full searches, exact pair keys involving the sample)."""
    n, threshold = len(vectors), args.threshold
    ranks = np.arange(n, dtype=np.int64)
    variants: dict[str, dict] = {}
    keys: dict[str, np.ndarray] = {}

    def report(name: str, record: dict) -> None:
        variants[name] = record
        extra = f", {record['pairs']} pairs" if "pairs" in record else ""
        print(f"  N={n} {name:15s} {record['wall_s']:9.2f} s (cpu {record['cpu_s']:9.2f} s{extra}), "
              f"peak {record['peak_mb']} MB, load {record['load_1m_after']}", flush=True)

    def full_search(kind: str, shards: int, trained: bytes | None = None) -> dict:
        config = IndexConfig(kind=kind, shards=shards)
        neighbors, record = meter.run(partial(search_in_process, ranks, vectors, config, threshold, trained=trained))
        keys[f"{kind}_{shards}"] = pair_keys(neighbors, n)
        return {**record, "pairs": len(neighbors.pairs_a), "researched_queries": int(neighbors.researched)}

    (trained, ivf_settings), record = meter.run(partial(ivf_build, vectors))
    report("ivf_train", {**record, **ivf_settings})
    train = variants["ivf_train"]
    for shards in args.shards:
        record = full_search("ivf", shards, trained)
        record["with_train_wall_s"] = round(record["wall_s"] + train["wall_s"], 2)
        record["with_train_cpu_s"] = round(record["cpu_s"] + train["cpu_s"], 2)
        report(f"ivf_{shards}", record)
    if n <= args.flat_full_max:
        for shards in args.shards:
            report(f"flat_{shards}", full_search("flat", shards))

    truth, record = meter.run(partial(exact_pairs_involving, vectors, sample, threshold))
    report("exact_sample", {**record, "sample_rows": len(sample), "pairs": len(truth)})
    # The stage reports a pair to its lower rank only: its sample pairs are the exact ones whose lower rank is sampled.
    lower_sampled = truth[np.isin(truth // n, sample)]
    for shards in args.shards:
        found, record = meter.run(partial(flat_sample_search, vectors, sample, shards, threshold))
        found["matches_exact"] = bool(np.array_equal(found.pop("_keys"), lower_sampled))
        report(f"flat_sample_{shards}", {**record, **found})
    return variants, keys, truth


def index_quality(n: int, keys: dict, truth: np.ndarray, sample: np.ndarray, planted: np.ndarray) -> dict:
    quality: dict = {"sample_rows": len(sample), "exact_pairs_involving_sample": len(truth)}
    for name, found in keys.items():
        if not name.startswith("ivf_"):
            continue
        mine = involving(found, sample, n)
        hit = np.isin(truth, mine)
        quality[f"{name}_recall_on_sample"] = round(float(hit.mean()) if len(truth) else 1.0, 6)
        quality[f"{name}_missed_on_sample"] = int((~hit).sum())
        quality[f"{name}_pairs_not_exact_on_sample"] = int((~np.isin(mine, truth)).sum())
    if "flat_1" in keys:
        reference = keys["flat_1"]
        quality["flat_1_pairs"] = len(reference)
        quality["flat_1_planted_pairs_found"] = int(np.isin(planted, reference).sum())
        quality["planted_pairs_at_or_above_threshold"] = len(planted)
        quality["flat_1_sample_pairs_match_exact"] = bool(np.array_equal(involving(reference, sample, n), truth))
        for name, found in keys.items():
            if name != "flat_1":
                quality[f"{name}_recall_vs_flat_1"] = round(
                    float(np.isin(reference, found).mean()) if len(reference) else 1.0, 6
                )
    for kind in ("ivf", "flat"):
        shard_counts = sorted(int(k.split("_")[1]) for k in keys if k.startswith(kind + "_"))
        for shards in shard_counts[1:]:
            one, many = keys[f"{kind}_{shard_counts[0]}"], keys[f"{kind}_{shards}"]
            quality[f"{kind}_{shards}_identical_pairs_to_{kind}_{shard_counts[0]}"] = bool(np.array_equal(one, many))
    return quality


def extrapolation_check(variants: dict, shard_counts: list[int]) -> dict | None:
    """Where flat ran in full: measured / extrapolated-from-the-sample, wall and CPU."""
    check = {}
    for shards in shard_counts:
        full, sampled = variants.get(f"flat_{shards}"), variants.get(f"flat_sample_{shards}")
        if full and sampled:
            check[f"flat_{shards}"] = {
                "measured_s": full["wall_s"],
                "extrapolated_s": sampled["extrapolated_s"],
                "wall_ratio": round(full["wall_s"] / sampled["extrapolated_s"], 3),
                "measured_cpu_s": full["cpu_s"],
                "extrapolated_cpu_s": sampled["extrapolated_cpu_s"],
                "cpu_ratio": round(full["cpu_s"] / sampled["extrapolated_cpu_s"], 3),
            }
    return check or None


def run_index_part(args) -> dict:
    started_at, load_start, wall = now_iso(), loadavg(), time.perf_counter()
    meter = Meter()
    sizes = {}
    for n in args.sizes:
        sizes[str(n)] = index_at_size(n, args, meter)
    defaults = IndexConfig()
    return {
        "command": command_line(),
        "date": started_at,
        "machine": {**index_machine(), "load_at_start": load_start, "load_at_end": loadavg()},
        "settings": {
            "dim": DIM,
            "background": args.background,
            "dup_fraction": args.dup_fraction,
            "seed": args.seed,
            "record_threshold": args.threshold,
            "max_neighbors": defaults.max_neighbors,
            "nprobe": defaults.nprobe,
            "shards": args.shards,
            "flat_full_max": args.flat_full_max,
            "sample": args.sample,
            "query_batch": QUERY_BATCH,
        },
        "sizes": sizes,
        "memory": {
            "process_peak_rss_mb": meter.process_peak_mb,
            "per_variant": "peak_mb = VmHWM since a reset just before the variant" if meter.can_reset
            else "VmHWM reset not available: peak_mb is null",
        },
        "wall_s": round(time.perf_counter() - wall, 1),
    }


# --- job part: what a run leaves behind --------------------------------------------------------------


def timeline(samples: list[dict], every_s: float) -> list[dict]:
    """About one sample per `every_s` seconds (the first with PSS in each window), and the last one."""
    picked, next_t = [], 0.0
    for s in samples:
        if s["t"] >= next_t and s["tree_pss_mb"] is not None:
            picked.append(s)
            next_t = s["t"] + every_s
    if samples and (not picked or picked[-1] is not samples[-1]):
        picked.append(samples[-1])
    return picked


def dir_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return round(total / 2**20, 1)


def output_sizes(output: Path) -> dict:
    sizes = {"total_mb": dir_mb(output), "input_sample_mb": dir_mb(output / "_work" / "sample")}
    for sub in ("data", "removed", "rejected", "neighbors", "_work"):
        if (output / sub).exists():
            sizes[f"{sub}_mb"] = dir_mb(output / sub)
    return sizes


def manifest_summary(manifest: dict) -> dict:
    rows = manifest["rows"]
    dedup = manifest.get("dedup") or None
    return {
        "timings_s": manifest["timings_s"],
        "rows": {k: rows[k] for k in ("read", "kept", "removed", "rejected")},
        "stages": [{k: s[k] for k in ("stage", "in", "out", "dropped")} for s in rows["stages"]],
        "dedup": {k: v for k, v in dedup.items() if k != "neighbor_files"} if dedup else None,
        "ray_cluster_resources": manifest.get("ray", {}).get("cluster_resources"),
    }


def job_command(rows: int, dedup: bool, output: Path, extra: str) -> list[str]:
    command = [sys.executable, "-m", "jobs.cli", "prepare", "--input", "sample", "--sample-rows", str(rows),
               "--output", str(output), "--overwrite"]
    return command + ([] if dedup else ["--no-dedup"]) + shlex.split(extra)


def run_job(rows: int, dedup: bool, args) -> dict:
    """One job as a subprocess, sampled; returns its record. Its output is deleted afterwards."""
    if args.reuse_outputs:
        # A kept output is rerun with --overwrite, which keeps _work/: its vectors store is reused, so the
        # stages after embedding (index, recall, resolve: the driver's memory) are measured without re-embedding.
        workdir = Path(args.reuse_outputs) / f"{'dedup' if dedup else 'nodedup'}_{rows}"
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"chatsieve-scaling-{rows}-", dir=args.tmp_dir))
    log_path = workdir.with_suffix(".log")  # beside the output, so it survives the output's deletion
    output = workdir / "out"
    command = job_command(rows, dedup, output, args.job_args)
    load_before, mem_before = loadavg(), mem_available_mb()
    try:
        returncode, wall_s, sampler = run_sampled(command, log_path, args)
        record = {
            "rows": rows,
            "dedup": dedup,
            "command": " ".join(shlex.quote(x) for x in ["python", *command[1:]]),
            "returncode": returncode,
            "wall_s": round(wall_s, 1),
            "tree_cpu_s": round(sampler.tree_cpu_s, 1),
            "load_before": load_before,
            "load_after": loadavg(),
            "mem_available_mb_before": mem_before,
            "memory": memory_record(sampler),
            "stage_events": sampler.events,
            "timeline": timeline(sampler.samples, args.timeline_s),
            "sampler": {"interval_s": args.interval, "pss_every": args.pss_every, "samples": len(sampler.samples),
                        "own_cpu_s": round(sampler.cpu_s, 2)},
        }
        if returncode == 0 and (output / "manifest.json").exists():
            record["manifest"] = manifest_summary(json.loads((output / "manifest.json").read_text()))
            record["sizes"] = output_sizes(output)
        else:
            record["log_tail"] = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            record["log"] = str(log_path)
    finally:
        if not (args.keep_outputs or args.reuse_outputs):  # 1M rows leave a few GB
            shutil.rmtree(workdir, ignore_errors=True)
    if "manifest" in record and not (args.keep_outputs or args.reuse_outputs):
        log_path.unlink(missing_ok=True)
    return record


def driver_memory_vs_volume(runs: dict, dedup: bool = False) -> dict | None:
    """The runs with (or without) dedup side by side: input size against the driver's peak RSS, overall and
    per stage."""
    nodedup = sorted((r for r in runs.values() if r["dedup"] == dedup and "manifest" in r), key=lambda r: r["rows"])
    if len(nodedup) < 2:
        return None
    small, large = nodedup[0], nodedup[-1]
    stages = [name for name in large["memory"]["per_stage"] if name in small["memory"]["per_stage"]]
    return {
        "rows": [r["rows"] for r in nodedup],
        "input_sample_mb": [r["sizes"]["input_sample_mb"] for r in nodedup],
        "driver_peak_rss_mb": [r["memory"]["driver_peak_rss_mb"] for r in nodedup],
        "input_ratio_largest_vs_smallest": round(
            large["sizes"]["input_sample_mb"] / small["sizes"]["input_sample_mb"], 2
        ),
        "driver_peak_ratio_largest_vs_smallest": round(
            large["memory"]["driver_peak_rss_mb"] / small["memory"]["driver_peak_rss_mb"], 3
        ),
        "driver_peak_rss_mb_per_stage": {
            name: [r["memory"]["per_stage"][name]["driver_peak_rss_mb"] for r in nodedup] for name in stages
        },
    }


def run_job_part(args) -> dict:
    started_at, load_start, wall = now_iso(), loadavg(), time.perf_counter()
    plan = [(rows, False) for rows in args.job_rows_nodedup] + [(rows, True) for rows in args.job_rows_dedup]
    runs = {}
    for rows, dedup in plan:
        name = f"{'dedup' if dedup else 'nodedup'}_{rows}"
        print(f"job {name}: starting, load {loadavg()}", flush=True)
        record = run_job(rows, dedup, args)
        runs[name] = record
        memory = record["memory"]
        print(f"job {name}: rc {record['returncode']}, {record['wall_s']} s, driver peak "
              f"{memory['driver_peak_rss_mb']} MB, tree peak RSS {memory['tree_peak_rss_mb']} MB / PSS "
              f"{memory['tree_peak_pss_mb']} MB, timings {record.get('manifest', {}).get('timings_s')}", flush=True)
        # Each finished run is saved at once: the later ones take long, and a stopped run keeps the earlier.
        write_part(args.out, "job", job_report(runs, args, started_at, load_start, wall))
    return job_report(runs, args, started_at, load_start, wall)


def job_report(runs: dict, args, started_at: str, load_start, wall: float) -> dict:
    return {
        "command": command_line(),
        "date": started_at,
        "machine": {**base_machine(), "load_at_start": load_start, "load_at_end": loadavg()},
        "settings": {"interval_s": args.interval, "pss_every": args.pss_every, "job_args": args.job_args,
                     "ray_address": "local"},
        "runs": runs,
        "driver_memory_vs_volume": driver_memory_vs_volume(runs),
        "driver_memory_vs_volume_dedup": driver_memory_vs_volume(runs, dedup=True),
        "wall_s": round(time.perf_counter() - wall, 1),
    }


# --- main -------------------------------------------------------------------------------------------


def write_part(out: Path, part: str, report: dict) -> None:
    """Replace one part of the JSON file, keeping the other part of an earlier run."""
    existing = {}
    if out.exists():
        try:
            existing = json.loads(out.read_text())
        except ValueError:
            existing = {}
    if existing.get("benchmark") != "scaling":
        existing = {"benchmark": "scaling"}
    existing[part] = report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote the {part} part of {out}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="The recorded run, estimated for the busy 2-core machine: index part ~1-2 h (1M: ivf ~0.5-1 h, "
        "the flat sample ~10-15 min), job part ~1-1.5 h (most of it embedding 100k rows on CPU).",
    )
    parser.add_argument("--part", choices=("all", "index", "job"), default="all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"JSON file (default {DEFAULT_OUT.relative_to(REPO)})")
    index = parser.add_argument_group("index part")
    index.add_argument("--sizes", type=int_list, default=[10_000, 100_000, 1_000_000],
                       help="vector counts, comma-separated (default 10000,100000,1000000)")
    index.add_argument("--shards", type=int_list, default=[1, 4], help="shard counts (default 1,4)")
    index.add_argument("--flat-full-max", type=int, default=100_000,
                       help="largest N searched with flat in full (default 100000)")
    index.add_argument("--sample", type=int, default=20_000,
                       help="query rows of the flat sample and ivf recall (default 20000)")
    index.add_argument("--threshold", type=float, default=0.90, help="record threshold (default 0.90)")
    index.add_argument("--dup-fraction", type=float, default=0.02, help="rows in planted groups (default 0.02)")
    index.add_argument("--background", choices=("clustered", "uniform"), default="clustered")
    index.add_argument("--seed", type=int, default=0)
    job = parser.add_argument_group("job part")
    job.add_argument("--job-rows-nodedup", type=int_list, default=[100_000, 1_000_000],
                     help="sample rows of the --no-dedup jobs (default 100000,1000000; two sizes or more compare "
                     "the driver's memory)")
    job.add_argument("--job-rows-dedup", type=int_list, default=[100_000],
                     help="sample rows of the jobs with dedup (default 100000; '' runs none)")
    job.add_argument("--job-args", default="", help="extra flags for every prepare run, e.g. '--index ivf'")
    job.add_argument("--interval", type=float, default=0.5, help="memory sampling interval in s (default 0.5)")
    job.add_argument("--pss-every", type=int, default=4,
                     help="read PSS every this many samples (default 4: every 2 s; it costs ~1-3 ms a process)")
    job.add_argument("--timeline-s", type=float, default=5.0, help="seconds between recorded timeline samples")
    job.add_argument("--job-timeout-s", type=float, default=6 * 3600, help="stop a job after this (default 6 h)")
    job.add_argument("--tmp-dir", default="/tmp", help="where the job outputs go (1M rows: a few GB)")
    job.add_argument("--keep-outputs", action="store_true", help="keep the job outputs and logs")
    job.add_argument("--reuse-outputs", metavar="DIR", default="",
                     help="keep each output under DIR/<run> and rerun into it (its vectors are reused)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    failed = False
    if args.part in ("all", "index"):
        write_part(args.out, "index", run_index_part(args))
    if args.part in ("all", "job"):
        report = run_job_part(args)
        write_part(args.out, "job", report)
        failed = any(r["returncode"] != 0 for r in report["runs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
