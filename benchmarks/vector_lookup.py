"""Reading the vectors store for the index: one pass with the lookup built once (HashLookup) vs `pc.index_in`
per stored file (its hash table of the wanted hashes rebuilt on every call), side by side on the same store.

    python benchmarks/vector_lookup.py --store OUTPUT/_work/vectors/<key>   # e.g. a kept 1M-row job's store

The wanted hashes are every stored text's, shuffled (a job's representatives). Both passes must yield the same
positions. No timing asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import BenchmarkRun  # noqa: E402
from jobs.dedup import SEARCH_BATCH  # noqa: E402
from jobs.vectors import HashLookup  # noqa: E402
from operators.exact_dedup import TEXT_SHA1  # noqa: E402


def one_pass(files: list[Path], positions_of) -> tuple[float, np.ndarray]:
    started, found = time.perf_counter(), []
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=SEARCH_BATCH, columns=[TEXT_SHA1, "vector"]):
            found.append(positions_of(batch.column(0)))
    return time.perf_counter() - started, np.concatenate(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vector_lookup.json"))
    args = parser.parse_args()
    run = BenchmarkRun("vector_lookup", REPO)
    files = sorted(args.store.glob("*.parquet"))
    hashes = pa.chunked_array([pq.read_table(f, columns=[TEXT_SHA1]).column(0) for f in files]).combine_chunks()
    wanted = hashes.take(pa.array(np.random.default_rng(0).permutation(len(hashes))))
    built = time.perf_counter()
    lookup = HashLookup(wanted)
    build_s = time.perf_counter() - built
    new_s, new = one_pass(files, lookup.positions)
    old_s, old = one_pass(files, lambda h: pc.fill_null(pc.index_in(h, value_set=wanted), -1).to_numpy())
    assert (new == old).all()
    report = run.write(args.out, files=len(files), vectors=len(hashes), lookup_build_s=round(build_s, 2),
                       pass_s={"hash_lookup": round(new_s, 2), "index_in_per_file": round(old_s, 2)},
                       speedup=round(old_s / (new_s + build_s), 1))
    print(report["pass_s"], report["lookup_build_s"], report["speedup"])


if __name__ == "__main__":
    main()
