"""Embedding stage vs the raw library: does `Embed` cost anything over a plain `SentenceTransformer.encode`?

    python benchmarks/embed_stage.py          # ~2,000 sample rows (3 rounds) + 300 Alpaca answers (5 rounds)
    python benchmarks/embed_stage.py --sample-rows 300 --alpaca-rows 50 --rounds 2 --alpaca-rounds 2 \
        --out /tmp/embed_stage_quick.json     # a quick check (~3 min on a busy 2-core machine)

Text sets:
  sample  dedup texts (`conversation`) of the kept rows of `write_sample(dir, SampleConfig(rows=N, seed=0))`,
          i.e. what the near-duplicate stage embeds for the built-in sample (short, tens of word pieces).
  alpaca  the `output` field of the first --alpaca-rows rows of
          /work/shared/data/llamafactory/alpaca_en_demo.json, when that file exists (long-ish answers; some
          are longer than MiniLM's 254-piece window).

For each set, the variants run in the same process, warm (models loaded and one small batch encoded first),
interleaved round by round, forward in even rounds and backward in odd ones (A B C, C B A, ...):
  embed          `Embed(EmbedConfig(device="cpu", threads=2, backend="torch"))(table)` on Ray-sized batches of 1024 rows (what one
                 actor does per batch: plan windows, one `encode` over all pieces, assemble an Arrow table).
  embed_254      the same with max_tokens=254 (one window, long texts cut at a word start): the same work as a
                 truncating `encode`, so embed_254 vs raw is the stage's pure overhead, and embed vs embed_254
                 is the price of windowing long texts (texts over 254 pieces get 2-3 windows, up to 512 pieces).
  raw            `SentenceTransformer(resolve_model_path("all-minilm-l6-v2"), device="cpu").encode(texts,
                 batch_size=32, normalize_embeddings=True)` on the whole set at once, torch.set_num_threads(2)
                 (the model silently truncates at 256 tokens).
Speeds are rows/s; ratios are raw time / variant time (>1: the stage is faster): per round and their median,
of the total times over all rounds (a load that drifts linearly cancels out of it with the A B C / C B A
order) and of the best times. The process CPU-time ratio is recorded too: on a shared machine whose load
swings, it is far steadier than wall time (it does count OpenMP spin-waiting, which contention inflates).

Numerics: for rows `Embed` embeds as one window, its vector must be the raw encode vector up to batch
composition effects (docs/notes.md: ~5e-7 in cosine). Reported: max |1 - cos(embed_i, raw_i)| on single-window rows
(and on all rows, where multi-window rows differ by design), and the max |delta| of the pairwise cosine
matrix (embed vs raw) over single-window rows - what the near-duplicate threshold sees.

No timing asserts: the JSON records the numbers with the machine load at start and end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import BenchmarkRun, loadavg

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
ALPACA = Path("/work/shared/data/llamafactory/alpaca_en_demo.json")
THREADS = 2
RAY_BATCH = 1024
ENCODE_BATCH = 32  # the stage's CPU default with torch (operators/embed.py CPU_BATCH_OTHER) and encode's own


# --- machine -------------------------------------------------------------------------------------




def versions() -> dict:
    import sentence_transformers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


# --- texts ---------------------------------------------------------------------------------------


def sample_texts(rows: int) -> list[str]:
    """Conversation dedup texts of the rows the job keeps from the built-in sample."""
    from jobs.sample import SampleConfig, write_sample
    from operators import schema
    from operators.exact_dedup import dedup_text
    from operators.normalize import NormalizeConfig, normalize_record

    config = NormalizeConfig()
    texts = []
    with tempfile.TemporaryDirectory(prefix="chatsieve-bench-") as tmp:
        write_sample(tmp, SampleConfig(rows=rows, seed=0))
        for path in sorted(Path(tmp).glob("shard-*.jsonl*")):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # planted invalid_json rows: rejected by the job, never embedded
                    result = normalize_record(record, config)
                    if result.status == schema.KEPT:
                        texts.append(dedup_text(result.messages, "conversation"))
    return texts


def alpaca_texts(rows: int) -> list[str] | None:
    if not ALPACA.is_file():
        return None
    data = json.loads(ALPACA.read_text(encoding="utf-8"))
    return [str(row["output"]) for row in data[:rows]]


# --- the measurement -----------------------------------------------------------------------------


def run_stage(stage, table: pa.Table) -> np.ndarray:
    parts = [stage(table.slice(start, RAY_BATCH)) for start in range(0, table.num_rows, RAY_BATCH)]
    out = pa.concat_tables(parts)
    return np.asarray(out.column("vector").combine_chunks().flatten().to_numpy()).reshape(out.num_rows, -1)


def stage_plan(stage, texts: list[str]):
    from operators.embed import plan_windows

    plan = plan_windows(stage.tokenizer, texts, stage.config.max_tokens, stage.window)
    return plan


def measure(name: str, texts: list[str], variants: dict, rounds: int, with_254: bool) -> dict:
    table = pa.table({"id": [f"r{i}" for i in range(len(texts))], "dedup_text": texts})
    runners = {
        "embed": lambda: run_stage(variants["embed"], table),
        "embed_254": lambda: run_stage(variants["embed_254"], table),
        "raw": lambda: np.asarray(
            variants["raw"].encode(
                texts, batch_size=ENCODE_BATCH, normalize_embeddings=True, show_progress_bar=False
            )
        ),
    }
    if not with_254:
        del runners["embed_254"]
    order = list(runners)
    times = {key: [] for key in order}
    cpu = {key: [] for key in order}
    vectors = {}
    rounds_log = []
    print(f"[{name}] {len(texts)} texts, {rounds} rounds, load {loadavg()}", flush=True)
    for r in range(rounds):
        this_round = order if r % 2 == 0 else order[::-1]  # A B C, C B A, ...: linear load drift cancels
        entry = {"order": this_round, "load_1m_before": loadavg()[0]}
        for key in this_round:
            started, cpu_started = time.perf_counter(), time.process_time()
            vectors[key] = runners[key]()
            elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
            times[key].append(elapsed)
            cpu[key].append(cpu_s)
            entry[f"{key}_s"] = round(elapsed, 3)
            entry[f"{key}_cpu_s"] = round(cpu_s, 3)
            print(
                f"  round {r} {key:9s} {elapsed:7.2f} s  {len(texts) / elapsed:7.1f} rows/s  "
                f"(cpu {cpu_s:6.2f} s, load {loadavg()[0]})",
                flush=True,
            )
        rounds_log.append(entry)

    n = len(texts)
    plan = stage_plan(variants["embed"], texts)
    single = plan.windows == 1
    stage = variants["embed"]
    tokens = np.array(
        [len(ids) for ids in stage.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    )

    def rows_per_s(key):
        return {
            "best": round(n / min(times[key]), 1),
            "median": round(n / statistics.median(times[key]), 1),
        }

    def ratio(key):  # raw time / variant time (>1: the variant is faster)
        per_round = [b / a for a, b in zip(times[key], times["raw"])]
        return {
            "per_round": [round(x, 3) for x in per_round],
            "median": round(statistics.median(per_round), 3),
            "of_total_times": round(sum(times["raw"]) / sum(times[key]), 3),
            "of_best_times": round(min(times["raw"]) / min(times[key]), 3),
            "process_cpu_time_of_totals": round(sum(cpu["raw"]) / sum(cpu[key]), 3),
        }

    e, raw = vectors["embed"].astype(np.float64), vectors["raw"].astype(np.float64)
    self_cos = np.abs(1.0 - np.einsum("ij,ij->i", e, raw))
    self_cos_254 = None
    if "embed_254" in vectors:
        self_cos_254 = np.abs(1.0 - np.einsum("ij,ij->i", vectors["embed_254"].astype(np.float64), raw))
    es, rs = e[single], raw[single]
    pairwise = float(np.abs(es @ es.T - rs @ rs.T).max()) if single.any() else None
    multi = ~single
    numerics = {
        "single_window_rows": int(single.sum()),
        "multi_window_rows": int(multi.sum()),
        "max_abs_1_minus_cos_embed_vs_raw_single_window": float(self_cos[single].max()) if single.any() else None,
        "max_abs_delta_pairwise_cos_single_window": pairwise,
        "max_abs_1_minus_cos_embed_vs_raw_all_rows": float(self_cos.max()),
        "mean_abs_1_minus_cos_embed_vs_raw_multi_window": float(self_cos[multi].mean()) if multi.any() else None,
        "max_abs_1_minus_cos_embed254_vs_raw_all_rows": None if self_cos_254 is None else float(self_cos_254.max()),
        "vectors_bitwise_equal_single_window": int((vectors["embed"][single] == vectors["raw"][single]).all(axis=1).sum()),
    }
    result = {
        "rows": n,
        "word_pieces": {
            "mean": round(float(tokens.mean()), 1),
            "median": float(np.median(tokens)),
            "max": int(tokens.max()),
            "rows_over_254": int((tokens > stage.window).sum()),
            "encode_inputs_embed": len(plan.pieces),  # texts + extra windows
            # Text each variant embeds, in word pieces: embed up to max_tokens (512) a row, in windows;
            # raw (and embed_254) up to the model's window (254 + [CLS]/[SEP]), the rest truncated.
            "embedded_by_embed_approx": int(np.minimum(tokens, stage.config.max_tokens).sum()),
            "embedded_by_raw": int(np.minimum(tokens, stage.window).sum()),
        },
        "times": {key: summarize(times[key]) for key in order},
        "process_cpu_times": {key: summarize(cpu[key]) for key in order},
        "rows_per_s": {key: rows_per_s(key) for key in order},
        "ratio_vs_raw": {key: ratio(key) for key in order if key != "raw"},
        "numerics": numerics,
        "rounds": rounds_log,
    }
    ratios = ", ".join(f"{key}/raw {value['median']}x" for key, value in result["ratio_vs_raw"].items())
    print(
        f"[{name}] {ratios}; max|1-cos| single-window "
        f"{numerics['max_abs_1_minus_cos_embed_vs_raw_single_window']:.2e}, pairwise {pairwise:.2e}",
        flush=True,
    )
    return result


def summarize(times: list[float]) -> dict:
    return {
        "runs_s": [round(t, 3) for t in times],
        "best_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample-rows", type=int, default=2000, help="rows of the generated sample (default 2000)")
    parser.add_argument("--alpaca-rows", type=int, default=300, help="Alpaca answers (default 300; 0 skips)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds on the sample set (default 3)")
    parser.add_argument("--alpaca-rounds", type=int, default=5, help="interleaved rounds on the alpaca set (default 5)")
    parser.add_argument(
        "--with-254", choices=("alpaca", "all", "none"), default="alpaca",
        help="text sets that also run the embed_254 variant (default alpaca: the sample has ~0.1%% rows over 254)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "embed_stage.json"))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    run = BenchmarkRun("embed_stage", REPO)

    import torch
    from sentence_transformers import SentenceTransformer

    from operators.embed import BUILTIN_EMBEDDER, Embed, EmbedConfig, resolve_model_path

    torch.set_num_threads(THREADS)
    variants = {
        # torch: the same runtime as `raw`, so the ratio is the stage's own cost (the faster CPU runtimes are
        # measured in embed_backends.py).
        "embed": Embed(EmbedConfig(device="cpu", threads=THREADS, backend="torch")),
        "embed_254": Embed(EmbedConfig(device="cpu", threads=THREADS, max_tokens=254, backend="torch")),
        "raw": SentenceTransformer(resolve_model_path(BUILTIN_EMBEDDER), device="cpu"),
    }
    torch.set_num_threads(THREADS)  # Embed sets the same; keep it explicit for the raw model
    # Warm-up: first forward passes allocate and pick kernels.
    warm = ["a short warm-up text", "another one, " * 60]
    warm_table = pa.table({"id": ["w0", "w1"], "dedup_text": warm})
    variants["embed"](warm_table)
    variants["embed_254"](warm_table)
    variants["raw"].encode(warm, batch_size=ENCODE_BATCH, normalize_embeddings=True, show_progress_bar=False)

    sets = {"sample": sample_texts(args.sample_rows)}
    if args.alpaca_rows > 0:
        texts = alpaca_texts(args.alpaca_rows)
        if texts is None:
            print(f"{ALPACA} not found: alpaca set skipped", flush=True)
        else:
            sets["alpaca"] = texts

    results = {
        name: measure(
            name, texts, variants, args.alpaca_rounds if name == "alpaca" else args.rounds,
            args.with_254 == "all" or args.with_254 == name,
        )
        for name, texts in sets.items()
    }
    run.write(
        args.out,
        versions=versions(),
        settings={
            "torch_threads": THREADS,
            "ray_batch_rows": RAY_BATCH,
            "encode_batch_size": ENCODE_BATCH,
            "rounds": {"sample": args.rounds, "alpaca": args.alpaca_rounds},
            "embed_254_on": args.with_254,
            "sample_rows_generated": args.sample_rows,
            "alpaca_path": str(ALPACA) if "alpaca" in sets else None,
        },
        sets=results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
