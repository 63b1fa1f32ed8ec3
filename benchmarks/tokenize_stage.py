"""Tokenize stage vs the raw library: what does `Tokenize` cost over one batched `tokenizer(texts)` call?

    python benchmarks/tokenize_stage.py       # ~1,900 kept sample rows + ~3,000 real rows, 3 rounds (~1 min)
    python benchmarks/tokenize_stage.py --sample-rows 300 --real-rows 300 --rounds 2 --repeats 1 \
        --out /tmp/tokenize_stage_quick.json  # a quick check (seconds)
    python benchmarks/tokenize_stage.py --threads 2 --out /tmp/tokenize_stage_2threads.json

Row sets (each read and normalized by chatsieve itself, `discover_inputs` + `read_file_batches` as the
prepare job's read stage does; only rows normalization keeps are used, the ones the stage renders):
  sample  the kept rows of `write_sample(dir, SampleConfig(rows=--sample-rows, seed=0))` (short synthetic
          conversations; ~0.3% carry a literal `<s>`/`</s>`/`<unk>` that the stage removes).
  real    up to --real-rows rows, split evenly over /work/shared/data/{llamafactory/alpaca_en_demo.json,
          medicalgpt/finetune_numina_cot_sharegpt_data_1k.jsonl, gpteacher/Codegen_codegen-instruct.json}
          (the first rows of each file; files that are absent are skipped, and the set when all are).

Stage input, materialized before any timing: the kept rows as WORK_SCHEMA pyarrow tables of
`PrepareConfig().resources.tokenize_batch_size` (256) rows, one contiguous table per batch, i.e. what
`ds.map_batches(Tokenize, batch_size=256, batch_format="pyarrow")` hands the actor in jobs/prepare.py.
(In the job, rows that normalization removed or rejected travel through the stage too and are passed
through untouched; they are left out here so both sides see the same rows.)

Variants, in one process, warm (both tokenizers built and one small batch done first), interleaved round by
round, forward in even rounds and backward in odd ones (A B C, C B A, ...):
  stage            `Tokenize(TokenizerConfig(num_threads=T))` constructed once, called on every batch: special
                   token scan, Arrow -> Python messages, template render per row with generation spans, one
                   batched Rust encode per batch, prompt/response counts, Arrow table out.
  raw              a separately built tokenizer (`build_default_tokenizer()`, the same offline Mistral v0.1
                   tokenizer and template); the texts are rendered first with
                   `tokenizer.apply_chat_template(conversations, tokenize=False)` (NOT timed: that is the raw
                   side's materialized input), then ONE `tokenizer(texts)` call over the whole set is timed.
                   This is the issue's yardstick ("tokenization vs one batched tokenizer(texts) call, target
                   >= 0.8x"); it does strictly less work than the stage (no rendering, no spans, no Arrow).
  raw_with_render  `apply_chat_template(conversations, tokenize=False)` + `tokenizer(texts)` timed together
                   (conversations already Python lists): what a user's minimal code costs end to end.
The raw sides take the rows the stage renders (rows it removes for a special token or a template error
are reported and left out: `apply_chat_template` on a batch would raise on a template error).

Threads, for a fair comparison: both sides run in this one process, so they share the one Rust (rayon) pool
the tokenizers library sizes at its first parallel call. RAYON_NUM_THREADS=T (default 1) and
TOKENIZERS_PARALLELISM=true are set before tokenizers is imported, and the stage gets num_threads=T, which it
writes to RAYON_NUM_THREADS too. T=1 is what each tokenizer actor gets in the job on a 2-core machine
(`plan_tokenize`: 2 actors x 0.625 CPU, rounded up to 1 thread); Python-side work (rendering) is
single-threaded in both anyway. The process CPU time is recorded next to the wall time: with T=1 the two
should be close, which checks that no side used more cores than the other.

Each timed block runs --repeats (default 4) passes over the set and reports the time per pass; the results
are kept until the clock stops and a `gc.collect()` runs before each block, so no variant pays for freeing
its own or the previous variant's output (the raw call's Python lists of ids are the costliest to free).
Speeds are rows/s; ratios are raw time / stage time (>= 1: the stage is as fast as raw), per round and
their median, of the total times over all rounds (a linearly drifting load cancels with the A B C / C B A
order), of the best times, and of the process CPU-time totals (steadier than wall time on a shared machine).

Checks (not timings): the stage's `num_tokens` must equal len(ids) of the raw `tokenizer(texts)` call for
every row, and its `text` must equal the raw render; mismatches are counted and the first few listed.
Also an indicative split of the stage's time, after the rounds: messages to Python, `render_and_count`
(render + encode + span counts), the encode alone (the backend's `encode_batch` on the rendered texts, per
batch and in one call), and the raw side's `apply_chat_template` alone.

No timing asserts: the JSON records the numbers with the machine load at start and end.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import BenchmarkRun, loadavg

REPO = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data")
REAL_FILES = (
    "llamafactory/alpaca_en_demo.json",
    "medicalgpt/finetune_numina_cot_sharegpt_data_1k.jsonl",
    "gpteacher/Codegen_codegen-instruct.json",
)


def set_threads(threads: int) -> None:
    # Before tokenizers is imported: the Rust pool is sized once, at its first parallel call.
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def versions() -> dict:
    import pyarrow
    import tokenizers
    import transformers

    return {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "pyarrow": pyarrow.__version__}


# --- the stage input ---------------------------------------------------------------------------


def kept_rows(paths: list[str], limit_per_input: int | None = None):
    """WORK_SCHEMA table of the rows normalization keeps, read per file as the job's read stage does."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from operators import schema
    from operators.normalize import NormalizeConfig
    from operators.discover import discover_inputs
    from operators.read import read_file_batches

    config = NormalizeConfig()
    tables, read = [], 0
    for path in paths:
        taken = 0
        for item in discover_inputs([path]):
            for batch in read_file_batches(item, config):
                read += batch.num_rows
                batch = batch.filter(pc.equal(batch.column(schema.STATUS), schema.KEPT))
                if limit_per_input is not None:
                    batch = batch.slice(0, limit_per_input - taken)
                tables.append(batch)
                taken += batch.num_rows
                if limit_per_input is not None and taken >= limit_per_input:
                    break
            if limit_per_input is not None and taken >= limit_per_input:
                break
    return pa.concat_tables(tables).combine_chunks(), read


def sample_set(rows: int):
    from jobs.sample import SampleConfig, write_sample

    with tempfile.TemporaryDirectory(prefix="chatsieve-bench-") as tmp:
        write_sample(Path(tmp) / "sample", SampleConfig(rows=rows, seed=0))
        table, read = kept_rows([str(Path(tmp) / "sample")])
    return table, {"generated_rows": rows, "rows_read": read}


def real_set(rows: int):
    present = [DATA / name for name in REAL_FILES if (DATA / name).is_file()]
    if not present or rows <= 0:
        return None, {"files": [], "skipped": f"none of {REAL_FILES} under {DATA}" if rows > 0 else "--real-rows 0"}
    per_file = -(-rows // len(present))
    table, _ = kept_rows([str(p) for p in present], limit_per_input=per_file)
    table = table.slice(0, rows)
    return table, {"files": [str(p) for p in present], "rows_per_file_max": per_file}


def batches_of(table, batch_rows: int) -> list:
    # One contiguous table per batch, as a Ray batch arrives in an actor.
    return [table.slice(start, batch_rows).combine_chunks() for start in range(0, table.num_rows, batch_rows)]


# --- the measurement ---------------------------------------------------------------------------


def summarize(values: list[float]) -> dict:
    return {
        "runs_s": [round(t, 4) for t in values],
        "best_s": round(min(values), 4),
        "median_s": round(statistics.median(values), 4),
    }


def measure(name: str, table, stage, raw_tokenizer, batch_rows: int, rounds: int, repeats: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from operators import schema
    from operators.tokens import _backend, render_and_count

    batches = batches_of(table, batch_rows)
    # One untimed stage pass decides which rows the stage renders; the raw sides take exactly those.
    first = pa.concat_tables([stage(b) for b in batches])
    rendered = pc.equal(first.column(schema.STATUS), schema.KEPT).to_numpy(zero_copy_only=False)
    removed_reasons: dict[str, int] = {}
    for reason in first.filter(pc.invert(pa.array(rendered))).column(schema.REASON).to_pylist():
        removed_reasons[reason] = removed_reasons.get(reason, 0) + 1
    rows = np.flatnonzero(rendered)
    conversations = [
        [{k: v for k, v in message.items() if v is not None} for message in conversation]
        for conversation in table.column(schema.MESSAGES).take(pa.array(rows)).to_pylist()
    ]
    texts = raw_tokenizer.apply_chat_template(conversations, tokenize=False)  # the raw side's input

    outputs = {}

    def run_stage():
        return [stage(b) for b in batches]

    def run_raw():
        return raw_tokenizer(texts)

    def run_raw_with_render():
        rendered_texts = raw_tokenizer.apply_chat_template(conversations, tokenize=False)
        return raw_tokenizer(rendered_texts)

    runners = {"stage": run_stage, "raw": run_raw, "raw_with_render": run_raw_with_render}
    order = list(runners)
    times = {key: [] for key in order}
    cpu = {key: [] for key in order}
    rounds_log = []
    n_in, n = table.num_rows, len(rows)
    print(f"[{name}] {n_in} rows in {len(batches)} batches ({n} rendered), {rounds} rounds x {repeats} passes, "
          f"load {loadavg()}", flush=True)
    for r in range(rounds):
        this_round = order if r % 2 == 0 else order[::-1]
        entry = {"order": this_round, "load_1m_before": loadavg()[0]}
        for key in this_round:
            outputs.pop(key, None)
            gc.collect()  # untimed: no variant pays for the garbage of the one before
            started, cpu_started = time.perf_counter(), time.process_time()
            results = [runners[key]() for _ in range(repeats)]  # kept until the clock stops: no frees timed
            elapsed = (time.perf_counter() - started) / repeats
            cpu_s = (time.process_time() - cpu_started) / repeats
            outputs[key] = results[-1]
            del results
            times[key].append(elapsed)
            cpu[key].append(cpu_s)
            entry[f"{key}_s"] = round(elapsed, 4)
            entry[f"{key}_cpu_s"] = round(cpu_s, 4)
            print(f"  round {r} {key:15s} {elapsed:7.3f} s  {n / elapsed:8.1f} rows/s  "
                  f"(cpu {cpu_s:6.3f} s, load {loadavg()[0]})", flush=True)
        rounds_log.append(entry)

    # --- equality ---
    out = pa.concat_tables(outputs["stage"])
    stage_text = out.column(schema.TEXT).take(pa.array(rows)).to_pylist()
    stage_counts = out.column(schema.NUM_TOKENS).take(pa.array(rows)).to_pylist()
    raw_ids = outputs["raw"]["input_ids"]
    raw_counts = [len(ids) for ids in raw_ids]
    count_mismatch = [i for i in range(n) if stage_counts[i] != raw_counts[i]]
    text_mismatch = [i for i in range(n) if stage_text[i] != texts[i]]
    render_ids = outputs["raw_with_render"]["input_ids"]
    examples = [
        {"row": int(rows[i]), "id": table.column(schema.ID)[int(rows[i])].as_py(),
         "stage_num_tokens": stage_counts[i], "raw_len_ids": raw_counts[i], "text_equal": stage_text[i] == texts[i]}
        for i in sorted(set(count_mismatch) | set(text_mismatch))[:5]
    ]
    status_unchanged = out.num_rows == n_in and pc.all(pc.equal(
        out.column(schema.ID), table.column(schema.ID))).as_py()
    checks = {
        "rows_compared": n,
        "num_tokens_mismatches": len(count_mismatch),
        "text_mismatches": len(text_mismatch),
        "raw_with_render_ids_equal_raw": render_ids == raw_ids,
        "stage_rows_in_order": bool(status_unchanged),
        "first_mismatches": examples,
    }

    # --- one indicative pass splitting the stage's time ---
    backend = _backend(stage.tokenizer)
    kept_messages = [b.column(schema.MESSAGES).combine_chunks() for b in batches]
    pylists = [m.to_pylist() for m in kept_messages]
    parts = {
        "messages_to_pylist_s": lambda: [m.to_pylist() for m in kept_messages],
        "render_and_count_s": lambda: [render_and_count(stage.tokenizer, c) for c in pylists],
        "backend_encode_batch_per_batch_s": lambda: [
            backend.encode_batch(texts[start:start + batch_rows], add_special_tokens=False)
            for start in range(0, n, batch_rows)
        ],
        "backend_encode_batch_one_call_s": lambda: backend.encode_batch(texts, add_special_tokens=False),
        "raw_apply_chat_template_s": lambda: raw_tokenizer.apply_chat_template(conversations, tokenize=False),
    }
    breakdown = {
        "note": "after the rounds, not interleaved, mean of --repeats passes: indicative only. render_and_count "
                "(render with spans + encode + span counts) runs on all input rows, including the few the stage "
                "removes for a special token before rendering; the encode_batch rows are the rendered rows",
    }
    for part, call in parts.items():
        gc.collect()
        started = time.perf_counter()
        kept = [call() for _ in range(repeats)]
        breakdown[part] = round((time.perf_counter() - started) / repeats, 4)
        del kept
    breakdown["stage_median_s"] = round(statistics.median(times["stage"]), 4)
    breakdown["raw_median_s"] = round(statistics.median(times["raw"]), 4)

    def rows_per_s(key):
        return {"best": round(n / min(times[key]), 1), "median": round(n / statistics.median(times[key]), 1)}

    def ratio(base, key="stage"):  # base time / stage time (>= 1: the stage is as fast as base)
        per_round = [b / a for a, b in zip(times[key], times[base])]
        per_round_cpu = [b / a for a, b in zip(cpu[key], cpu[base])]
        return {
            "per_round": [round(x, 3) for x in per_round],
            "median": round(statistics.median(per_round), 3),
            "of_total_times": round(sum(times[base]) / sum(times[key]), 3),
            "of_best_times": round(min(times[base]) / min(times[key]), 3),
            "process_cpu_time_per_round": [round(x, 3) for x in per_round_cpu],
            "process_cpu_time_median": round(statistics.median(per_round_cpu), 3),
            "process_cpu_time_of_totals": round(sum(cpu[base]) / sum(cpu[key]), 3),
        }

    tokens = np.array(raw_counts)
    chars = np.array([len(t) for t in texts])
    result = {
        "rows_in": n_in,
        "rows_rendered": n,
        "removed_by_stage": removed_reasons,
        "batches": len(batches),
        "tokens": {"total": int(tokens.sum()), "mean": round(float(tokens.mean()), 1),
                   "median": float(np.median(tokens)), "max": int(tokens.max())},
        "rendered_chars": {"total": int(chars.sum()), "mean": round(float(chars.mean()), 1)},
        "times": {key: summarize(times[key]) for key in order},
        "process_cpu_times": {key: summarize(cpu[key]) for key in order},
        "rows_per_s": {key: rows_per_s(key) for key in order},
        "tokens_per_s_median": {key: round(int(tokens.sum()) / statistics.median(times[key])) for key in order},
        "ratio_stage_vs_raw": ratio("raw"),
        "ratio_stage_vs_raw_with_render": ratio("raw_with_render"),
        "checks": checks,
        "breakdown": breakdown,
        "rounds": rounds_log,
    }
    print(f"[{name}] stage vs raw: median {result['ratio_stage_vs_raw']['median']}x "
          f"(cpu {result['ratio_stage_vs_raw']['process_cpu_time_of_totals']}x); stage vs raw_with_render: median "
          f"{result['ratio_stage_vs_raw_with_render']['median']}x; num_tokens mismatches {len(count_mismatch)}, "
          f"text mismatches {len(text_mismatch)}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample-rows", type=int, default=2000, help="rows of the generated sample (default 2000)")
    parser.add_argument("--real-rows", type=int, default=3000,
                        help=f"real rows from {DATA} (default 3000, split evenly over the files; 0 skips)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per set (default 3)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="passes over the set per timed block (default 4; times are reported per pass)")
    parser.add_argument("--threads", type=int, default=1,
                        help="Rust encoder threads for both sides (default 1: a tokenizer actor's share on 2 cores)")
    parser.add_argument("--batch-rows", type=int, default=None,
                        help="rows per stage batch (default: the job's tokenize_batch_size, 256)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tokenize_stage.json"))
    args = parser.parse_args(argv)
    return run(args)


def run(args) -> int:
    set_threads(args.threads)
    sys.path.insert(0, str(REPO))
    run = BenchmarkRun("tokenize_stage", REPO)

    from jobs.config import PrepareConfig
    from operators import schema
    from operators.tokens import Tokenize, TokenizerConfig, build_default_tokenizer

    batch_rows = args.batch_rows or PrepareConfig().resources.tokenize_batch_size
    stage = Tokenize(TokenizerConfig(num_threads=args.threads))
    raw_tokenizer = build_default_tokenizer()
    # Warm-up: the first calls compile the template and start the Rust pool.
    warm_conversation = [{"role": "user", "content": "warm up"}, {"role": "assistant", "content": "done " * 50}]
    warm = sample_set(200)[0].slice(0, 32)
    stage(warm)
    raw_tokenizer(raw_tokenizer.apply_chat_template([warm_conversation] * 8, tokenize=False))

    sets, set_info = {}, {}
    table, info = sample_set(args.sample_rows)
    sets["sample"], set_info["sample"] = table, info
    table, info = real_set(args.real_rows)
    set_info["real"] = info
    if table is None:
        print(f"real set skipped: {info['skipped']}", flush=True)
    else:
        sets["real"] = table
    assert all(t.schema.equals(schema.WORK_SCHEMA) for t in sets.values()), "stage input is not WORK_SCHEMA"

    results = {name: measure(name, table, stage, raw_tokenizer, batch_rows, args.rounds, args.repeats)
               for name, table in sets.items()}
    run.write(
        args.out,
        versions=versions(),
        settings={
            "rayon_num_threads": args.threads,
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
            "stage_batch_rows": batch_rows,
            "rounds": args.rounds,
            "passes_per_timed_block": args.repeats,
            "tokenizer": "mistral-7b-v0.1 (build_default_tokenizer, operators/templates/mistral_v0.1.jinja)",
            "ratio_definition": "raw time / stage time: >= 1 means the stage is as fast as the raw call; "
                                "the issue's target is >= 0.8 against `raw`",
            "sets": set_info,
        },
        sets=results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
