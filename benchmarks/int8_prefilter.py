"""Would an int8 prefilter with fp32 re-embedding pay? The numbers behind not building it.

    python benchmarks/int8_prefilter.py [--real-rows 3000] [--generated-rows 5000] [--out results/int8_prefilter.json]

The idea (left open in the CPU-runtime work): embed every row with the int8 ONNX export (about 1.4-2x faster
than fp32, but it moves cosines by up to a few hundredths, so it changes decisions: results/embed_backends.json),
search with the threshold lowered by a margin, then re-embed only the rows that have a candidate neighbour with
the fp32 runtime and decide on fp32 cosines. Decisions equal fp32's as long as no fp32 pair at or above the
threshold falls below threshold - margin in int8, so the margin must exceed int8's drift.

On the same texts as embed_backends.py (distinct answers of real ShareGPT rows and of generated rows, the
embedding stage with --embed-max-tokens 256, 2 threads), this measures:
  - the time of the stage with the CPU default (openvino fp32) and with onnx int8 on the same texts;
  - int8's drift: max |cos_int8 - cos_fp32| over every pair at or above 0.80 in either;
  - for each margin and for the decision (0.95) and record (0.90) thresholds: the rows a cascade would
    re-embed (rows with an int8 neighbour at or above threshold - margin) and the fp32 pairs it would miss;
  - the cascade's projected speed against fp32 alone, fp32_s / (int8_s + re-embedded share * fp32_s), at the
    smallest margin above the measured drift. The re-embedding's own index search is left out (it favours the
    cascade). A projection, not a run: the cascade is not built.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from embed_backends import answers, embed_all
from inputs import generated_sharegpt, real_sharegpt
from machine import BenchmarkRun

MARGINS = (0.02, 0.035, 0.05, 0.08, 0.10)
THRESHOLDS = {"decision": 0.95, "record": 0.90}
DRIFT_FLOOR = 0.80
CHUNK = 2048


def neighbours(vectors: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine of each row with any other row, pairs (i < j) with cosine >= floor), in chunks."""
    best = np.full(len(vectors), -1.0, np.float32)
    pairs = []
    for start in range(0, len(vectors), CHUNK):
        sims = vectors[start : start + CHUNK] @ vectors.T
        rows = np.arange(start, start + len(sims))
        sims[rows - start, rows] = -1.0  # not itself
        best[rows] = sims.max(axis=1)
        r, c = np.nonzero(sims >= floor)
        keep = rows[r] < c
        pairs.append(np.stack([rows[r][keep], c[keep]], axis=1))
    return best, np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def analyse(fp32: np.ndarray, int8: np.ndarray, fp32_s: float, int8_s: float) -> dict:
    best8, pairs8 = neighbours(int8, DRIFT_FLOOR - max(MARGINS))
    best32, pairs32 = neighbours(fp32, DRIFT_FLOOR)
    union = np.unique(np.concatenate([pairs8, pairs32]), axis=0)
    cos32 = np.sum(fp32[union[:, 0]] * fp32[union[:, 1]], axis=1)
    cos8 = np.sum(int8[union[:, 0]] * int8[union[:, 1]], axis=1)
    either = (cos32 >= DRIFT_FLOOR) | (cos8 >= DRIFT_FLOOR)
    drift = float(np.max(np.abs(cos32 - cos8)[either])) if either.any() else 0.0
    margins = {}
    for margin in MARGINS:
        entry = {}
        for name, threshold in THRESHOLDS.items():
            candidates = best8 >= threshold - margin
            missed = int(np.sum((cos32 >= threshold) & (cos8 < threshold - margin)))
            entry[name] = {"rows_re_embedded": int(candidates.sum()), "share": round(float(candidates.mean()), 4),
                           "fp32_pairs_missed": missed}
        margins[str(margin)] = entry
    safe = next((m for m in MARGINS if m > drift), None)
    projected = None
    if safe is not None:
        projected = {name: round(fp32_s / (int8_s + margins[str(safe)][name]["share"] * fp32_s), 3)
                     for name in THRESHOLDS}
    return {
        "rows": len(fp32),
        "fp32_s": round(fp32_s, 2),
        "int8_s": round(int8_s, 2),
        "int8_speedup": round(fp32_s / int8_s, 3),
        "max_abs_delta_cos": round(drift, 4),
        "pairs_compared": int(either.sum()),
        "fp32_rows_with_a_neighbour": {name: int(np.sum(best32 >= t)) for name, t in THRESHOLDS.items()},
        "margins": margins,
        "smallest_safe_margin": safe,
        "projected_cascade_speedup_vs_fp32": projected,
    }


def measure(name: str, texts: list[str], exports: str) -> dict:
    from operators.embed import Embed, EmbedConfig

    stages = {
        variant: Embed(EmbedConfig(device="cpu", threads=2, backend=backend, quantize=quantize, max_tokens=256,
                                   export_dir=exports))
        for variant, (backend, quantize) in {"fp32": ("openvino", None), "int8": ("onnx", "int8")}.items()
    }
    vectors, seconds = {}, {}
    for variant, stage in stages.items():
        embed_all(stage, texts[:16])  # warm
        started = time.perf_counter()
        vectors[variant] = embed_all(stage, texts)
        seconds[variant] = time.perf_counter() - started
        print(f"{name} {variant}: {len(texts)} texts in {seconds[variant]:.1f} s", flush=True)
    return analyse(vectors["fp32"], vectors["int8"], seconds["fp32"], seconds["int8"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-rows", type=int, default=3000)
    parser.add_argument("--generated-rows", type=int, default=5000)
    parser.add_argument("--out", default=str(HERE / "results" / "int8_prefilter.json"))
    args = parser.parse_args(argv)
    run = BenchmarkRun("int8_prefilter", REPO)
    sets = {}
    with tempfile.TemporaryDirectory(prefix="chatsieve-int8-prefilter-") as tmp:
        inputs = {"real": (real_sharegpt, args.real_rows), "generated": (generated_sharegpt, args.generated_rows)}
        for name, (make, rows) in inputs.items():
            path = Path(tmp) / f"{name}.jsonl"
            if rows <= 0 or make(path, rows) is None:
                continue  # no ../shared/data here, or skipped
            sets[name] = measure(name, answers(path), str(Path(tmp) / "exports"))
    settings = {"margins": MARGINS, "thresholds": THRESHOLDS, "drift_floor": DRIFT_FLOOR, "max_tokens": 256, "threads": 2}
    run.write(args.out, settings=settings, sets=sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
