"""IVF shard scan: chatsieve's list-by-list scan against FAISS's own query-by-query preassigned search.

    python benchmarks/ivf_scan.py --n 1000000 --queries 65536     # the recorded run (~4 min on 2 cores)
    python benchmarks/ivf_scan.py --n 100000 --queries 32768 --out /tmp/ivf_scan.json   # quick (~30 s)

The same IndexShard objects (shared quantizer, every row added as search_in_process adds them) answer the
same query batches two ways, alternating over --rounds rounds (A B, B A, ...): `faiss` is the reference path
(`search_preassigned` k-NN on FAISS's threads + `range_search_preassigned` for the queries that hit the
bound), `by_list` is the scan the stage runs (operators/index.py, `_list_candidates`). Queries: --queries
rows evenly spaced over all N, in --batch-row calls (IVF_QUERY_BATCH by default, as search_in_process
sends them). Vectors from index_search.py's generator (clustered background, 2% planted near-duplicates).
The quantizer trains on 16 * nlist rows (not the stage's 64 * nlist: this measures the scan, not k-means).
Recorded: wall time per variant and round, the ratio faiss / by_list of the best rounds, and whether both
return identical pairs, best neighbours and re-search counts (they must).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import operators.index as index_module  # noqa: E402
from index_search import make_vectors  # noqa: E402
from machine import BenchmarkRun  # noqa: E402
from operators.index import (  # noqa: E402
    IVF_QUERY_BATCH,
    CoarseAssigner,
    IndexConfig,
    IndexShard,
    default_nlist,
    train_quantizer,
    training_sample_ranks,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows indexed (default 1000000)")
    parser.add_argument("--queries", type=int, default=65_536, help="rows searched (default 65536)")
    parser.add_argument("--batch", type=int, default=IVF_QUERY_BATCH, help=f"queries per call ({IVF_QUERY_BATCH})")
    parser.add_argument("--shards", type=int, default=1, help="shards (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--threshold", type=float, default=0.90, help="record threshold (default 0.90)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "ivf_scan.json"))
    args = parser.parse_args(argv)

    run = BenchmarkRun("ivf_scan", HERE.parent)
    n = args.n
    t0 = time.perf_counter()
    vectors, _ = make_vectors(n, 0.02, "clustered", args.seed)
    ranks = np.arange(n, dtype=np.int64)
    nlist = default_nlist(n)
    trained = train_quantizer(vectors[training_sample_ranks(n, nlist)[: 16 * nlist]], nlist)
    config = IndexConfig(kind="ivf", shards=args.shards)
    shards = [IndexShard(config, vectors.shape[1], trained, shard_id=s) for s in range(args.shards)]
    assigner = CoarseAssigner(trained, config.nprobe)
    for start in range(0, n, 4096):
        batch = vectors[start:start + 4096]
        lists = assigner.lists(batch)
        for shard in shards:
            shard.add(ranks[start:start + 4096], batch, lists)
    sample = np.unique(np.linspace(0, n - 1, min(args.queries, n)).astype(np.int64))
    calls = [(sample[i:i + args.batch], assigner.probes(vectors[sample[i:i + args.batch]]))
             for i in range(0, len(sample), args.batch)]
    for shard in shards:
        shard._list_views()  # built once per sealed shard; not part of either variant's time
    setup_s = time.perf_counter() - t0
    print(f"n={n}, nlist {nlist}, {len(sample)} queries in {len(calls)} calls, set up in {setup_s:.0f} s", flush=True)

    times: dict[str, list[float]] = {"faiss": [], "by_list": []}
    answers = {}
    for round_index in range(args.rounds):
        order = ["faiss", "by_list"] if round_index % 2 == 0 else ["by_list", "faiss"]
        for variant in order:
            index_module._SCAN_BY_LIST = variant == "by_list"
            t = time.perf_counter()
            results = [shard.search(r, vectors[r], args.threshold, p) for r, p in calls for shard in shards]
            times[variant].append(round(time.perf_counter() - t, 3))
            answers[variant] = results
            print(f"round {round_index} {variant}: {times[variant][-1]} s", flush=True)
    index_module._SCAN_BY_LIST = True

    def combined(results):
        keyed = {name: np.concatenate([getattr(r, name) for r in results]) for name in
                 ("pairs_a", "pairs_b", "pairs_sim", "query_ranks", "best_rank", "best_sim")}
        order = np.lexsort((keyed["pairs_b"], keyed["pairs_a"]))
        by_query = np.lexsort((keyed["best_rank"], keyed["query_ranks"]))
        return ([keyed[f][order] for f in ("pairs_a", "pairs_b", "pairs_sim")]
                + [keyed[f][by_query] for f in ("query_ranks", "best_rank", "best_sim")]
                + [np.sort(np.concatenate([r.researched for r in results]))])

    identical = all(np.array_equal(a, b, equal_nan=True)
                    for a, b in zip(combined(answers["faiss"]), combined(answers["by_list"])))
    pairs = int(sum(len(r.pairs_a) for r in answers["by_list"]))
    ratio = round(min(times["faiss"]) / min(times["by_list"]), 2)
    print(f"by_list {ratio}x the speed of FAISS's scan; identical results: {identical}", flush=True)
    run.write(
        args.out,
        n=n, nlist=nlist, nprobe=config.nprobe, shards=args.shards, queries=len(sample),
        queries_per_call=args.batch, calls=len(calls), setup_s=round(setup_s, 1),
        times_s=times, faiss_over_by_list=ratio, identical=identical, pairs=pairs,
        projected_all_n_queries_s={v: round(min(t) * n / len(sample), 1) for v, t in times.items()},
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
