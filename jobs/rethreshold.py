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

from jobs.config import PrepareConfig
from jobs.dedup import decide, load_candidate_keys, plan_candidates, read_neighbors, write_neighbors
from jobs.runtime import ROWS_CHECKPOINT, Timings, commit, ensure_ray, finish, open_output
from operators.write import MANIFEST, SUCCESS, WORK_DIR, Output


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
            plan = plan_candidates(load_candidate_keys(src), config.dedup.keep)
            neighbors = read_neighbors(src, plan)
            decisions, stats = decide(plan, neighbors, config.dedup)
            stats["neighbor_files"] = write_neighbors(output, plan, neighbors)
        manifest = commit(
            config, output, (src, (WORK_DIR, ROWS_CHECKPOINT)), timings, extra={"inputs": old["inputs"]},
            decisions=decisions,
        )
        manifest["inputs_skipped"] = old.get("inputs_skipped", [])
        manifest["dedup"] = {**stats, "rethreshold_of": source, "vectors": old["dedup"]["vectors"]}
        return finish(output, manifest, started)
