"""The bf16 prefilter against full fp32, in the real job on every real data set: decisions, pairs, and how far
bf16 moves the similarities the prefilter's margin must cover.

    python benchmarks/prefilter_agreement.py                                   # ../shared/data, three --dedup-on
    python benchmarks/prefilter_agreement.py --dedup-on user --out /tmp/pa.json

For each --dedup-on, `chatsieve prepare` over every file of ../shared/data (all formats; rows no reader
understands are rejected, as in any run), run twice one after the other on the same input and settings:
`--embed-prefilter none` (every text embedded in fp32: the reference) and `--embed-prefilter bf16`.

Compared, from the two outputs:
- the removed rows (id, reason, duplicate_of): how many differ;
- the recorded pairs (neighbors/pairs, by ids): pairs only one run recorded, and the largest |similarity
  difference| over the pairs both recorded (the prefilter's are recomputed in fp32: ~1e-7 expected);
- from the two vector stores, which hold every text in fp32 (first run) and in bf16 (second run): over every
  pair of texts whose fp32 cosine is >= --pair-floor, the largest |bf16 - fp32| (what the margin must cover:
  measured here over all such pairs, not only the pairs the prefilter found), and the pairs the prefilter can
  miss (fp32 >= the record threshold, bf16 below the prefilter's floor): must be none.
Wall time of each run (ratio fp32 / prefilter), with the load average: other work may share the machine.

Needs a CPU with bf16 units (AMX or AVX512_BF16); exits with a message otherwise, or without ../shared/data.
No assertions: the numbers are recorded (benchmarks/results/prefilter_agreement.json).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow.parquet as pq
from machine import BenchmarkRun, loadavg

from operators.embed_backends import cpu_has_bf16

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SHARED_DATA = REPO.parent / "shared" / "data"
BLOCK = 2048


def run_job(input_dir: Path, out: Path, dedup_on: str, prefilter: str, log: Path) -> dict:
    command = [sys.executable, "-m", "jobs.cli", "prepare", "--input", str(input_dir), "--output", str(out),
               "--overwrite", "--dedup-on", dedup_on, "--embed-prefilter", prefilter]
    load = loadavg()
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "RAY_ADDRESS": "local"}).returncode
    wall = time.perf_counter() - started
    if code:
        raise SystemExit(f"{' '.join(command)} failed ({code}): see {log}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 1), "load_before": load, "manifest": manifest}


def removed(out: Path) -> set[tuple]:
    table = pq.read_table(out / "removed", columns=["id", "reason", "duplicate_of"])
    return set(zip(*(table.column(c).to_pylist() for c in ("id", "reason", "duplicate_of"))))


def pairs(out: Path) -> dict[tuple[str, str], float]:
    table = pq.read_table(out / "neighbors" / "pairs")
    return dict(zip(zip(table.column("id_a").to_pylist(), table.column("id_b").to_pylist()),
                    table.column("similarity").to_pylist()))


def store(out: Path, runtime: str) -> dict[str, np.ndarray]:
    """text_sha1 -> vector, from the output's vectors store of `runtime` (first file in name order wins)."""
    root = out / "_work" / "vectors"
    for directory in sorted(root.iterdir()):
        if json.loads((directory / "settings.json").read_text())["runtime"] != runtime:
            continue
        vectors: dict[str, np.ndarray] = {}
        for path in sorted(directory.glob("part-*.parquet")):
            table = pq.read_table(path, columns=["text_sha1", "vector"])
            flat = table.column("vector").combine_chunks()
            matrix = flat.flatten().to_numpy().reshape(table.num_rows, flat.type.list_size)
            for key, vector in zip(table.column("text_sha1").to_pylist(), matrix):
                vectors.setdefault(key, vector)
        return vectors
    raise SystemExit(f"no {runtime} vectors store under {root}")


def similarity_moves(fp32: dict[str, np.ndarray], bf16: dict[str, np.ndarray], pair_floor: float,
                     recorded: float, floor: float) -> dict:
    """Over every pair with fp32 cosine >= pair_floor: |bf16 - fp32| (the pair similarity as the index
    computes it, float32 dot products of unit vectors), and the pairs a prefilter searching down to `floor`
    would miss."""
    keys = sorted(set(fp32) & set(bf16))
    a = np.stack([fp32[k] for k in keys]).astype(np.float32)
    b = np.stack([bf16[k] for k in keys]).astype(np.float32)
    moves, missed, count = [], 0, 0
    for start in range(0, len(keys), BLOCK):
        exact = a[start : start + BLOCK] @ a.T
        rows, cols = np.nonzero(exact >= pair_floor)
        upper = cols > rows + start
        rows, cols = rows[upper], cols[upper]
        reduced = np.einsum("ij,ij->i", b[rows + start], b[cols])
        moved = np.abs(reduced.astype(np.float64) - exact[rows, cols])
        moves.append(moved)
        missed += int(np.sum((exact[rows, cols] >= np.float32(recorded)) & (reduced < np.float32(floor))))
        count += len(rows)
    moved = np.concatenate(moves) if moves else np.empty(0)
    return {
        "texts": len(keys), "pairs": count, "pair_floor": pair_floor,
        "max_moved": float(moved.max()) if count else 0.0,
        "p99_moved": float(np.quantile(moved, 0.99)) if count else 0.0,
        "mean_moved": float(moved.mean()) if count else 0.0,
        "pairs_moved_over_0.005": int(np.sum(moved > 0.005)), "pairs_moved_over_0.01": int(np.sum(moved > 0.01)),
        "missed_by_prefilter": missed,
    }


def compare(dedup_on: str, input_dir: Path, work: Path, pair_floor: float) -> dict:
    print(f"--dedup-on {dedup_on}", flush=True)
    fp32_out, bf16_out = work / f"{dedup_on}-fp32", work / f"{dedup_on}-prefilter"
    fp32 = run_job(input_dir, fp32_out, dedup_on, "none", work / f"{dedup_on}-fp32.log")
    print(f"  fp32 {fp32['wall_s']} s", flush=True)
    bf16 = run_job(input_dir, bf16_out, dedup_on, "bf16", work / f"{dedup_on}-prefilter.log")
    print(f"  prefilter {bf16['wall_s']} s", flush=True)
    dedup = bf16["manifest"]["dedup"]
    prefilter = dedup["prefilter"]
    removed_fp32, removed_bf16 = removed(fp32_out), removed(bf16_out)
    pairs_fp32, pairs_bf16 = pairs(fp32_out), pairs(bf16_out)
    both = set(pairs_fp32) & set(pairs_bf16)
    recorded = prefilter["floor"] + prefilter["margin"]
    moves = similarity_moves(store(fp32_out, fp32["manifest"]["dedup"]["vectors"]["runtime"]),
                             store(bf16_out, prefilter["runtime"]), pair_floor, recorded, prefilter["floor"])
    result = {
        "dedup_on": dedup_on,
        "rows": {k: fp32["manifest"]["rows"][k] for k in ("read", "kept", "removed", "rejected")},
        "texts_embedded": prefilter["texts"],
        "fp32": {k: v for k, v in fp32.items() if k != "manifest"},
        "prefilter": {k: v for k, v in bf16.items() if k != "manifest"},
        "speed_prefilter_vs_fp32": round(fp32["wall_s"] / bf16["wall_s"], 3),
        "prefilter_summary": prefilter,
        "removed": {"fp32": len(removed_fp32), "prefilter": len(removed_bf16),
                    "differ": len(removed_fp32 ^ removed_bf16)},
        "pairs": {"fp32": len(pairs_fp32), "prefilter": len(pairs_bf16),
                  "only_fp32": len(set(pairs_fp32) - both), "only_prefilter": len(set(pairs_bf16) - both),
                  "max_similarity_difference": max((abs(pairs_fp32[p] - pairs_bf16[p]) for p in both), default=0.0)},
        "moves": moves,
    }
    print(f"  removed differ {result['removed']['differ']}, pairs only in one {result['pairs']['only_fp32']} + "
          f"{result['pairs']['only_prefilter']}, max move {moves['max_moved']:.4f} over {moves['pairs']:,} pairs, "
          f"missed {moves['missed_by_prefilter']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the real data directory (every file in it)")
    parser.add_argument("--dedup-on", nargs="+", default=["conversation", "user", "assistant"])
    parser.add_argument("--pair-floor", type=float, default=0.8)
    parser.add_argument("--keep-outputs", type=Path, help="write the outputs here and keep them")
    parser.add_argument("--out", default=str(RESULTS / "prefilter_agreement.json"))
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no real data at {args.data}: nothing to measure")
        return None
    if not cpu_has_bf16():
        print("this CPU has no bf16 units (AMX or AVX512_BF16): the bf16 prefilter cannot run here")
        return None
    run = BenchmarkRun("prefilter_agreement", REPO)
    work = args.keep_outputs or Path(tempfile.mkdtemp(prefix="prefilter-agreement-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        files = sorted(str(p.relative_to(args.data)) for p in args.data.rglob("*") if p.is_file() and p.name != "README.md")
        results = [compare(dedup_on, args.data, work, args.pair_floor) for dedup_on in args.dedup_on]
    finally:
        if not args.keep_outputs:
            shutil.rmtree(work, ignore_errors=True)
    return run.write(args.out, input={"directory": os.path.relpath(args.data, REPO), "files": files}, results=results)


if __name__ == "__main__":
    main()
