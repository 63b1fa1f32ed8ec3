"""Near-duplicate index search (`operators.index.search_in_process`) on synthetic vectors vs raw FAISS.

    python benchmarks/index_search.py --n 100000     # the recorded run (~10-20 min on a busy 2-core machine)
    python benchmarks/index_search.py --n 20000 --rounds 1 --out /tmp/index_search_20k.json   # quick check

This measures the index, not the model: the vectors are generated, 384-d, L2-normalized float32.
  background  a clustered cloud like real sentence embeddings: n/100 random "topic" directions, each row a
              topic direction plus gaussian noise (cosine ~0.5 to its topic, ~0.25 between rows of a topic,
              so no background pair comes near the 0.90 record threshold). `--background uniform` draws
              rows uniformly on the sphere instead (the hardest case for IVF: no structure to partition).
  planted     --dup-fraction (2%) of the rows are near-duplicate groups of 2-10: an original row plus copies
              with gaussian noise of relative size 0.10-0.30 (cosine 0.96-0.995 to the original, ~0.92-0.99
              between two copies). Rows are shuffled, so groups straddle query batches and shards.

Each round runs every variant once, interleaved: the flat group (raw_flat, flat_1, flat_4), then the ivf group
(raw_ivf, ivf_1, ivf_4), each group forward in even rounds and backward in odd ones (A B C / C B A):
  raw_flat   faiss.IndexFlatIP: add all rows, search all rows for k=65 (max_neighbors + 1): the library's
             own cost of the flat k-NN pass, the baseline for flat's ratio.
  raw_ivf    faiss.IndexIVFFlat (inner product, spherical k-means, same nlist and training sample as the
             stage, nprobe 16): train, add, search k=65: the baseline for ivf's ratio.
  flat_1, flat_4, ivf_1, ivf_4
             search_in_process(ranks, vectors, IndexConfig(kind, shards), record_threshold=0.90), defaults
             otherwise (nlist round(4 sqrt n), nprobe 16, max_neighbors 64); ivf includes training the
             shared quantizer. The stage does more than the raw k-NN: exact pair similarities, the
             re-search of queries that hit the bound, deterministic IVF list assignment, the merge.
Ratios are raw time / stage time (1.0 = no overhead; < 1: the stage is slower): per round, their median,
and the ratio of the total times over all rounds (with the A B C / C B A order, a load that drifts linearly
cancels out of the latter; run an even number of rounds). The process CPU-time ratio is recorded as well:
on a shared machine it moves much less than wall time.

Quality: pairs found, recall of the ivf pairs against the flat pairs (flat is exact: every pair whose
recomputed cosine is >= 0.90), whether 1 and 4 shards give identical pairs, and the planted pairs the
flat search should find (planted pairs whose cosine is >= 0.90).

Memory: the process's peak RSS (ru_maxrss), and, where /proc/self/clear_refs allows resetting the
high-water mark, each run's own peak (VmHWM) and the RSS it started from (memory the allocator kept from
earlier runs is part of both). Resetting VmHWM resets ru_maxrss too, so the process peak is tracked as a
running max across the resets.

No timing asserts: the JSON records numbers with the machine load at start and end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faiss
import numpy as np
from machine import loadavg
from machine import machine as base_machine

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from operators.index import (
    IndexConfig,
    default_nlist,
    pair_similarity,
    search_in_process,
    training_sample_ranks,
)

DIM = 384


# --- machine -------------------------------------------------------------------------------------


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset this process's peak-RSS mark (VmHWM), so the next step's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> dict:
    return {
        **base_machine(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
    }


# --- data ----------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_vectors(n: int, dup_fraction: float, background: str, seed: int):
    """(vectors float32 [n, DIM] unit rows in rank order, groups: list of rank arrays of planted groups)."""
    rng = np.random.default_rng(seed)
    planted_rows = int(round(n * dup_fraction))
    sizes = []
    while sum(sizes) < planted_rows:
        sizes.append(int(rng.integers(2, 11)))  # 2..10
    if sizes and sum(sizes) > planted_rows:  # trim the last group to hit the fraction (keep >= 2)
        sizes[-1] -= sum(sizes) - planted_rows
        if sizes[-1] < 2:
            sizes.pop()
    copies = sum(s - 1 for s in sizes)
    originals = n - copies

    if background == "clustered":
        topics = _unit(rng.standard_normal((max(1, n // 100), DIM)).astype(np.float32))
        which = rng.integers(0, len(topics), originals)
        base = topics[which] + (math.sqrt(3.0) / math.sqrt(DIM)) * rng.standard_normal((originals, DIM)).astype(np.float32)
    else:
        base = rng.standard_normal((originals, DIM)).astype(np.float32)
    base = _unit(base).astype(np.float32)

    # Each group: one original (a distinct background row) plus size-1 noisy copies of it.
    heads = rng.choice(originals, size=len(sizes), replace=False)
    noisy = []
    members = []  # per group: indices into the pre-shuffle array
    next_index = originals
    for head, size in zip(heads, sizes):
        sigma = rng.uniform(0.10, 0.30, size - 1).astype(np.float32)[:, None]
        noise = rng.standard_normal((size - 1, DIM)).astype(np.float32) / np.float32(math.sqrt(DIM))
        noisy.append(base[head] + sigma * noise)
        members.append(np.r_[head, np.arange(next_index, next_index + size - 1)])
        next_index += size - 1
    vectors = np.concatenate([base] + [_unit(x).astype(np.float32) for x in noisy]) if noisy else base
    # Shuffle: rank r holds vectors[perm[r]]; groups straddle query batches and shards.
    perm = rng.permutation(n)
    rank_of = np.empty(n, np.int64)
    rank_of[perm] = np.arange(n)
    groups = [np.sort(rank_of[m]) for m in members]
    return np.ascontiguousarray(vectors[perm], dtype=np.float32), groups


def planted_pairs(vectors: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = [], []
    for g in groups:
        i, j = np.triu_indices(len(g), 1)
        a.append(g[i])
        b.append(g[j])
    a = np.concatenate(a) if a else np.empty(0, np.int64)
    b = np.concatenate(b) if b else np.empty(0, np.int64)
    return a, b, pair_similarity(vectors[a], vectors[b])


# --- variants ------------------------------------------------------------------------------------


def raw_flat(vectors: np.ndarray, k: int):
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(vectors, k)


def raw_ivf(vectors: np.ndarray, k: int, nlist: int, nprobe: int, train_ranks: np.ndarray):
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 0
    index.cp.spherical = True
    index.train(vectors[train_ranks])
    index.add(vectors)
    index.nprobe = nprobe
    return index.search(vectors, k)


def pair_keys(neighbors, n: int) -> np.ndarray:
    return neighbors.pairs_a.astype(np.int64) * n + neighbors.pairs_b.astype(np.int64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows (default 100000)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--threshold", type=float, default=0.90, help="record threshold (default 0.90)")
    parser.add_argument("--dup-fraction", type=float, default=0.02, help="rows in planted groups (default 0.02)")
    parser.add_argument("--background", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants", default="raw_flat,flat_1,flat_4,raw_ivf,ivf_1,ivf_4",
        help="comma-separated subset of raw_flat,flat_1,flat_4,raw_ivf,ivf_1,ivf_4",
    )
    parser.add_argument("--out", default=None, help="default benchmarks/results/index_search_<n/1000>k.json")
    args = parser.parse_args(argv)
    n = args.n
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"index_search_{n // 1000}k.json"

    started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = loadavg()
    wall = time.perf_counter()

    t0 = time.perf_counter()
    vectors, groups = make_vectors(n, args.dup_fraction, args.background, args.seed)
    ranks = np.arange(n, dtype=np.int64)
    gen_s = time.perf_counter() - t0
    pa_, pb_, ps_ = planted_pairs(vectors, groups)
    planted_above = int((ps_ >= np.float32(args.threshold)).sum())
    print(
        f"n={n}: {len(groups)} planted groups ({sum(len(g) for g in groups)} rows, {len(pa_)} pairs, "
        f"{planted_above} >= {args.threshold}; cosine min {ps_.min():.4f} median {np.median(ps_):.4f} max "
        f"{ps_.max():.4f}), generated in {gen_s:.1f} s, load {load_start}",
        flush=True,
    )

    defaults = IndexConfig()
    k = defaults.max_neighbors + 1
    nlist = default_nlist(n)
    train_ranks = training_sample_ranks(n, nlist)
    runners = {
        "raw_flat": lambda: raw_flat(vectors, k),
        "flat_1": lambda: search_in_process(ranks, vectors, IndexConfig(kind="flat", shards=1), args.threshold),
        "flat_4": lambda: search_in_process(ranks, vectors, IndexConfig(kind="flat", shards=4), args.threshold),
        "raw_ivf": lambda: raw_ivf(vectors, k, nlist, defaults.nprobe, train_ranks),
        "ivf_1": lambda: search_in_process(ranks, vectors, IndexConfig(kind="ivf", shards=1), args.threshold),
        "ivf_4": lambda: search_in_process(ranks, vectors, IndexConfig(kind="ivf", shards=4), args.threshold),
    }
    order = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(order) - set(runners)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    # Rounds run the flat group (raw_flat, flat_1, flat_4) then the ivf group; within a group the order is
    # forward in even rounds and backward in odd ones (A B C, C B A): a load that drifts linearly over a
    # round pair weighs on every variant the same, and the ratio of total times cancels it.
    groups = [[key for key in order if "flat" in key], [key for key in order if "ivf" in key]]
    times = {key: [] for key in order}
    cpu = {key: [] for key in order}
    peaks = {key: [] for key in order}  # (rss before, VmHWM during) per run
    process_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    rounds_log = []
    can_reset = reset_hwm()
    for r in range(args.rounds):
        this_round = [key for group in groups for key in (group if r % 2 == 0 else group[::-1])]
        entry = {"order": this_round, "load_1m_before": loadavg()[0]}
        for key in this_round:
            rss_before = _status_mb("VmRSS")
            if can_reset:
                # Resetting VmHWM also resets what ru_maxrss reports for this process (both read the
                # mm's high-water mark), so the process peak is kept here, across resets.
                process_peak_kb = max(process_peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                reset_hwm()
            started, cpu_started = time.perf_counter(), time.process_time()
            result = runners[key]()
            elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
            peaks[key].append((rss_before, _status_mb("VmHWM")))
            process_peak_kb = max(process_peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            times[key].append(elapsed)
            cpu[key].append(cpu_s)
            if not key.startswith("raw_"):
                results[key] = result  # raw k-NN results (78 MB at 100k) are not kept
            entry[f"{key}_s"] = round(elapsed, 2)
            entry[f"{key}_cpu_s"] = round(cpu_s, 2)
            entry[f"{key}_load_1m_after"] = loadavg()[0]
            found = f", {len(result.pairs_a)} pairs" if hasattr(result, "pairs_a") else ""
            print(
                f"  round {r} {key:8s} {elapsed:8.2f} s (cpu {cpu_s:7.2f} s{found}), load {loadavg()[0]}",
                flush=True,
            )
            del result
        rounds_log.append(entry)
    process_peak_kb = max(process_peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def summarize(values):
        return {
            "runs_s": [round(t, 2) for t in values],
            "best_s": round(min(values), 2),
            "median_s": round(statistics.median(values), 2),
        }

    def ratio(stage, raw):
        if stage not in times or raw not in times:
            return None
        per_round = [b / a for a, b in zip(times[stage], times[raw])]
        return {
            "baseline": raw,
            "per_round": [round(x, 3) for x in per_round],
            "median": round(statistics.median(per_round), 3),
            "of_total_times": round(sum(times[raw]) / sum(times[stage]), 3),
            "of_best_times": round(min(times[raw]) / min(times[stage]), 3),
            "process_cpu_time_of_totals": round(sum(cpu[raw]) / sum(cpu[stage]), 3),
        }

    def memory(key):
        if not can_reset:
            return None
        before = [b for b, _ in peaks[key]]
        hwm = [h for _, h in peaks[key]]
        return {
            "rss_before_mb": before,
            "peak_mb": hwm,
            "max_growth_mb": round(max(h - b for b, h in peaks[key]), 1),
        }

    quality = {}
    stage_keys = [key for key in order if not key.startswith("raw_")]
    for key in stage_keys:
        nb = results[key]
        quality[key] = {
            "pairs": len(nb.pairs_a),
            "researched_queries": int(nb.researched),
            "rows_with_a_pair": int(np.unique(np.r_[nb.pairs_a, nb.pairs_b]).size),
        }
    keys = {key: pair_keys(results[key], n) for key in stage_keys}
    if "flat_1" in keys:
        reference = keys["flat_1"]
        planted_set = pa_[ps_ >= np.float32(args.threshold)] * n + pb_[ps_ >= np.float32(args.threshold)]
        quality["flat_1"]["planted_pairs_found"] = int(np.isin(planted_set, reference).sum())
        quality["flat_1"]["pairs_not_planted"] = int((~np.isin(reference, pa_ * n + pb_)).sum())
        for key in stage_keys:
            if key == "flat_1":
                continue
            found = np.isin(reference, keys[key])
            quality[key]["recall_vs_flat_1"] = round(float(found.mean()) if len(reference) else 1.0, 6)
            quality[key]["pairs_missed_vs_flat_1"] = int((~found).sum())
            quality[key]["pairs_not_in_flat_1"] = int((~np.isin(keys[key], reference)).sum())
            flat_best = results["flat_1"].best_rank
            has = results["flat_1"].best_sim >= np.float32(args.threshold)
            quality[key]["best_neighbour_agrees_with_flat_1"] = round(
                float((results[key].best_rank[has] == flat_best[has]).mean()) if has.any() else 1.0, 6
            )
    for one, four in (("flat_1", "flat_4"), ("ivf_1", "ivf_4")):
        if one in results and four in results:
            a, b = results[one], results[four]
            quality[four][f"identical_pairs_to_{one}"] = bool(
                np.array_equal(a.pairs_a, b.pairs_a) and np.array_equal(a.pairs_b, b.pairs_b)
                and np.array_equal(a.pairs_sim, b.pairs_sim)
            )

    report = {
        "benchmark": "index_search",
        "command": "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "date": started_at,
        "machine": {
            **machine(),
            "load_at_start": load_start,
            "load_at_end": loadavg(),
            "peak_rss_mb": round(process_peak_kb / 1024, 1),
        },
        "data": {
            "n": n,
            "dim": DIM,
            "background": args.background,
            "seed": args.seed,
            "vectors_mb": round(vectors.nbytes / 2**20, 1),
            "planted_groups": len(groups),
            "planted_rows": int(sum(len(g) for g in groups)),
            "planted_pairs": len(pa_),
            "planted_pairs_at_or_above_threshold": planted_above,
            "planted_pair_cosine": {
                "min": round(float(ps_.min()), 4),
                "median": round(float(np.median(ps_)), 4),
                "max": round(float(ps_.max()), 4),
            },
            "generate_s": round(gen_s, 2),
        },
        "settings": {
            "record_threshold": args.threshold,
            "max_neighbors": defaults.max_neighbors,
            "k": k,
            "nlist": nlist,
            "nprobe": defaults.nprobe,
            "ivf_training_rows": len(train_ranks),
            "rounds": args.rounds,
            "variants": order,
        },
        "times": {key: summarize(times[key]) for key in order},
        "process_cpu_times": {key: summarize(cpu[key]) for key in order},
        "ratio_vs_raw": {
            key: ratio(key, "raw_flat" if key.startswith("flat") else "raw_ivf")
            for key in stage_keys
        },
        "quality": quality,
        "memory": {
            "process_peak_rss_mb": round(process_peak_kb / 1024, 1),
            "how": "ru_maxrss (RUSAGE_SELF), kept as a running max across the per-variant VmHWM resets",
            "per_variant": {key: memory(key) for key in order} if can_reset else "VmHWM reset not available",
        },
        "rounds": rounds_log,
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ratio_vs_raw", "quality", "memory")}, indent=1), flush=True)
    print(f"wrote {out} ({report['wall_s']} s, load {load_start} -> {report['machine']['load_at_end']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
