"""`chatsieve rethreshold OUT --threshold T --output NEW`: the result for another threshold, from the
pairs OUT recorded, without embedding or searching again.

Exact for any T >= OUT's record threshold: neighbors/ holds every pair down to it (rows that hit
--max-neighbors were re-searched exhaustively), and the candidates' priorities are in OUT/_work/.
NEW is a complete output of its own; its rows are read from OUT's rows checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.config import PrepareConfig
from jobs.dedup import DECISION_SCHEMA, decide, load_candidate_keys, plan_candidates, read_neighbors, write_neighbors
from jobs.runtime import ROWS_CHECKPOINT, Timings, commit, ensure_ray, finish, open_output
from operators import schema
from operators.write import MANIFEST, REMOVED_DIR, SUCCESS, WORK_DIR, Output, list_parquet


def run(source: str, threshold: float, output_path: str, overwrite: bool = False) -> dict:
    started = time.perf_counter()
    src = Output(source)
    if not src.exists(SUCCESS):
        raise ValueError(f"{src.uri} is not a complete chatsieve output (no _SUCCESS)")
    with src.fs.open_input_stream(src.child_path(MANIFEST)) as stream:
        old = json.loads(stream.read())
    config = PrepareConfig.from_dict(old["config"])
    if not config.dedup.enabled:
        raise ValueError(f"{src.uri} was prepared with --no-dedup: there are no recorded pairs to rethreshold")
    recorded = config.dedup.recorded
    if not recorded <= threshold <= 1.0:
        raise ValueError(
            f"--threshold {threshold} is below the record threshold {recorded} of {src.uri}: pairs under it were "
            "not recorded. Run prepare again with a lower --record-threshold (the vectors checkpoint is reused)."
        )
    config = dataclasses.replace(
        config,
        dedup=dataclasses.replace(config.dedup, threshold=threshold, record_threshold=recorded),
        output=dataclasses.replace(config.output, path=output_path, overwrite=overwrite),
    )
    if Output(output_path).uri == src.uri:
        raise ValueError("--output must differ from the output being rethresholded")
    job = {"command": "rethreshold", "source": src.uri, "threshold": threshold}
    with open_output(output_path, overwrite, job) as output:
        ensure_ray(config.resources.address, offline=True)  # nothing is embedded or tokenized here
        timings = Timings()
        with timings.stage("resolve"):
            # Rows the source removed as contaminated stay removed, and out of the keep rule, as they were.
            contaminated = carried_decisions(src, schema.CONTAMINATED)
            keys = load_candidate_keys(src)
            keys = keys.filter(pc.invert(pc.is_in(keys.column(schema.ID), value_set=contaminated.column(schema.ID))))
            plan = plan_candidates(keys, config.dedup.keep)
            neighbors = read_neighbors(src, plan)
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
        manifest["decontaminate"] = old.get("decontaminate")
        return finish(output, manifest, started)


def carried_decisions(src: Output, reason: str) -> pa.Table:
    """The source's removals for `reason`, as decisions to apply again."""
    tables = [
        pq.read_table(path, columns=DECISION_SCHEMA.names, filesystem=src.fs) for path in list_parquet(src, REMOVED_DIR)
    ]
    if not tables:
        return DECISION_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    return table.filter(pc.equal(table.column(schema.REASON), reason)).cast(DECISION_SCHEMA)
