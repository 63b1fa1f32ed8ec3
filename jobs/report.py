"""`chatsieve report OUT` rebuilds OUT/report/ and OUT/README.md from an existing output (after
`rethreshold`, or with another --scale); `chatsieve inspect OUT` prints its summary in the terminal.
`write_report` is also what the prepare job calls before it writes `_SUCCESS`.

What is read, and how much of it (docs/architecture.md, "Big data"): manifest.json (the counts and the token
histograms, binned from exact counts by operators/report.py); neighbors/best, one float column streamed
batch by batch into fixed bins; removed/, four narrow columns streamed while keeping only the
PAIRS_SHOWN lowest and highest similarities; then data/ and removed/ filtered on at most 4 x PAIRS_SHOWN
ids. No step holds every row. Every read and write goes through `Output`, so OUT may be an object-store URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators import schema
from operators.plots import SCALES, similarity_png, token_lengths_png
from operators.report import SimilarityHistogram
from operators.report_html import dedup_settings, diff_views, message_view, render_card, render_html
from operators.write import (
    CARD,
    DATA_DIR,
    MANIFEST,
    NEIGHBORS_DIR,
    REMOVED_DIR,
    REPORT_DIR,
    SUCCESS,
    Output,
    list_parquet,
)

logger = logging.getLogger(__name__)

# 20 pairs on each side (the report issue asks for 20): 40 conversations a reader can judge in one sitting.
PAIRS_SHOWN = 20
READ_BATCH = 65536
TOKEN_PLOT, SIMILARITY_PLOT, HTML = "token_lengths.png", "similarity.png", "report.html"
PAIR_COLUMNS = [schema.ID, schema.REASON, schema.DUPLICATE_OF, schema.SIMILARITY]
ROW_COLUMNS = [schema.ID, schema.SOURCE, schema.SOURCE_ROW, schema.MESSAGES]
LOOKUP_BATCH = 4096  # rows decoded at a time while looking up the rows the report shows
SOURCES_SHOWN = 20  # inspect lists this many sources, the report all of them


# --- reading an output --------------------------------------------------------------------------------
def read_manifest(output: Output) -> dict:
    if not output.exists(MANIFEST):
        raise ValueError(f"{output.uri} has no {MANIFEST}: not a chatsieve output, or an incomplete one")
    with output.fs.open_input_stream(output.child_path(MANIFEST)) as stream:
        return json.loads(stream.read())


def _batches(output: Output, subdir: str, columns: list[str]):
    for path in list_parquet(output, subdir):
        yield from pq.ParquetFile(path, filesystem=output.fs).iter_batches(batch_size=READ_BATCH, columns=columns)


def similarity_histogram(output: Output) -> SimilarityHistogram:
    """Each row's best-neighbour similarity (neighbors/best), binned batch by batch."""
    histogram = SimilarityHistogram()
    for batch in _batches(output, f"{NEIGHBORS_DIR}/best", ["best_similarity"]):
        histogram.add(batch.column(0).to_numpy(zero_copy_only=False))
    return histogram


def _extremes(table: pa.Table, k: int) -> pa.Table:
    """The k lowest and k highest rows by (similarity, id), ascending: ties break the same way every run."""
    table = table.sort_by([(schema.SIMILARITY, "ascending"), (schema.ID, "ascending")])
    if table.num_rows <= 2 * k:
        return table
    return pa.concat_tables([table.slice(0, k), table.slice(table.num_rows - k)])


def select_pairs(output: Output, k: int = PAIRS_SHOWN) -> tuple[pa.Table, pa.Table]:
    """Removed near-duplicates closest to the threshold (lowest similarity first) and furthest above it
    (highest first, none of the closest repeated), streaming removed/ and holding at most 3k rows."""
    kept = None
    for batch in _batches(output, REMOVED_DIR, PAIR_COLUMNS):
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.equal(table.column(schema.REASON), schema.NEAR_DUPLICATE))
        kept = _extremes(table if kept is None else pa.concat_tables([kept, table]), k)
    if kept is None or not kept.num_rows:
        empty = schema.REMOVED_SCHEMA.empty_table().select(PAIR_COLUMNS)
        return empty, empty
    closest = kept.slice(0, k)
    furthest = kept.slice(min(k, kept.num_rows)).sort_by([(schema.SIMILARITY, "descending"), (schema.ID, "ascending")])
    return closest, furthest.slice(0, k)


def lookup_rows(output: Output, ids: list[str]) -> dict[str, dict]:
    """id -> {source, source_row, messages, where} for a few ids: data/ first, then removed/ (with
    --keep none a row's duplicate_of may itself be removed). Read a file at a time, a batch at a time, only
    matches held. (pyarrow's dataset scanner, even with readahead off, grew the driver by ~210 MB over 1M rows'
    messages; its default readahead decoded ~16 batches of 4 files at once: benchmarks/driver_memory.py.)"""
    found: dict[str, dict] = {}
    for subdir in (DATA_DIR, REMOVED_DIR):
        missing = pa.array(sorted(set(ids) - set(found)), pa.string())
        files = list_parquet(output, subdir)
        if not len(missing) or not files:
            continue
        for path in files:
            with output.fs.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=LOOKUP_BATCH, columns=ROW_COLUMNS):
                    matches = batch.filter(pc.is_in(batch.column(schema.ID), value_set=missing))
                    for row in matches.to_pylist():
                        found[row[schema.ID]] = {**row, "where": subdir}
    return found


def pair_views(output: Output, closest: pa.Table, furthest: pa.Table) -> dict[str, list[dict]]:
    ids = set()
    for table in (closest, furthest):
        ids.update(table.column(schema.ID).to_pylist())
        ids.update(table.column(schema.DUPLICATE_OF).to_pylist())
    rows = lookup_rows(output, sorted(i for i in ids if i is not None))

    def row_view(row_id: str | None, role: str) -> dict:
        row = rows.get(row_id)
        if row is None:
            return {"id": row_id, "source": "?", "source_row": "?", "messages": [],
                    "note": f"not found in {DATA_DIR}/ or {REMOVED_DIR}/"}
        note = "removed too (--keep none)" if role == "kept" and row["where"] == REMOVED_DIR else ""
        return {"id": row_id, "source": row[schema.SOURCE], "source_row": row[schema.SOURCE_ROW],
                "messages": message_view(row[schema.MESSAGES]), "note": note}

    def pair_view(p: dict) -> dict:
        kept, removed = row_view(p[schema.DUPLICATE_OF], "kept"), row_view(p[schema.ID], "removed")
        diff_views(kept["messages"], removed["messages"])
        return {"similarity": float(p[schema.SIMILARITY]), "kept": kept, "removed": removed}

    return {
        name: [pair_view(p) for p in table.to_pylist()]
        for name, table in (("closest", closest), ("furthest", furthest))
    }


CONTAMINATED_SHOWN = 20  # per benchmark file


def contamination_views(output: Output, k: int = CONTAMINATED_SHOWN) -> list[dict]:
    """Per benchmark file: its contaminated rows (the first k by id) beside the benchmark prompt they matched.

    removed/ is streamed on four narrow columns; the prompts come from _work/benchmarks/ (absent from a copy
    of the output without _work/: the page then says so)."""
    from jobs.decontaminate import BENCHMARKS_DIR, PROMPTS_FILE
    from operators.write import WORK_DIR

    columns = [schema.ID, schema.REASON, schema.DETAIL, schema.DUPLICATE_OF, schema.DUPLICATE_OF_SOURCE]
    by_file: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}
    for batch in _batches(output, REMOVED_DIR, columns):
        table = pa.Table.from_batches([batch])
        for row in table.filter(pc.equal(table.column(schema.REASON), schema.CONTAMINATED)).to_pylist():
            where = row[schema.DUPLICATE_OF_SOURCE] or "?"
            source_file = where.split("#", 1)[0]
            counts[source_file] = counts.get(source_file, 0) + 1
            rows = by_file.setdefault(source_file, [])
            rows.append(row)
            rows.sort(key=lambda r: r[schema.ID])
            del rows[k:]
    if not by_file:
        return []
    prompts: dict[str, list[str]] = {}
    if output.exists(WORK_DIR, BENCHMARKS_DIR, PROMPTS_FILE):
        wanted = sorted({r[schema.DUPLICATE_OF] for rows in by_file.values() for r in rows})
        table = pq.read_table(output.child_path(WORK_DIR, BENCHMARKS_DIR, PROMPTS_FILE), filesystem=output.fs,
                              columns=["row_id", "turn", "dedup_text"], filters=[("row_id", "in", wanted)])
        for row in table.sort_by([("row_id", "ascending"), ("turn", "ascending")]).to_pylist():
            prompts.setdefault(row["row_id"], []).append(row["dedup_text"])
    found = lookup_rows(output, sorted(r[schema.ID] for rows in by_file.values() for r in rows))
    views = []
    for source_file in sorted(by_file):
        shown = []
        for row in by_file[source_file]:
            training = found.get(row[schema.ID], {})
            text = prompts.get(row[schema.DUPLICATE_OF])
            shown.append({
                "id": row[schema.ID], "detail": row[schema.DETAIL], "where": row[schema.DUPLICATE_OF_SOURCE],
                "source": training.get(schema.SOURCE, "?"), "source_row": training.get(schema.SOURCE_ROW, "?"),
                "messages": message_view(training.get(schema.MESSAGES)),
                "prompts": message_view([{"role": f"prompt {i}" if len(text) > 1 else "prompt", "content": t}
                                         for i, t in enumerate(text)]) if text else [],
            })
        views.append({"file": source_file, "rows": counts[source_file], "shown": shown})
    return views


# --- writing report/ and the card ------------------------------------------------------------------------
def _write_bytes(output: Output, name: str, data: bytes) -> None:
    with output.fs.open_output_stream(output.child_path(REPORT_DIR, name)) as stream:
        stream.write(data)


def write_report(output: Output, manifest: dict, scale: str = "auto") -> list[str]:
    """Write report/ (token_lengths.png, similarity.png unless dedup was off, report.html) and README.md.
    Returns the paths written, relative to the output."""
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    started = time.perf_counter()
    output.delete_dir(REPORT_DIR)  # a rebuild never leaves a stale plot behind
    output.fs.create_dir(output.child_path(REPORT_DIR), recursive=True)
    length, dedup = manifest["config"]["length"], dedup_settings(manifest)
    images, notes = {}, []
    histograms = (manifest.get("tokens") or {}).get("histograms")
    if histograms is None:
        notes.append("This manifest has no token histograms (an output of an older chatsieve): run prepare again "
                     "for the token-length plot.")
    else:
        images["token_lengths"] = token_lengths_png(histograms, length["max_tokens"], length["min_tokens"], scale)
    # Dedup off: no neighbours were searched, so there is no similarity plot at all (the page says so).
    if dedup["enabled"]:
        histogram = similarity_histogram(output)
        images["similarity"] = similarity_png(histogram, dedup["threshold"], dedup["recorded"], scale)
        closest, furthest = select_pairs(output)
        pairs = pair_views(output, closest, furthest)
    else:
        pairs = {"closest": [], "furthest": []}
    contamination = contamination_views(output) if manifest.get("decontaminate") else []
    rethreshold_of = (manifest.get("dedup") or {}).get("rethreshold_of")
    if rethreshold_of:
        notes.append(f"Rethresholded from {rethreshold_of} at threshold {dedup['threshold']}.")
    written = []
    for key, name in (("token_lengths", TOKEN_PLOT), ("similarity", SIMILARITY_PLOT)):
        if key in images:
            _write_bytes(output, name, images[key])
            written.append(f"{REPORT_DIR}/{name}")
    # The output's name, not the host path: the page travels with the dataset (uploaded, shared).
    html = render_html(manifest, output.name, images, pairs, notes, contamination)
    _write_bytes(output, HTML, html.encode())
    output.write_text(CARD, render_card(manifest))
    written += [f"{REPORT_DIR}/{HTML}", CARD]
    logger.info("report written in %.1f s: %s", time.perf_counter() - started, ", ".join(written))
    return written


def report(out_uri: str, scale: str = "auto") -> str:
    """`chatsieve report OUT`: rebuild report/ and README.md of a complete output; returns a summary line."""
    output = Output(out_uri)
    if not output.exists(SUCCESS):
        raise ValueError(f"{output.uri} is not a complete chatsieve output (no {SUCCESS})")
    written = write_report(output, read_manifest(output), scale)
    return f"wrote {', '.join(output.child_uri(p) for p in written)}"


# --- inspect -----------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list], align: str) -> list[str]:
    """Plain text columns; align: one 'l' or 'r' per column."""
    cells = [[str(c) for c in header]] + [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()
            for r in cells]


def inspect_manifest(manifest: dict, output: Output, complete: bool) -> str:
    rows = manifest["rows"]
    lines = [f"chatsieve output {output.uri} ({'complete' if complete else f'INCOMPLETE: no {SUCCESS}'}), "
             f"chatsieve {manifest.get('chatsieve_version')}", ""]
    lines += _table(["stage", "in", "out", "dropped"],
                    [[s["stage"], s["in"], s["out"], ", ".join(f"{r}={n}" for r, n in s["dropped"].items()) or "-"]
                     for s in rows["stages"]], "lrrl")
    lines += ["", f"read {rows['read']} = kept {rows['kept']} + removed {rows['removed']} "
                  f"+ rejected {rows['rejected']}", ""]
    sources = list(rows["by_source"].items())
    lines += _table(["source", "kept", "removed", "rejected"],
                    [[s, c["kept"], c["removed"], c["rejected"]] for s, c in sources[:SOURCES_SHOWN]], "lrrr")
    if len(sources) > SOURCES_SHOWN:
        lines.append(f"... {len(sources) - SOURCES_SHOWN} more sources (manifest.json rows.by_source)")
    tokens = manifest.get("tokens") or {}
    keys = ["rows", "min", "mean", "p50", "p90", "p99", "max"]
    token_rows = [[view.replace("_", " "), column, *[(summary or {}).get(k) for k in keys]]
                  for view in ("before_length_filter", "kept")
                  for column, summary in (tokens.get(view) or {}).items()]
    length = manifest["config"]["length"]
    lines += ["", f"tokens (tokenizer {manifest['config']['tokenizer']['name_or_path']}, "
                  f"--max-tokens {length['max_tokens']}, --min-tokens {length['min_tokens']})"]
    lines += _table(["rows", "column", *keys], token_rows, "ll" + "r" * len(keys))
    dedup = dedup_settings(manifest)
    stats = manifest.get("dedup") or {}
    lines.append("")
    if dedup["enabled"]:
        lines.append(f"near-duplicates: threshold {dedup['threshold']} (pairs recorded from {dedup['recorded']}), "
                     f"keep {dedup['keep']}, on {dedup['dedup_on']}, embedder {manifest['config']['embed']['model']}: "
                     f"{stats.get('exact_duplicates_removed', 0)} exact + "
                     f"{stats.get('near_duplicates_removed', 0)} near "
                     f"removed, {stats.get('pairs_recorded', 0)} pairs recorded")
    else:
        lines.append("near-duplicates: off (--no-dedup)")
    lines += ["", "time per stage"]
    lines += _table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in manifest.get("timings_s", {}).items()], "lr")
    html = output.child_uri(REPORT_DIR, HTML)
    lines += ["", f"report: {html}" if output.exists(REPORT_DIR, HTML)
              else f"report: none yet (chatsieve report {output.uri} writes {html})"]
    return "\n".join(lines)


def inspect(out_uri: str) -> str:
    """`chatsieve inspect OUT`: the summary table of an output, as text."""
    output = Output(out_uri)
    return inspect_manifest(read_manifest(output), output, output.exists(SUCCESS))


# --- CLI ---------------------------------------------------------------------------------------------------
def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT", help="a complete chatsieve output (directory or object-store URI)")
    parser.add_argument("--scale", choices=SCALES, default="auto",
                        help="histogram axes: log for long tails, linear, or auto (log where a long tail "
                        "squashes the linear view; default)")


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT", help="a chatsieve output (directory or object-store URI)")


def run_report(args: argparse.Namespace) -> str:
    return report(args.output, args.scale)


def run_inspect(args: argparse.Namespace) -> str:
    return inspect(args.output)
