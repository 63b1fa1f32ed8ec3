"""CPU embedding runtimes: speed and fidelity of onnx / openvino (fp32), onnx int8 and openvino bf16 against fp32 torch.

    python benchmarks/embed_backends.py                      # real answers (when ../shared/data exists) + 5,000 generated
    python benchmarks/embed_backends.py --real-rows 300 --generated-rows 1000 --out /tmp/backends.json   # quick
    python benchmarks/embed_backends.py --variants torch openvino openvino_bf16                 # some runtimes

Texts: the distinct assistant answers of the end-to-end inputs (benchmarks/inputs.py: 3,000 real rows, the
first exchange of a 5,000-row generated sample): what `--turns first --dedup-on assistant` embeds.

Each variant is the embedding stage itself, `operators.embed.Embed(EmbedConfig(device="cpu", threads=2,
backend=..., quantize=..., max_tokens=256))`, called on batches of 1,024 rows as one actor does, warm (model
loaded, export cached, one small batch embedded first); the export itself is timed separately. Variants are
interleaved (A B C D, then D C B A for the next round). openvino_bf16 runs only on CPUs with bf16 units
(AMX, AVX512_BF16: OpenVINO's OPTIMIZATION_CAPABILITIES has BF16). Speed: rows/s, wall and process CPU time, ratio
torch time / variant time (> 1: faster than torch).

Fidelity, against the torch vectors of the same rows: max 1 - cos(v_backend, v_torch) per row, and over all
pairs whose similarity is >= 0.85 under either runtime, the max |delta cosine| (pair similarities as the
index computes them, `operators.index.pair_similarity`). Decisions: the rows removed at threshold 0.95 under
the keep rules `none` (every row with a near-duplicate goes) and `first` (greedy, in input order), and how
many of them differ from torch's. A runtime may become the CPU default only with zero changed decisions, and
never a reduced-precision one (int8, bf16): zero changes on these texts does not make it exact.

No timing asserts; the load average at start and end is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
from inputs import generated_sharegpt, real_sharegpt
from operators.embed_backends import cpu_has_bf16
from machine import loadavg, machine, peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {  # name: (backend, quantize)
    "torch": ("torch", None),
    "onnx": ("onnx", None),
    "openvino": ("openvino", None),
    "onnx_int8": ("onnx", "int8"),
    "openvino_bf16": ("openvino", "bf16"),
}
RAY_BATCH = 1024
THRESHOLD = 0.95
PAIR_FLOOR = 0.85


def answers(path: Path) -> list[str]:
    """Distinct assistant answers of a ShareGPT file, in first-seen order (exact dedup runs first)."""
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        seen.setdefault(json.loads(line)["conversations"][1]["value"], None)
    return list(seen)


def embed_all(stage, texts: list[str]) -> np.ndarray:
    out = []
    for start in range(0, len(texts), RAY_BATCH):
        chunk = texts[start : start + RAY_BATCH]
        table = pa.table({"id": [str(start + i) for i in range(len(chunk))], "dedup_text": chunk})
        vectors = stage(table).column("vector").combine_chunks()
        out.append(vectors.flatten().to_numpy().reshape(len(chunk), -1))
    return np.concatenate(out)


def pairs_at_least(vectors: np.ndarray, floor: float) -> set[tuple[int, int]]:
    """(i, j), i < j, with float32 dot product >= floor - 1e-3 (a superset; exact values are recomputed)."""
    found = set()
    for start in range(0, len(vectors), 2048):
        sims = vectors[start : start + 2048] @ vectors.T
        rows, cols = np.nonzero(sims >= floor - 1e-3)
        found.update((start + r, c) for r, c in zip(rows.tolist(), cols.tolist()) if start + r < c)
    return found


def decisions(n: int, pairs: np.ndarray, sims: np.ndarray) -> dict[str, np.ndarray]:
    from operators.resolve import resolve_greedy, resolve_none

    a, b = (pairs[:, 0], pairs[:, 1]) if len(pairs) else (np.empty(0, np.int64), np.empty(0, np.int64))
    return {
        "none": ~resolve_none(n, a, b, sims, THRESHOLD).kept,
        "first": ~resolve_greedy(n, a, b, sims, THRESHOLD).kept,
    }


def fidelity(reference: np.ndarray, vectors: np.ndarray) -> dict:
    from operators.index import pair_similarity

    union = sorted(pairs_at_least(reference, PAIR_FLOOR) | pairs_at_least(vectors, PAIR_FLOOR))
    pairs = np.array(union, dtype=np.int64).reshape(-1, 2)
    ref_sims = pair_similarity(reference[pairs[:, 0]], reference[pairs[:, 1]])
    sims = pair_similarity(vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    ref_removed, removed = decisions(len(reference), pairs, ref_sims), decisions(len(vectors), pairs, sims)
    row_cos = pair_similarity(reference, vectors)
    return {
        "max_1_minus_cos": float(np.max(1 - row_cos)),
        "p99_1_minus_cos": float(np.quantile(1 - row_cos, 0.99)),
        "pairs_compared": len(pairs),
        "max_abs_delta_cos": float(np.max(np.abs(sims - ref_sims))) if len(pairs) else 0.0,
        "pairs_crossing_threshold": int(np.sum((sims >= THRESHOLD) != (ref_sims >= THRESHOLD))),
        "removed_torch": {rule: int(r.sum()) for rule, r in ref_removed.items()},
        "changed_decisions": {rule: int(np.sum(removed[rule] != ref_removed[rule])) for rule in removed},
    }


def measure(name: str, texts: list[str], rounds: int, cache: str, variants: dict) -> dict:
    from operators.embed import Embed, EmbedConfig

    stages, export_s = {}, {}
    for variant, (backend, quantize) in variants.items():
        start = time.perf_counter()
        config = EmbedConfig(device="cpu", threads=2, backend=backend, quantize=quantize, max_tokens=256,
                             export_dir=cache)
        stages[variant] = Embed(config)
        export_s[variant] = round(time.perf_counter() - start, 2)
        embed_all(stages[variant], texts[:16])  # warm
    times = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    vectors = {}
    order = list(variants)
    for round_index in range(rounds):
        for variant in order if round_index % 2 == 0 else order[::-1]:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            vectors[variant] = embed_all(stages[variant], texts)
            times[variant].append(time.perf_counter() - wall0)
            cpu[variant].append(time.process_time() - cpu0)
        print(f"{name} round {round_index}: " + ", ".join(f"{v} {times[v][-1]:.1f}s" for v in order), flush=True)
    result = {"rows": len(texts), "load_s": export_s, "variants": {}}
    for variant in order:
        wall, cpu_total = sum(times[variant]), sum(cpu[variant])
        result["variants"][variant] = {
            "wall_s": [round(t, 2) for t in times[variant]],
            "cpu_s": [round(t, 2) for t in cpu[variant]],
            "rows_per_s": round(len(texts) * rounds / wall, 1),
            "speedup_vs_torch_wall": round(sum(times["torch"]) / wall, 3),
            "speedup_vs_torch_cpu": round(sum(cpu["torch"]) / cpu_total, 3),
            "fidelity_vs_torch": fidelity(vectors["torch"], vectors[variant]),
        }
    return result


def fastest_safe(results: dict) -> str:
    """The fastest full-precision variant (total wall time over every text set) that changed no decision anywhere."""
    safe = {}
    for variant in next(iter(results.values()))["variants"]:
        if VARIANTS[variant][1]:
            continue  # reduced precision: never a default
        per_set = [r["variants"][variant] for r in results.values()]
        if all(sum(v["fidelity_vs_torch"]["changed_decisions"].values()) == 0 for v in per_set):
            safe[variant] = sum(sum(v["wall_s"]) for v in per_set)
    return min(safe, key=safe.get)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-rows", type=int, default=3000)
    parser.add_argument("--generated-rows", type=int, default=5000, help="generated sample rows (default 5000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="runtimes to measure (torch, the reference, always runs)")
    parser.add_argument("--out", type=Path, default=RESULTS / "embed_backends.json")
    args = parser.parse_args(argv)
    variants = {v: VARIANTS[v] for v in VARIANTS if v == "torch" or v in args.variants}
    if "openvino_bf16" in variants and not cpu_has_bf16():
        print("this CPU has no bf16 units: openvino_bf16 left out", flush=True)
        del variants["openvino_bf16"]
    started = dt.datetime.now(dt.timezone.utc)
    record = {"benchmark": "embed_backends", "command": shlex.join(["python", *sys.argv]),
              "date": started.isoformat(timespec="seconds"), "machine": machine(), "load_start": loadavg()}
    sets = {}
    with tempfile.TemporaryDirectory() as scratch:
        real = real_sharegpt(Path(scratch, "real.jsonl"), args.real_rows)
        if real:
            sets["real"] = answers(Path(scratch, "real.jsonl"))
        generated_sharegpt(Path(scratch, "generated.jsonl"), args.generated_rows)
        sets["generated"] = answers(Path(scratch, "generated.jsonl"))
        record["sets"] = {name: measure(name, texts, args.rounds, str(Path(scratch, "exports")), variants)
                          for name, texts in sets.items()}
    record["fastest_without_decision_changes"] = fastest_safe(record["sets"])
    record.update(load_end=loadavg(), peak_rss_mb=peak_rss_mb(),
                  elapsed_s=round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("fastest_without_decision_changes", "elapsed_s")}))
    return record


if __name__ == "__main__":
    main()
