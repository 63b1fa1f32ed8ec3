"""End to end: the naive tutorial pipeline vs chatsieve on the same input, models and machine, in one run.

    python benchmarks/end_to_end.py                                  # 3,000 real rows (if ../shared/data) + 20,000 generated
    python benchmarks/end_to_end.py --real-rows 300 --generated-rows 2000 --out /tmp/e2e.json   # quick (~5 min)

Inputs (benchmarks/inputs.py): ShareGPT JSON lines of the first exchange of each row, so the naive script's
reader takes every row. Variants, each a fresh process on the same file, run one after another in the order
below and then (with --rounds 2) in the reverse order:
  naive             benchmarks/naive_pipeline.py (per-row token counts, encode with defaults, IndexFlatIP k=2)
  same_work_torch   chatsieve prepare --turns first --dedup-on assistant --keep none --embed-max-tokens 256
                    --embed-backend torch: the naive script's work (answers embedded up to MiniLM's window,
                    every row with a near-duplicate removed), plus what chatsieve always does (exact dedup,
                    audit, manifest, report, card).
  same_work_fast    the same with --embed-backend FAST --embed-prefilter none: every text in fp32 (FAST, default: the
                    fastest runtime that changed no decision
                    in benchmarks/results/embed_backends.json, else openvino)
  same_work_bf16    the same with --embed-backend openvino --embed-quantize bf16, on CPUs with bf16 units (AMX,
                    AVX512_BF16) only: lossy, so its removals are compared with torch's
  same_work_default the same with the default embedding settings, on CPUs with bf16 units only (elsewhere the default
                    is same_work_fast's): --embed-prefilter auto picks bf16 there: bf16 search, pairs confirmed in fp32
  defaults          chatsieve prepare with its defaults (every turn compared, keep the first of each group,
                    512-piece windows, the default CPU runtime): more work than the naive script.
chatsieve runs with RAY_ADDRESS=local: a fresh local Ray started by the job (its start-up is in the time).

Recorded per variant: wall time of the whole process (imports, model loading and Ray start included), the
peak RSS of its process tree (sampled every 0.5 s from /proc, Ray's workers included), rows kept, and the
ratio naive wall / variant wall (> 1: faster than naive). Agreement: rows the naive script kept vs rows
same_work_torch kept (by the (prompt, answer) pair), and removed rows that differ between same_work_torch and
same_work_fast (the runtimes must agree), same_work_bf16 (reduced precision: may differ) and
same_work_default (fp32 decisions, if the margin holds).

No timing asserts; the load average is recorded with every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow.parquet as pq
from inputs import generated_sharegpt, real_sharegpt
from operators.embed_backends import cpu_has_bf16
from machine import loadavg, machine
from process_tree import memory_record, run_sampled

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SAME_WORK = ["--turns", "first", "--dedup-on", "assistant", "--keep", "none", "--embed-max-tokens", "256"]
# PSS every 8th sample (4 s): RSS counts a page shared by several processes in each of them, PSS once.
SAMPLER = SimpleNamespace(interval=0.5, pss_every=8, job_timeout_s=7200)


def fast_backend_default() -> str:
    measured = RESULTS / "embed_backends.json"
    if measured.is_file():
        return json.loads(measured.read_text()).get("fastest_without_decision_changes", "openvino")
    return "openvino"


def commands(input_path: Path, out: Path, fast: str, bf16: bool) -> dict[str, list[str]]:
    prepare = [sys.executable, "-m", "jobs.cli", "prepare", "--input", str(input_path), "--overwrite"]
    runs = {
        "naive": [sys.executable, str(HERE / "naive_pipeline.py"), "--input", str(input_path),
                  "--output", str(out / "naive.parquet"), "--json", str(out / "naive.json")],
        "same_work_torch": [*prepare, "--output", str(out / "same_work_torch"), *SAME_WORK, "--embed-backend", "torch"],
        "same_work_fast": [*prepare, "--output", str(out / "same_work_fast"), *SAME_WORK, "--embed-backend", fast,
                           "--embed-prefilter", "none"],
        "same_work_bf16": [*prepare, "--output", str(out / "same_work_bf16"), *SAME_WORK,
                           "--embed-backend", "openvino", "--embed-quantize", "bf16"],
        "same_work_default": [*prepare, "--output", str(out / "same_work_default"), *SAME_WORK],
        "defaults": [*prepare, "--output", str(out / "defaults")],
    }
    if not bf16:
        del runs["same_work_bf16"], runs["same_work_default"]
    return runs


def kept_pairs_naive(out: Path) -> set[tuple[str, str]]:
    table = pq.read_table(out / "naive.parquet", columns=["prompt", "response"])
    return set(zip(table.column("prompt").to_pylist(), table.column("response").to_pylist()))


def kept_pairs_chatsieve(output: Path) -> set[tuple[str, str]]:
    pairs = set()
    for part in sorted((output / "data").glob("*.parquet")):
        for messages in pq.read_table(part, columns=["messages"]).column("messages").to_pylist():
            turns = [m for m in messages if m["role"] != "system"]
            pairs.add((turns[0]["content"], turns[1]["content"]))
    return pairs


def removed_ids(output: Path) -> set[str]:
    ids = set()
    for part in sorted((output / "removed").glob("*.parquet")):
        table = pq.read_table(part, columns=["id", "reason"])
        ids.update(i for i, r in zip(table.column("id").to_pylist(), table.column("reason").to_pylist())
                   if r in ("exact_duplicate", "near_duplicate"))
    return ids


def run_variant(name: str, command: list[str], log: Path) -> dict:
    load = loadavg()
    returncode, wall, sampler = run_sampled(command, log, SAMPLER)
    if returncode != 0:
        raise RuntimeError(f"{name} failed ({returncode}); see {log}:\n{log.read_text()[-3000:]}")
    memory = memory_record(sampler)
    print(f"  {name}: {wall:.1f} s, peak tree RSS {memory['tree_peak_rss_mb']} MB, PSS {memory['tree_peak_pss_mb']} MB, "
          f"load {load}", flush=True)
    return {"wall_s": round(wall, 2), "tree_peak_rss_mb": memory["tree_peak_rss_mb"],
            "tree_peak_pss_mb": memory["tree_peak_pss_mb"],
            "driver_peak_rss_mb": memory["driver_peak_rss_mb"], "load_before": load,
            "tree_peak_rss_by_process": memory["tree_peak_rss_by_process"]}


def measure_set(name: str, input_path: Path, scratch: Path, fast: str, rounds: int, bf16: bool) -> dict:
    out = scratch / name
    out.mkdir()
    runs = commands(input_path, out, fast, bf16)
    walls: dict[str, list[dict]] = {v: [] for v in runs}
    for round_index in range(rounds):
        order = list(runs) if round_index % 2 == 0 else list(runs)[::-1]
        for variant in order:
            walls[variant].append(run_variant(variant, runs[variant], out / f"{variant}.log"))
    naive_wall = sum(r["wall_s"] for r in walls["naive"])
    variants = {}
    for variant, records in walls.items():
        wall = sum(r["wall_s"] for r in records)
        variants[variant] = {
            "command": shlex.join(runs[variant]).replace(str(scratch), "$TMP"),
            "runs": records,
            "wall_s": round(wall / len(records), 2),
            "speedup_vs_naive": round(naive_wall / wall, 3),
            "tree_peak_rss_mb": max(r["tree_peak_rss_mb"] for r in records),
            "tree_peak_pss_mb": max((r["tree_peak_pss_mb"] for r in records if r["tree_peak_pss_mb"]), default=None),
        }
    naive = json.loads((out / "naive.json").read_text())
    variants["naive"].update(steps_s=naive["steps_s"], rows=naive["rows"])
    for variant in (v for v in runs if v != "naive"):
        manifest = json.loads((out / variant / "manifest.json").read_text())
        variants[variant].update(rows=manifest["rows"], timings_s=manifest["timings_s"])
        if (manifest.get("dedup") or {}).get("prefilter"):
            variants[variant]["prefilter"] = manifest["dedup"]["prefilter"]
    naive_kept, torch_kept = kept_pairs_naive(out), kept_pairs_chatsieve(out / "same_work_torch")
    agreement = {
        "kept_by_naive": len(naive_kept),
        "kept_by_same_work_torch": len(torch_kept),
        "kept_by_both": len(naive_kept & torch_kept),
        "removed_dedup_differing_torch_vs_fast": len(
            removed_ids(out / "same_work_torch") ^ removed_ids(out / "same_work_fast")
        ),
    }
    for variant in ("same_work_bf16", "same_work_default"):
        if variant in runs:
            agreement[f"removed_dedup_differing_torch_vs_{variant.removeprefix('same_work_')}"] = len(
                removed_ids(out / "same_work_torch") ^ removed_ids(out / variant)
            )
    print(f"  {name}: {agreement}", flush=True)
    return {"variants": variants, "agreement": agreement}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-rows", type=int, default=3000)
    parser.add_argument("--generated-rows", type=int, default=20000,
                        help="generated sample rows (default 20000; 0: only the real set, the file's other set kept)")
    parser.add_argument("--fast-backend", default=None, help="runtime of same_work_fast (default: measured)")
    parser.add_argument("--rounds", type=int, default=1, help="1: each variant once; 2: forward then reverse")
    parser.add_argument("--out", type=Path, default=RESULTS / "end_to_end.json")
    args = parser.parse_args(argv)
    fast = args.fast_backend or fast_backend_default()
    started = time.perf_counter()
    record = {"benchmark": "end_to_end", "command": shlex.join(["python", *sys.argv]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "load_start": loadavg(), "fast_backend": fast, "bf16": cpu_has_bf16(), "sets": {}}
    scratch = Path(tempfile.mkdtemp(prefix="chatsieve-e2e-"))
    try:
        inputs = {}
        real = real_sharegpt(scratch / "real.jsonl", args.real_rows) if args.real_rows else None
        if real:
            inputs["real"] = (scratch / "real.jsonl", real)
        if args.generated_rows:
            inputs["generated"] = (scratch / "generated.jsonl",
                                   generated_sharegpt(scratch / "generated.jsonl", args.generated_rows))
        for name, (path, described) in inputs.items():
            print(f"{name}: {described['rows']} rows", flush=True)
            set_started = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "load_start": loadavg()}
            record["sets"][name] = {"input": described, **set_started,
                                    **measure_set(name, path, scratch, fast, args.rounds, record["bf16"])}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record.update(load_end=loadavg(), elapsed_s=round(time.perf_counter() - started, 1))
    if args.out.exists():  # a set this run left out stays, with its own date
        earlier = json.loads(args.out.read_text())
        for name, data in earlier.get("sets", {}).items():
            if name not in record["sets"]:
                record["sets"][name] = {"date": data.get("date", earlier.get("date")), **data}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
