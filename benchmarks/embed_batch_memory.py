"""The CPU embedding batch size: the embedding actor's memory and speed at 8, 16 and 32 texts per forward pass.

    python benchmarks/embed_batch_memory.py                       # 3,000 real rows' answers, 2 rounds
    python benchmarks/embed_batch_memory.py --real-rows 600 --rounds 1 --out /tmp/batch.json   # quick

Why: the embedding actor held 1.67 GB of the job tree's 3.35 GB peak on 3,000 real rows (RESULTS.md,
"End to end"), and probing it in one process showed OpenVINO's working memory growing with the batch's
activations (32 texts x 256 pieces: attention scores alone are 32 x 12 x 256 x 256 floats, 100 MB).

Each variant runs in a fresh process (a process's peak RSS never goes down), the stage as an actor runs it:
`Embed(EmbedConfig(device="cpu", threads=2, batch_size=B, max_tokens=256))` (default CPU runtime) on Ray-sized
blocks of 1,024 texts, after one small warm-up block. Recorded per run: RSS after building the stage, peak RSS
(VmHWM) after embedding, wall and process CPU time. Variants are interleaved (8 16 32, then 32 16 8).
Fidelity of each batch size against 32 (the earlier default) as in embed_backends.py: max 1 - cos, max
|delta cosine| of pairs >= 0.85, and decisions changed at 0.95 under the keep rules none and first (padding
differs with the batch, so vectors may differ in the last bits: docs/notes.md).

No timing asserts; the load average at start and end is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from embed_backends import answers, embed_all, fidelity
from inputs import real_sharegpt
from machine import BenchmarkRun, loadavg, peak_rss_mb

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
BATCHES = (8, 16, 32)
REFERENCE_BATCH = 32


def status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(key)


def child(batch: int, texts_path: Path, vectors_path: Path) -> dict:
    """One variant in this (fresh) process: build, warm, embed every text; vectors saved for fidelity."""
    from operators.embed import Embed, EmbedConfig

    texts = json.loads(texts_path.read_text())
    config = EmbedConfig(device="cpu", threads=2, batch_size=batch, max_tokens=256)
    stage = Embed(config)
    embed_all(stage, texts[:16])
    built = status_mb("VmRSS")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    vectors = embed_all(stage, texts)
    record = {
        "wall_s": round(time.perf_counter() - wall0, 2),
        "cpu_s": round(time.process_time() - cpu0, 2),
        "rss_built_mb": built,
        "peak_rss_mb": peak_rss_mb(),  # VmHWM
        "runtime": config.runtime("cpu"),
    }
    np.save(vectors_path, vectors)
    return record


def run_child(script: str, child: str, texts_path: Path, vectors_path: Path) -> tuple[dict, np.ndarray]:
    """Run `script --child CHILD` in a fresh process (its peak RSS is its own): its record and its vectors."""
    result = subprocess.run(
        [sys.executable, script, "--child", child, "--texts", str(texts_path), "--vectors", str(vectors_path)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode:
        raise RuntimeError(f"{Path(script).name} --child {child} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(vectors_path)


def real_answers(scratch: Path, real_rows: int) -> tuple[list[str], Path]:
    """The distinct answers of `real_rows` real rows, and a JSON file of them for the child processes."""
    if not real_sharegpt(scratch / "real.jsonl", real_rows):
        raise SystemExit("the real data (../shared/data) is missing")
    texts = answers(scratch / "real.jsonl")
    texts_path = scratch / "texts.json"
    texts_path.write_text(json.dumps(texts))
    return texts, texts_path


def run_variant(batch: int, texts_path: Path, scratch: Path) -> tuple[dict, np.ndarray]:
    return run_child(__file__, str(batch), texts_path, scratch / f"vectors-{batch}.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-rows", type=int, default=3000, help="real rows whose distinct answers are embedded")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "embed_batch_memory.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.texts, args.vectors)), flush=True)
        return
    run = BenchmarkRun("embed_batch_memory", REPO)
    with tempfile.TemporaryDirectory(prefix="embed-batch-") as scratch_name:
        scratch = Path(scratch_name)
        texts, texts_path = real_answers(scratch, args.real_rows)
        runs: dict[int, list[dict]] = {b: [] for b in BATCHES}
        vectors = {}
        for round_index in range(args.rounds):
            for batch in BATCHES if round_index % 2 == 0 else BATCHES[::-1]:
                record, vectors[batch] = run_variant(batch, texts_path, scratch)
                runs[batch].append({**record, "load": loadavg()})
                print(f"round {round_index} batch {batch}: {record}", flush=True)
    reference = runs[REFERENCE_BATCH]
    variants = {}
    for batch in BATCHES:
        wall, cpu = sum(r["wall_s"] for r in runs[batch]), sum(r["cpu_s"] for r in runs[batch])
        variants[str(batch)] = {
            "runs": runs[batch],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[batch]),
            "rss_built_mb": max(r["rss_built_mb"] for r in runs[batch]),
            "texts_per_s": round(len(texts) * args.rounds / wall, 2),
            "speed_vs_32_wall": round(sum(r["wall_s"] for r in reference) / wall, 3),
            "speed_vs_32_cpu": round(sum(r["cpu_s"] for r in reference) / cpu, 3),
            "fidelity_vs_32": fidelity(vectors[REFERENCE_BATCH], vectors[batch]),
        }
    run.write(args.out, texts=len(texts), real_rows=args.real_rows, rounds=args.rounds, max_tokens=256, threads=2,
              variants=variants)


if __name__ == "__main__":
    main()
