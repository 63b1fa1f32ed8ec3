"""`chatsieve rethreshold OUT --threshold T --output NEW`: the result for another threshold, from the
pairs OUT recorded, without embedding or searching again.

Exact for any T >= OUT's record threshold: neighbors/ holds every pair down to it (rows that hit
--max-neighbors were re-searched exhaustively), and the candidates' priorities are in OUT/_work/.
NEW is a complete output of its own; its rows are read from OUT's rows checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.config import PrepareConfig
from jobs.dedup import (
    DECISION_SCHEMA,
    CandidatePlan,
    decide,
    load_candidate_keys,
    plan_candidates,
    read_neighbors,
    without_reference_pairs,
    write_neighbors,
)
from jobs.runtime import ROWS_CHECKPOINT, Timings, commit, ensure_ray, finish, open_output
from operators import schema
from operators.resolve import resolve_greedy, resolve_none
from operators.write import MANIFEST, REMOVED_DIR, SUCCESS, WORK_DIR, Output, list_parquet

logger = logging.getLogger(__name__)


def run(source: str, threshold: float | None, output_path: str, overwrite: bool = False,
        target_rows: int | None = None) -> dict:
    """Write OUT's result at `threshold`, or at the threshold that keeps closest to `target_rows` rows."""
    started = time.perf_counter()
    src = Output(source)
    if not src.exists(SUCCESS):
        raise ValueError(f"{src.uri} is not a complete chatsieve output (no _SUCCESS)")
    if (threshold is None) == (target_rows is None):
        raise ValueError("give either --threshold or --target-rows")
    with src.fs.open_input_stream(src.child_path(MANIFEST)) as stream:
        old = json.loads(stream.read())
    config = PrepareConfig.from_dict(old["config"])
    if not config.dedup.enabled:
        raise ValueError(f"{src.uri} was prepared with --no-dedup: there are no recorded pairs to rethreshold")
    recorded = config.dedup.recorded
    if threshold is not None and not recorded <= threshold <= 1.0:
        raise ValueError(
            f"--threshold {threshold} is below the record threshold {recorded} of {src.uri}: pairs under it were "
            "not recorded. Run prepare again with a lower --record-threshold (the vectors checkpoint is reused)."
        )
    if Output(output_path).uri == src.uri:
        raise ValueError("--output must differ from the output being rethresholded")
    # Read without Ray, so that a target out of reach is refused before anything is written.
    # Rows the source removed as contaminated stay removed, and out of the keep rule, as they were.
    contaminated = carried_decisions(src, schema.CONTAMINATED)
    keys = load_candidate_keys(src)
    keys = keys.filter(pc.invert(pc.is_in(keys.column(schema.ID), value_set=contaminated.column(schema.ID))))
    plan = plan_candidates(keys, config.dedup.keep)
    neighbors = without_reference_pairs(plan, read_neighbors(src, plan))
    choice = None
    if target_rows is not None:
        choice = choose_threshold(plan, neighbors, config.dedup, target_rows, rows_before_dedup(old))
        threshold = choice["threshold"]
        logger.info("--target-rows %d: threshold %s keeps %d rows", target_rows, threshold, choice["kept"])
    config = dataclasses.replace(
        config,
        dedup=dataclasses.replace(config.dedup, threshold=threshold, record_threshold=recorded),
        output=dataclasses.replace(config.output, path=output_path, overwrite=overwrite),
    )
    job = {"command": "rethreshold", "source": src.uri, "threshold": threshold}
    with open_output(output_path, overwrite, job) as output:
        ensure_ray(config.resources.address, offline=True)  # nothing is embedded or tokenized here
        timings = Timings()
        with timings.stage("resolve"):
            decisions, stats = decide(plan, neighbors, config.dedup, config.dedup.against)
            decisions = pa.concat_tables([contaminated, decisions])
            stats["neighbor_files"] = write_neighbors(output, plan, neighbors)
        manifest = commit(
            config, output, (src, (WORK_DIR, ROWS_CHECKPOINT)), timings, extra={"inputs": old["inputs"]},
            decisions=decisions,
        )
        manifest["inputs_skipped"] = old.get("inputs_skipped", [])
        manifest["dedup"] = {
            **stats, "rethreshold_of": source, "vectors": old["dedup"]["vectors"],
            **{key: old["dedup"][key] for key in ("boilerplate", "references") if key in old["dedup"]},
        }
        if choice is not None:
            manifest["dedup"]["target_rows"] = choice
        manifest["decontaminate"] = old.get("decontaminate")
        return finish(output, manifest, started)


def rows_before_dedup(manifest: dict) -> int:
    """Rows the source kept before the keep rule (its duplicate removals added back; contaminated rows stay out)."""
    by_reason = manifest["rows"]["by_reason"]
    undone = (schema.EXACT_DUPLICATE, schema.NEAR_DUPLICATE, schema.IN_REFERENCE)
    return manifest["rows"]["kept"] + sum(by_reason.get(reason, 0) for reason in undone)


def removed_at(plan: CandidatePlan, neighbors, keep: str, threshold: float) -> int:
    """Input rows the keep rule removes at `threshold` (the count of `decide`'s decisions, without building them)."""
    m = plan.m
    resolve = resolve_none if keep == "none" else resolve_greedy
    result = resolve(m, neighbors.pairs_a, neighbors.pairs_b, neighbors.pairs_sim, threshold)
    is_ref = plan.reference >= 0
    rep_is_ref = is_ref[plan.rep_rank]
    copies = int(np.sum(~plan.is_rep & ~is_ref))
    removed = ~result.kept
    if keep == "none":
        removed |= np.bincount(plan.rep_index, minlength=m) > 1
    return copies + int(np.sum(removed & ~rep_is_ref))


def choose_threshold(plan: CandidatePlan, neighbors, dedup, target: int, before: int) -> dict:
    """The recorded threshold whose result keeps closest to `target` rows (ties: the higher threshold, which
    removes less); raises with advice when `target` is out of reach of the recorded pairs.

    The result changes only where a recorded similarity is crossed, so the candidates are those similarities
    (and, if every pair can be dropped, a threshold just above the highest). Rows kept grow with the
    threshold almost everywhere (the greedy rule is not strictly monotone), so a binary search finds the
    crossing and its neighbours are compared."""
    sims = np.unique(neighbors.pairs_sim.astype(np.float32))
    candidates = sims[sims >= np.float32(dedup.recorded)]
    above = np.nextafter(candidates[-1], np.float32(2)) if len(candidates) else np.float32(dedup.recorded)
    if above <= 1.0:
        candidates = np.append(candidates, above)
    if not len(candidates):
        candidates = np.array([np.float32(dedup.recorded)])
    kept_cache: dict[int, int] = {}

    def kept(i: int) -> int:
        if i not in kept_cache:
            kept_cache[i] = before - removed_at(plan, neighbors, dedup.keep, float(candidates[i]))
        return kept_cache[i]

    lowest, highest = kept(0), kept(len(candidates) - 1)
    if target < lowest:
        raise ValueError(
            f"--target-rows {target} is out of reach: at the record threshold {dedup.recorded} the recorded pairs "
            f"keep {lowest} rows. Run prepare again with a lower --record-threshold (the vectors are reused)."
        )
    if target > highest:
        raise ValueError(
            f"--target-rows {target} is out of reach: with no near-duplicate removed, {highest} rows are kept "
            f"(exact duplicates and the earlier filters remove the rest: see the source's manifest). Lower "
            "--target-rows, or prepare again with looser filters (--max-tokens, --keep)."
        )
    lo, hi = 0, len(candidates) - 1  # first candidate keeping >= target
    while lo < hi:
        mid = (lo + hi) // 2
        if kept(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    window = range(max(0, lo - 3), min(len(candidates), lo + 4))
    best = min(window, key=lambda i: (abs(kept(i) - target), -i))
    lower = float(candidates[best - 1]) if best > 0 else None
    return {
        "target": target,
        "threshold": round(float(candidates[best]), 7),
        "kept": kept(best),
        # Any threshold in (lower, threshold] gives the same rows.
        "same_result_above": lower,
        "resolves": len(kept_cache),
    }


def carried_decisions(src: Output, reason: str) -> pa.Table:
    """The source's removals for `reason`, as decisions to apply again."""
    tables = [
        pq.read_table(path, columns=DECISION_SCHEMA.names, filesystem=src.fs) for path in list_parquet(src, REMOVED_DIR)
    ]
    if not tables:
        return DECISION_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    return table.filter(pc.equal(table.column(schema.REASON), reason)).cast(DECISION_SCHEMA)
