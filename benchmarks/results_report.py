"""RESULTS.md and results/summary.png, regenerated from the JSON the benchmarks write (never edited by hand).

    python benchmarks/results_report.py [RESULTS_DIR] [OUT.md]     # default: benchmarks/results, benchmarks/RESULTS.md

A table per benchmark, each with its machine, command, date and load. A benchmark with no JSON is listed as
not run. Ratios are always "baseline time / chatsieve time": above 1 chatsieve is faster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("—" if v is None else str(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _x(value) -> str | None:
    return None if value is None else f"{value:.2f}x"


def _provenance(record: dict, part: dict | None = None) -> list[str]:
    part = part or record
    machine = part.get("machine") or record.get("machine") or {}
    load = [machine.get("load_at_start") or part.get("load_start"), machine.get("load_at_end") or part.get("load_end")]
    return [
        f"- command: `{part.get('command') or record.get('command')}`",
        (f"- date: {part.get('date') or record.get('date')}; machine: {machine.get('nproc')} cores "
        f"({machine.get('cpu')}), {machine.get('mem_total_gib')} GiB; load average (1, 5, 15 min) at start "
        f"{load[0]}, at end {load[1]}"),
        "",
    ]


def end_to_end(record: dict) -> list[str]:
    lines = ["## End to end: the naive tutorial pipeline vs chatsieve", ""] + _provenance(record)
    lines.append(f"Fast runtime: `{record['fast_backend']}`. Wall time of the whole process, Ray start included.")
    lines.append("")
    for name, data in record["sets"].items():
        rows = []
        for variant, v in data["variants"].items():
            kept = v["rows"]["kept"] if variant == "naive" else v["rows"].get("kept")
            rows.append([variant, v["wall_s"], _x(v["speedup_vs_naive"]), v["tree_peak_rss_mb"],
                         v.get("tree_peak_pss_mb", "-"), kept])
        lines.append(f"**{name}** ({data['input']['rows']:,} rows)" + (f", run {data['date']}" if "date" in data else ""))
        lines.append("")
        lines += _table(["variant", "wall s", "speed vs naive", "peak RSS MB (process tree)",
                         "peak PSS MB (process tree)", "rows kept"], rows)
        breakdown = (data["variants"].get("same_work_fast", {}).get("runs") or [{}])[0].get("tree_peak_rss_by_process")
        if breakdown:
            lines.append("same_work_fast's process tree at its RSS peak (MB, largest first): " + ", ".join(
                f"{entry['process']} {entry['rss_mb']:.0f}" for entry in breakdown) + ".")
            lines.append("")
        for variant, result in data["variants"].items():
            prefilter = result.get("prefilter")
            if prefilter:
                lines.append(
                    f"{variant}: {prefilter['precision']} prefilter, {prefilter['texts_confirmed']:,} of "
                    f"{prefilter['texts']:,} texts embedded again in fp32 ({prefilter['pairs_found']:,} pairs found "
                    f"down to {prefilter['floor']}, {prefilter['pairs_recorded']:,} recorded); largest similarity move "
                    f"bf16 -> fp32 {prefilter['max_similarity_moved']:.4f} (margin {prefilter['margin']}).")
                lines.append("")
        a = data["agreement"]
        lines.append(
            f"Kept by naive {a['kept_by_naive']:,}, by same_work_torch {a['kept_by_same_work_torch']:,}, by both "
            f"{a['kept_by_both']:,}; duplicate removals that differ between torch and the fast runtime: "
            f"{a['removed_dedup_differing_torch_vs_fast']}"
            + (f"; between torch and same_work_bf16 (reduced precision): {a['removed_dedup_differing_torch_vs_bf16']}"
               if "removed_dedup_differing_torch_vs_bf16" in a else "")
            + "".join(f"; between torch and same_work_{name} (bf16 search, fp32 pairs): {a[key]}"
                      for name in ("prefilter", "default")
                      if (key := f"removed_dedup_differing_torch_vs_{name}") in a) + "."
        )
        lines.append("")
    return lines


def embed_backends(record: dict, title: str = "CPU embedding runtimes vs fp32 torch (the embedding stage, in process)",
                   ) -> list[str]:
    lines = [f"## {title}", ""] + _provenance(record)
    for name, data in record["sets"].items():
        rows = []
        for variant, v in data["variants"].items():
            f = v["fidelity_vs_torch"]
            rows.append([variant, v["rows_per_s"], _x(v["speedup_vs_torch_wall"]), _x(v["speedup_vs_torch_cpu"]),
                         f"{f['max_1_minus_cos']:.1e}", f"{f['max_abs_delta_cos']:.1e}",
                         f"{f['changed_decisions']['none']} / {f['changed_decisions']['first']}"])
        lines.append(f"**{name}** ({data['rows']:,} distinct answers)")
        lines.append("")
        lines += _table(["runtime", "rows/s", "speed vs torch (wall)", "(CPU time)", "max 1 - cos",
                         "max abs Δcos (pairs >= 0.85)", "decisions changed at 0.95 (keep none / first)"], rows)
    lines += [f"Fastest full-precision runtime that changed no decision: "
              f"**{record['fastest_without_decision_changes']}**.", ""]
    return lines + [f"Note: {note}" for note in record.get("notes", [])] + [""] * bool(record.get("notes"))


def embed_bf16(record: dict) -> list[str]:
    return embed_backends(record, "Embedding in bf16 (OpenVINO, a CPU with AMX) vs fp32 (the stage, in process)")


def _ratio_rows(sets: dict, key: str, extra=None) -> list[list]:
    rows = []
    for name, data in sets.items():
        ratio = data[key]
        rows.append([name, data.get("rows") or data.get("rows_in"), _x(ratio["median"]),
                     _x(ratio.get("process_cpu_time_of_totals") or ratio.get("process_cpu_time_median")),
                     *(extra(data) if extra else [])])
    return rows


def tokenize_stage(record: dict) -> list[str]:
    lines = ["## Stage efficiency: tokenization vs one batched `tokenizer(texts)` call (target >= 0.8x)", ""]
    lines += _provenance(record)
    rows = _ratio_rows(record["sets"], "ratio_stage_vs_raw",
                       lambda d: [_x(d["ratio_stage_vs_raw_with_render"]["median"]), d["checks"]["num_tokens_mismatches"]])
    return lines + _table(["rows", "n", "stage vs raw (wall, median)", "(CPU time)",
                           "stage vs render + tokenize", "token count mismatches"], rows)


def embed_stage(record: dict) -> list[str]:
    lines = ["## Stage efficiency: embedding (torch) vs `SentenceTransformer.encode` (target >= 0.9x)", ""]
    lines += _provenance(record)
    rows = []
    for name, data in record["sets"].items():
        for variant, ratio in data["ratio_vs_raw"].items():
            rows.append([name, variant, data["rows"], _x(ratio["median"]), _x(ratio.get("process_cpu_time_of_totals"))])
    return lines + _table(["texts", "variant", "rows", "stage vs encode (wall, median)", "(CPU time)"], rows)


def index_search(record: dict) -> list[str]:
    data = record["data"]
    lines = [f"## Stage efficiency: index search vs raw FAISS ({data['n']:,} x {data['dim']} vectors)", ""]
    lines += _provenance(record)
    rows = []
    for variant, ratio in record["ratio_vs_raw"].items():
        quality = record["quality"].get(variant, {})
        rows.append([variant, record["process_cpu_times"][variant].get("median_s"),
                     _x(ratio.get("median")), _x(ratio.get("process_cpu_time_of_totals")),
                     quality.get("pairs"), quality.get("recall_vs_flat_1", quality.get("recall_vs_flat"))])
    return lines + _table(["variant", "CPU s (median)", "vs raw (wall, median)", "(CPU time)", "pairs", "recall"], rows)


def scaling(record: dict) -> list[str]:
    lines = ["## Scaling", ""]
    index = record.get("index")
    if index:
        lines += ["### Index build + cross-shard search (generated 384-d vectors, planted groups)", ""]
        lines += _provenance(record, index)
        rows = []
        for n, size in index["sizes"].items():
            quality = size.get("quality", {})
            for variant, v in size["variants"].items():
                if not isinstance(v, dict) or "wall_s" not in v:
                    continue
                recall = quality.get(f"{variant}_recall_on_sample")
                rows.append([f"{int(n):,}", variant, v.get("wall_s"), v.get("cpu_s"), v.get("pairs"),
                             v.get("extrapolated_s"), recall, v.get("peak_mb")])
        lines += _table(["N", "variant", "wall s", "CPU s", "pairs", "extrapolated wall s", "recall (sample)",
                         "peak MB"], rows)
    job = record.get("job")
    if job:
        lines += ["### Full jobs on generated conversations", ""] + _provenance(record, job)
        rows = []
        for name, run in job["runs"].items():
            timings = (run.get("manifest") or {}).get("timings_s") or {}
            stages = ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if k != "total" and v >= 1)
            memory = run.get("memory") or {}
            rows.append([name, run.get("wall_s"), memory.get("driver_peak_rss_mb"), memory.get("tree_peak_rss_mb"),
                         memory.get("tree_peak_pss_mb"), stages])
        lines += _table(["run", "wall s", "driver peak RSS MB", "tree peak RSS MB", "tree peak PSS MB",
                         "stages (s)"], rows)
        for key, which in (("driver_memory_vs_volume", "without dedup"), ("driver_memory_vs_volume_dedup", "with dedup")):
            volume = job.get(key)
            if volume:
                lines += [(f"Driver memory vs text volume {which}: input x{volume['input_ratio_largest_vs_smallest']}, "
                           f"driver peak x{volume['driver_peak_ratio_largest_vs_smallest']} (rows {volume['rows']})."),
                          ""]
    return lines


def scaling_index_1m(record: dict) -> list[str]:
    """The index part of scaling.py at 1M rows alone, rerun after an index change (Scaling keeps the older run)."""
    lines = scaling(record)
    lines[0] = "## Index at 1M rows, current code (the Scaling section below is an older run)"
    for n, size in record["index"]["sizes"].items():
        variants = size["variants"]
        train = (variants.get("ivf_train") or {}).get("wall_s")
        for name in ("ivf_1", "ivf_4"):
            if train is not None and "wall_s" in (variants.get(name) or {}):
                lines.append(f"- N {int(n):,}: ivf_train + {name} = {train + variants[name]['wall_s']:.1f} s")
    return lines + [""]


# The projection's assumptions (nothing here was measured on a cluster or a GPU: see gpu_check.py).
CLUSTER_GPUS, CLUSTER_CPUS = 16, 128  # e.g. 4 nodes x (4 GPUs, 32 cores)
ASSUMED_GPU_TEXTS_PER_S = 10_000  # MiniLM-L6 on short user turns, per GPU, fp16: an assumption, not measured
DRIVER_STAGES = ("resolve",)  # single-threaded on the driver: scales with rows only


def projection(run: dict, rows_target: int, cpus_here: int) -> list[str]:
    """Wall time per stage for `rows_target` rows on the assumed cluster, from one measured run."""
    timings = run["manifest"]["timings_s"]
    scale = rows_target / run["rows"]
    core_ratio = CLUSTER_CPUS / cpus_here
    texts = run["manifest"]["dedup"]["vectors"]["rows"] * scale if run["manifest"].get("dedup") else 0
    rows, total = [], 0.0
    for stage, seconds in timings.items():
        if stage == "total":
            continue
        if stage == "embed":
            projected, how = texts / (CLUSTER_GPUS * ASSUMED_GPU_TEXTS_PER_S), \
                f"{texts:,.0f} texts / ({CLUSTER_GPUS} GPUs x {ASSUMED_GPU_TEXTS_PER_S:,} texts/s, assumed)"
        elif stage == "index_search":
            # IVF: nlist ~ sqrt(N) at a fixed nprobe, so each query scans ~sqrt(N) rows; flat scans all N.
            kind = run["manifest"]["dedup"]["index"]["kind"]
            power = 2 if kind == "flat" else 1.5
            projected = seconds * scale ** power / core_ratio
            how = f"x{scale:g}^{power:g} ({kind}) / {core_ratio:g} (cores)"
        elif stage in DRIVER_STAGES:
            projected, how = seconds * scale, f"x{scale:g} (driver, one thread)"
        else:
            projected, how = seconds * scale / core_ratio, f"x{scale:g} / {core_ratio:g} (cores)"
        total += projected
        rows.append([stage, round(seconds, 1), round(projected, 1), how])
    rows.append(["total", round(timings.get("total", 0), 1), round(total, 1), "plus Ray start and the report"])
    return _table(["stage", f"measured s ({run['rows']:,} rows, {cpus_here} cores)",
                   f"projected s ({rows_target:,} rows)", "how"], rows)


def scaling_job_user(record: dict) -> list[str]:
    """The job part of scaling.py with dedup on the user turns, at 100k and 1M rows (Scaling keeps the older run)."""
    lines = scaling(record)
    lines[0] = "## A million rows end to end, dedup on the user turns"
    lines += [f"Note: {note}" for note in record["job"].get("notes", [])] + [""] * bool(record["job"].get("notes"))
    runs = [r for r in record["job"]["runs"].values() if "manifest" in r]
    if runs:
        largest = max(runs, key=lambda r: r["rows"])
        cpus = (record["job"].get("machine") or {}).get("nproc") or 2
        lines += [f"Projection for 10,000,000 rows on {CLUSTER_GPUS} GPUs and {CLUSTER_CPUS} cores, from the "
                  f"{largest['rows']:,}-row run (assumptions in results_report.py; CPU stages assumed to scale "
                  "linearly with rows and cores):", ""]
        lines += projection(largest, 10_000_000, cpus)
    volume = record["job"].get("driver_memory_vs_volume_dedup")
    if volume and volume["driver_peak_rss_mb_per_stage"]:
        rows = [[stage, *peaks] for stage, peaks in volume["driver_peak_rss_mb_per_stage"].items()]
        lines += ["Driver peak RSS (MB) per stage:", ""]
        lines += _table(["stage", *(f"{n:,} rows" for n in volume["rows"])], rows)
    return lines + [""]


def ivf_scan(record: dict) -> list[str]:
    lines = ["## IVF shard scan: list by list vs FAISS's query-by-query search", ""] + _provenance(record)
    rows = [[variant, ", ".join(str(t) for t in times), record["projected_all_n_queries_s"][variant]]
            for variant, times in record["times_s"].items()]
    lines += _table(["variant", f"wall s per round ({record['queries']:,} queries)",
                     f"projected for all {record['n']:,} queries (s)"], rows)
    lines.append(
        f"N {record['n']:,}, {record['shards']} shard(s), nlist {record['nlist']}, nprobe {record['nprobe']}, "
        f"{record['queries_per_call']:,} queries per call: the list-by-list scan is "
        f"{_x(record['faiss_over_by_list'])} FAISS's speed; identical results: {record['identical']}."
    )
    return lines + [""]


def int8_prefilter(record: dict) -> list[str]:
    lines = ["## An int8 prefilter with fp32 re-embedding: projected (since built: --embed-prefilter)", ""] + _provenance(record)
    rows = []
    for name, data in record["sets"].items():
        safe = data["smallest_safe_margin"]
        share = data["margins"][str(safe)] if safe is not None else {}
        projected = data["projected_cascade_speedup_vs_fp32"] or {}
        rows.append([name, data["rows"], _x(data["int8_speedup"]), data["max_abs_delta_cos"], safe,
                     share.get("decision", {}).get("share"), share.get("record", {}).get("share"),
                     _x(projected.get("decision")), _x(projected.get("record"))])
    return lines + _table(["texts", "rows", "int8 vs fp32 (openvino)", "max abs Δcos", "smallest safe margin",
                           "re-embedded at 0.95", "re-embedded at 0.90", "projected cascade vs fp32 (0.95)",
                           "(0.90, what --record-threshold needs)"], rows)


def prefilter_agreement(record: dict) -> list[str]:
    lines = ["## The bf16 prefilter (the default on bf16 CPUs) against full fp32: the real job on every real data set",
             ""] + _provenance(record)
    lines.append(
        f"`chatsieve prepare` over the {len(record['input']['files'])} files of {record['input']['directory']}, twice per "
        "--dedup-on: `--embed-prefilter none` (every text in fp32) and `--embed-prefilter bf16`. Moves: over every "
        "pair of texts whose fp32 cosine is at least the pair floor, |bf16 - fp32| from the two runs' vector stores "
        "(every text is in both), not only over the pairs the prefilter found; missed: pairs at or above the record "
        "threshold in fp32 whose bf16 similarity is below the prefilter's floor.")
    lines.append("")
    rows = []
    for r in record["results"]:
        moves, pairs, summary = r["moves"], r["pairs"], r["prefilter_summary"]
        rows.append([r["dedup_on"], f"{r['rows']['read']:,}", f"{r['texts_embedded']:,}", r["fp32"]["wall_s"],
                     r["prefilter"]["wall_s"], _x(r["speed_prefilter_vs_fp32"]),
                     f"{summary['texts_confirmed']:,}", f"{r['removed']['fp32']:,}", r["removed"]["differ"],
                     f"{pairs['fp32']:,}", pairs["only_fp32"] + pairs["only_prefilter"],
                     f"{pairs['max_similarity_difference']:.1e}", f"{moves['pairs']:,} (>= {moves['pair_floor']})",
                     f"{moves['max_moved']:.4f}", f"{moves['p99_moved']:.4f}", moves["missed_by_prefilter"],
                     summary["margin"]])
    return lines + _table(
        ["dedup on", "rows read", "texts", "fp32 s", "prefilter s", "speed", "texts re-embedded", "removed (fp32)",
         "removals differing", "pairs recorded (fp32)", "pairs in one run only", "max Δ similarity, both runs' pairs",
         "text pairs compared", "max move bf16 vs fp32", "p99 move", "missed", "margin"], rows)


def ray_overhead(record: dict) -> list[str]:
    lines = ["## Ray's own CPU while a pipeline runs (the tax on every stage)", ""] + _provenance(record)
    lines.append(
        "A fresh local Ray, as `chatsieve prepare` starts it, and a pipeline shaped like the embed stage whose actor "
        "only sleeps: every CPU second of the process tree is Ray's."
    )
    lines.append("")
    rows = []
    for name, w in record["windows"].items():
        roles = ", ".join(f"{role} {cpu:.1f}" for role, cpu in w["cpu_s_by_role"].items() if cpu >= 0.05)
        rows.append([name, w["wall_s"], w["tree_cpu_s"], f"{w['cores_used']:.2f}", f"{100 * w['share_of_machine']:.1f}%",
                     roles])
    return lines + _table(["window", "wall s", "tree CPU s", "cores used", "share of the machine", "CPU s by role"], rows)


def many_files(record: dict) -> list[str]:
    lines = ["## Many small input files: read in groups", ""] + _provenance(record)
    rows = [[name, job["rows_read"], job["wall_s"], job["read_stage_s"]] for name, job in record["jobs"].items()]
    lines += _table(["input", "rows", "job wall s", "read stage s"], rows)
    discovery = record["discovery_local"]
    lines.append(
        f"Grouped reading is {_x(record['grouped_speedup_vs_one_task_each'])} the speed of one task per file; "
        f"{record['files']:,} files take {record['grouped_vs_one_file']}x the time of the same rows in one file. "
        f"Discovery of {discovery['files']:,} local files: {discovery['seconds']} s."
    )
    return lines + [""]


def many_files_scale(record: dict) -> list[str]:
    lines = ["## Many files at scale: 1M rows in 1,000 files vs 10, and S3 discovery", ""] + _provenance(record)
    if "jobs" in record:
        rows = [[name, job["files"], job["rows_read"], job["kept"], job["wall_s"], job["read_stage_s"]]
                for name, job in record["jobs"].items()]
        lines += _table(["input", "files", "rows read", "kept", "job wall s", "read stage s"], rows)
        lines.append(f"The many-file input takes {record['many_vs_few_wall']}x the wall time of the few-file one"
                     + (f" (jobs run {record['jobs_date']}: `{record['jobs_command']}`)." if "jobs_date" in record
                        else "."))
    if "discovery_s3" in record:
        s3 = record["discovery_s3"]
        line = f"Discovery of {s3['files']:,} objects on a local S3 server (moto, over HTTP): {s3['seconds']} s"
        if "boto3_listing" in s3:
            line += (f"; the same listing with boto3's paginator alone, side by side: "
                     f"{s3['boto3_listing']['seconds']} s (the server's own cost)")
        lines.append(line + ".")
    return lines + [""]


def vector_lookup(record: dict) -> list[str]:
    lines = ["## Reading the vectors store for the index: lookup built once vs `pc.index_in` per file", ""]
    lines += _provenance(record)
    p = record["pass_s"]
    lines.append(f"{record['vectors']:,} vectors in {record['files']:,} files, one pass: {p['hash_lookup']} s with "
                 f"the lookup (built once in {record['lookup_build_s']} s) vs {p['index_in_per_file']} s with "
                 f"`pc.index_in` per file: {record['speedup']}x. The index and its recall check make four passes.")
    return lines + [""]


def _answers_header(record: dict, title: str, fidelity: str) -> list[str]:
    """Title, provenance and the texts line of a benchmark run on real answers in fresh processes."""
    return ["## " + title, ""] + _provenance(record) + [
        f"{record['texts']:,} distinct answers of {record['real_rows']:,} real rows, max_tokens {record['max_tokens']}, "
        f"{record['threads']} threads, {record['rounds']} rounds; each run a fresh process. {fidelity}", ""]


def embed_batch_memory(record: dict) -> list[str]:
    lines = _answers_header(record, "The CPU embedding batch size: the actor's memory and speed",
                            "Fidelity against batch 32 (the earlier default).")
    rows = []
    for batch, v in record["variants"].items():
        f = v["fidelity_vs_32"]
        rows.append([batch, v["rss_built_mb"], v["peak_rss_mb"], v["texts_per_s"], _x(v["speed_vs_32_wall"]),
                     _x(v["speed_vs_32_cpu"]), f"{f['max_1_minus_cos']:.1e}", f"{f['max_abs_delta_cos']:.1e}",
                     sum(f["changed_decisions"].values())])
    lines += _table(["batch", "RSS built MB", "peak RSS MB", "texts/s", "speed vs 32 (wall)", "speed vs 32 (CPU)",
                     "max 1-cos vs 32", "max delta cos (pairs)", "decisions changed"], rows)
    return lines


def embed_length_bucket(record: dict) -> list[str]:
    lines = _answers_header(record, "OpenVINO's length bucket: the embedding actor's memory and speed",
                            "Bucket 1 is no padding; fidelity against it, in the same precision.")
    rows = []
    for precision, buckets in record["precisions"].items():
        for bucket, v in buckets.items():
            f = v["fidelity_vs_unpadded"]
            rows.append([precision, bucket, v["rss_built_mb"], v["peak_rss_mb"], v["texts_per_s"],
                         _x(v["speed_vs_unpadded_wall"]), _x(v["speed_vs_unpadded_cpu"]), f"{f['max_1_minus_cos']:.1e}",
                         f"{f['max_abs_delta_cos']:.1e}", sum(f["changed_decisions"].values())])
    return lines + _table(["precision", "bucket", "RSS built MB", "peak RSS MB", "texts/s", "speed vs unpadded (wall)",
                           "speed vs unpadded (CPU)", "max 1-cos", "max delta cos (pairs)", "decisions changed"], rows)


def driver_memory(record: dict) -> list[str]:
    lines = ["## The driver's memory with dedup on, 100k vs 1M rows (stand-in vectors)", ""] + _provenance(record)
    lines.append("The real job at each size, with its vectors store filled by stand-in vectors (hashed bag of "
                 "words, benchmarks/driver_memory.py) instead of 1M texts embedded on CPU: everything the driver "
                 "does runs for real. Stand-ins find fewer near duplicates than MiniLM (pairs below).")
    lines.append("")
    rows = []
    for run in record["runs"].values():
        memory, manifest = run["memory"], run.get("manifest") or {}
        dedup = manifest.get("dedup") or {}
        rows.append([f"{run['rows']:,}", run["wall_s"], memory.get("driver_peak_rss_mb"),
                     memory.get("driver_peak_anon_mb"), memory.get("driver_peak_shmem_mb"), memory.get("tree_peak_rss_mb"),
                     (dedup.get("index") or {}).get("kind"), dedup.get("pairs_recorded"),
                     dedup.get("near_duplicates_removed"), dedup.get("exact_duplicates_removed"),
                     ", ".join(f"{k} {v:.0f}" for k, v in manifest.get("timings_s", {}).items() if v >= 1)])
    lines += _table(["rows", "wall s", "driver peak RSS MB", "its own heap (RssAnon) MB", "object-store pages "
                     "(RssShmem) MB", "tree peak RSS MB", "index", "pairs recorded",
                     "near removed", "exact removed", "stages >= 1 s (s)"], rows)
    for run in record["runs"].values():
        recall = ((run.get("manifest") or {}).get("dedup") or {}).get("ivf_recall")
        if recall:
            lines.append(f"IVF recall at {run['rows']:,} rows on the stand-in vectors: {recall['recall']:.4f} "
                         f"({recall['found_pairs']} of {recall['exact_pairs']} pairs of {recall['sample_rows']} sampled rows).")
    for note in record.get("notes", []):
        lines.append(f"Note: {note}")
    lines.append("")
    volume = record.get("driver_memory_vs_volume")
    if volume:
        anon = volume.get("driver_peak_anon_ratio_largest_vs_smallest")
        lines.append(f"Driver peak RSS x{volume['driver_peak_ratio_largest_vs_smallest']} for "
                     f"x{volume['rows'][-1] // volume['rows'][0]} rows"
                     + (f"; its own heap (RssAnon, without the object-store pages it mapped) x{anon}" if anon else "")
                     + ". Per stage (MB):")
        lines.append("")
        per_anon = volume.get("driver_peak_anon_mb_per_stage") or {}
        header = [f"{n:,} rows RSS" for n in volume["rows"]]
        if per_anon:
            header += [f"{n:,} rows own heap" for n in volume["rows"]]
        lines += _table(["stage", *header],
                        [[stage, *peaks, *per_anon.get(stage, [])]
                         for stage, peaks in volume["driver_peak_rss_mb_per_stage"].items()])
    return lines


def gpu_check(record: dict) -> list[str]:
    lines = ["## The GPU embedding path", ""] + _provenance(record)
    if record.get("device") != "cuda":
        lines.append(f"Dry run on `{record.get('device')}` only (no GPU was lent): the numbers below check the "
                     "script, not a GPU.")
        lines.append("")
    rows = []
    for m in record["models"]:
        f, t, e = m["fidelity_vs_cpu_fp32"], m["throughput"], m["efficiency"]
        rows.append([m["model"], f["max_one_minus_cos"], f["decisions_changed_at_threshold"],
                     f["pairs_within_0.001_of_threshold"], t["embed_rows_per_s"], t["raw_encode_rows_per_s"],
                     _x(t["embed_vs_raw"]), e["tokens_per_s"], e["share_of_peak"]])
    return lines + _table(["model", "max 1-cos vs CPU fp32", "decisions changed at 0.95", "pairs within 0.001",
                           "Embed rows/s", "raw encode rows/s", "Embed vs raw", "tokens/s", "share of fp16 peak"],
                          rows)


def boilerplate(record: dict) -> list[str]:
    lines = ["## Boilerplate left out of the dedup text: what it changes", ""] + _provenance(record)
    rows = []
    for name, corpus in record["corpora"].items():
        for setting in corpus["settings"]:
            if setting["min_chars"] != 64:
                continue
            rows.append([name, corpus["dedup_on"], setting["min_rows"], setting["boilerplate_paragraphs"],
                         setting["rows_carrying"], setting["removals_without"], setting["removals_with"],
                         setting["disappear"], setting["appear"]])
    lines += _table(["corpus", "dedup on", "min rows", "boilerplate paragraphs", "rows carrying them",
                     "removals without", "removals with", "disappear", "appear"], rows)
    lines.append("Paragraphs of 64+ characters. The planted corpora put one real ~2,000-character (or 750-character) "
                 "tool description over 1,021 real rows; the real ones are every file of ../shared/data. On the real "
                 "rows, 20 and below strip answer content (code and templated answers shared by 6-32 rows); at 50 "
                 "and 100 only one line is boilerplate (a 77-character goodbye in 166 rows). The default, 100, "
                 "leaves headroom as such counts grow with the corpus.")
    return lines + [""]


SECTIONS = (
    ("end_to_end", end_to_end),
    ("boilerplate", boilerplate),
    ("many_files", many_files),
    ("many_files_scale", many_files_scale),
    ("gpu_check", gpu_check),
    ("embed_backends", embed_backends),
    ("embed_bf16", embed_bf16),
    ("int8_prefilter", int8_prefilter),
    ("prefilter_agreement", prefilter_agreement),
    ("tokenize_stage", tokenize_stage),
    ("embed_stage", embed_stage),
    ("ray_overhead", ray_overhead),
    ("index_search_20k", index_search),
    ("index_search_100k", index_search),
    ("ivf_scan", ivf_scan),
    ("vector_lookup", vector_lookup),
    ("driver_memory", driver_memory),
    ("embed_batch_memory", embed_batch_memory),
    ("embed_length_bucket", embed_length_bucket),
    ("scaling_index_1m", scaling_index_1m),
    ("scaling_job_user", scaling_job_user),
    ("scaling", scaling),
)


def plot(results: Path, out: Path) -> bool:
    """Bar charts: end-to-end wall time per variant and set, and embedding rows/s per runtime."""
    e2e, backends = _load(results, "end_to_end"), _load(results, "embed_backends")
    if not e2e and not backends:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (e2e, backends) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, record in zip(axes[0], panels):
        sets = record["sets"]
        variants = list(next(iter(sets.values()))["variants"])
        width = 0.8 / len(sets)
        for i, (name, data) in enumerate(sets.items()):
            if record is e2e:
                values = [data["variants"][v]["wall_s"] for v in variants]
            else:
                values = [data["variants"][v]["rows_per_s"] for v in variants]
            ax.bar([j + i * width for j in range(len(variants))], values, width, label=name)
        ax.set_xticks([j + width * (len(sets) - 1) / 2 for j in range(len(variants))], variants, rotation=15)
        ax.set_title("end to end, wall s (lower is better)" if record is e2e else "embedding rows/s (higher is better)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def write_report(results: Path, out: Path) -> None:
    lines = ["# Benchmark results", "",
             ("Generated by `python benchmarks/results_report.py` from `benchmarks/results/*.json` "
             "(`python benchmarks/run_all.py` runs everything and then this). Do not edit by hand."), ""]
    if plot(results, results / "summary.png"):
        lines += [f"![summary]({(results / 'summary.png').relative_to(out.parent)})", ""]
    for name, render in SECTIONS:
        record = _load(results, name)
        if record is None:
            lines += [f"## {name}: not run (no results/{name}.json)", ""]
            continue
        lines += render(record)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    results_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results"
    write_report(results_dir, Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "RESULTS.md")
