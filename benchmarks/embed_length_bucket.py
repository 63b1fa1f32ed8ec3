"""OpenVINO's sequence-length bucket: the embedding actor's memory and speed with lengths padded to multiples of
1 (no padding), 8 (the default, OPENVINO_LENGTH_BUCKET), 16 and 32, in fp32 and (on CPUs with bf16 units) bf16.

    python benchmarks/embed_length_bucket.py                       # 3,000 real rows' answers, 2 rounds
    python benchmarks/embed_length_bucket.py --real-rows 600 --rounds 1 --out /tmp/bucket.json   # quick

Why: OpenVINO's CPU plugin keeps memory for every input shape it has run, and a 256-piece window gives up to 256
sequence lengths: the actor peaked at ~800 MB in the job (RESULTS.md, "End to end"). Padding lengths to a bucket
bounds the shapes (32 lengths at 8); the padding is masked, so the vectors move by float rounding only, and each
batch embeds up to bucket - 1 pieces more per text.

Each variant runs in a fresh process (a process's peak RSS never goes down), the stage as an actor runs it:
`Embed(EmbedConfig(device="cpu", backend="openvino", threads=2, max_tokens=256, quantize=...))` on Ray-sized blocks
of 1,024 texts after one small warm-up block, with `operators.embed_backends.OPENVINO_LENGTH_BUCKET` set first.
Recorded per run: RSS after building the stage, peak RSS (VmHWM), wall and process CPU time. Variants are
interleaved (1 8 16 32, then 32 16 8 1). Fidelity of each bucket against no padding (same precision), as in
embed_backends.py: max 1 - cos, max |delta cosine| of pairs >= 0.85, decisions changed at 0.95.

No timing asserts; the load average at start and end is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from embed_backends import embed_all, fidelity
from embed_batch_memory import real_answers, run_child, status_mb
from machine import BenchmarkRun, loadavg, peak_rss_mb

from operators.embed_backends import cpu_has_bf16

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
BUCKETS = (1, 8, 16, 32)


def child(precision: str, bucket: int, texts_path: Path, vectors_path: Path) -> dict:
    """One variant in this (fresh) process: build, warm, embed every text; vectors saved for fidelity."""
    import operators.embed_backends as backends
    from operators.embed import Embed, EmbedConfig

    backends.OPENVINO_LENGTH_BUCKET = bucket  # read by the runtime on every call
    texts = json.loads(texts_path.read_text())
    config = EmbedConfig(device="cpu", backend="openvino", threads=2, max_tokens=256,
                         quantize=None if precision == "fp32" else precision)
    stage = Embed(config)
    embed_all(stage, texts[:16])
    built = status_mb("VmRSS")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    vectors = embed_all(stage, texts)
    np.save(vectors_path, vectors)
    return {"wall_s": round(time.perf_counter() - wall0, 2), "cpu_s": round(time.process_time() - cpu0, 2),
            "rss_built_mb": built, "peak_rss_mb": peak_rss_mb(), "runtime": config.runtime("cpu")}


def run_variant(precision: str, bucket: int, texts_path: Path, scratch: Path) -> tuple[dict, np.ndarray]:
    return run_child(__file__, f"{precision}:{bucket}", texts_path, scratch / f"vectors-{precision}-{bucket}.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-rows", type=int, default=3000, help="real rows whose distinct answers are embedded")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "embed_length_bucket.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        precision, bucket = args.child.split(":")
        print(json.dumps(child(precision, int(bucket), args.texts, args.vectors)), flush=True)
        return
    run = BenchmarkRun("embed_length_bucket", REPO)
    precisions = ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)
    results = {}
    with tempfile.TemporaryDirectory(prefix="embed-bucket-") as scratch_name:
        scratch = Path(scratch_name)
        texts, texts_path = real_answers(scratch, args.real_rows)
        for precision in precisions:
            runs: dict[int, list[dict]] = {b: [] for b in BUCKETS}
            vectors = {}
            for round_index in range(args.rounds):
                for bucket in BUCKETS if round_index % 2 == 0 else BUCKETS[::-1]:
                    record, vectors[bucket] = run_variant(precision, bucket, texts_path, scratch)
                    runs[bucket].append({**record, "load": loadavg()})
                    print(f"{precision} round {round_index} bucket {bucket}: {record}", flush=True)
            unpadded = runs[1]
            results[precision] = {
                str(bucket): {
                    "runs": runs[bucket],
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[bucket]),
                    "rss_built_mb": max(r["rss_built_mb"] for r in runs[bucket]),
                    "texts_per_s": round(len(texts) * args.rounds / sum(r["wall_s"] for r in runs[bucket]), 2),
                    "speed_vs_unpadded_wall": round(sum(r["wall_s"] for r in unpadded)
                                                    / sum(r["wall_s"] for r in runs[bucket]), 3),
                    "speed_vs_unpadded_cpu": round(sum(r["cpu_s"] for r in unpadded)
                                                   / sum(r["cpu_s"] for r in runs[bucket]), 3),
                    "fidelity_vs_unpadded": fidelity(vectors[1], vectors[bucket]),
                }
                for bucket in BUCKETS
            }
    run.write(args.out, texts=len(texts), real_rows=args.real_rows, rounds=args.rounds, max_tokens=256, threads=2,
              precisions=results)


if __name__ == "__main__":
    main()
