"""The prepare job: parse config -> build the Ray Data plan -> run -> commit the output layout.

    read+normalize (tasks) -> tokenize (CPU actor pool) -> length filter -> [dedup: next stage]
      -> _work/rows/ (every row, with its status)  -> commit: data/ removed/ rejected/ manifest _SUCCESS

Run as `chatsieve prepare ...` or `python -m jobs.prepare ...`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from jobs import progress
from jobs.config import PrepareConfig
from jobs.decontaminate import load_benchmarks
from jobs.references import open_references
from jobs.resources import IO_TASK_CPUS, plan_tokenize
from jobs.runtime import ROWS_CHECKPOINT, Timings, commit, ensure_ray, finish, in_submitted_job, open_output
from operators import schema
from operators.discover import Discovery, discover
from operators.length import length_filter
from operators.read import group_for_reading, input_file_to_dict, read_file_batches
from operators.tokens import DEFAULT_TOKENIZER, Tokenize
from operators.write import WORK_DIR, Output

logger = logging.getLogger(__name__)


def read_and_normalize(batch: pa.Table, normalize_config):
    """Ray stage: one group of input files per call (operators/read.group_for_reading), yielding normalized
    WORK_SCHEMA batches, file after file."""
    from operators.discover import InputFile

    for group in batch.column("files").to_pylist():
        for item in group:
            yield from read_file_batches(InputFile(**item), normalize_config)


def check_submitted_job_paths(config: PrepareConfig) -> None:
    """Inside a submitted job the cwd is a temporary copy of the submitter's working dir: a relative path
    that does not exist there almost surely meant the submitter's directory, which the job cannot see."""
    if not in_submitted_job():
        return
    candidates = [
        p for p in (*config.inputs, *config.dedup.against, *config.decontaminate.paths)
        if p != "sample" and not p.startswith("hf:")
    ] + [config.output.path]
    for path in candidates:
        if "://" in path or os.path.isabs(path):
            continue
        if not os.path.exists(path) or path == config.output.path:
            raise ValueError(
                f"{path!r} is a relative path inside a Ray job, whose working directory is a temporary copy of "
                "the submitter's: use an absolute path on the cluster's shared storage, or a URI (s3://, gs://)"
            )


def resolve_inputs(config: PrepareConfig, output: Output) -> list[str]:
    if not config.uses_sample:
        return list(config.inputs)
    from jobs.sample import SampleConfig, write_sample

    # The sample lives beside the run's checkpoints, so its rows are named sample/shard-... and every
    # node can read it, on a local disk or an object store (generated locally, then copied there).
    if "://" not in output.uri:
        sample_dir = output.child_path(WORK_DIR, "sample")
        write_sample(sample_dir, SampleConfig(rows=config.sample_rows))
        return [sample_dir]
    with tempfile.TemporaryDirectory(prefix="chatsieve-sample-") as local:
        write_sample(os.path.join(local, "sample"), SampleConfig(rows=config.sample_rows))
        output.delete_dir(WORK_DIR, "sample")
        pafs.copy_files(
            os.path.join(local, "sample"), output.child_path(WORK_DIR, "sample"),
            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=output.fs,
        )
    return [output.child_uri(WORK_DIR, "sample")]


def build_rows_plan(config: PrepareConfig, inputs: list) -> ray.data.Dataset:
    """The streaming part of the job: every row read comes out once, with its status."""
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0)
    tokenize = plan_tokenize(cluster_cpus, config.resources.tokenize_actors, nodes=nodes)
    logger.info("tokenize: %d actors x %.2f CPU", tokenize.actors, tokenize.cpus_per_actor)
    group_mb = config.resources.read_group_mb
    groups = group_for_reading(inputs, cluster_cpus, None if group_mb is None else int(group_mb * 2**20))
    logger.info("read: %d files in %d tasks", len(inputs), len(groups))
    files = ray.data.from_items(
        [{"files": [input_file_to_dict(f) for f in group]} for group in groups], override_num_blocks=len(groups)
    )
    ds = files.map_batches(
        read_and_normalize,
        fn_kwargs={"normalize_config": config.normalize},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=IO_TASK_CPUS,
    )
    ds = ds.map_batches(
        Tokenize,
        fn_constructor_args=(config.tokenizer,),
        batch_size=config.resources.tokenize_batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=tokenize.actors),
        num_cpus=tokenize.cpus_per_actor,
    )
    ds = ds.map_batches(
        length_filter,
        fn_kwargs={"min_tokens": config.length.min_tokens, "max_tokens": config.length.max_tokens},
        batch_format="pyarrow",
        num_cpus=IO_TASK_CPUS,
    )
    # Near-duplicate removal (exact dedup -> embed -> index -> resolve) plugs in here.
    return ds


def run(config: PrepareConfig) -> dict:
    """Run the whole job; returns the manifest. Raises on config faults; data faults become rows.

    Inputs are discovered and the output checked before Ray starts: a missing input, a refused URI or a
    complete output fails in about a second, with nothing written."""
    started = time.perf_counter()
    check_submitted_job_paths(config)
    discovery = None if config.uses_sample else discover(list(config.inputs))
    # References and benchmarks are checked (and benchmarks read: they are small) before Ray starts.
    references = open_references(config.dedup.against)
    benchmarks = load_benchmarks(config.decontaminate.paths) if config.decontaminate.enabled else None
    with open_output(config.output.path, config.output.overwrite, job_identity(config)) as output:
        offline = config.tokenizer.name_or_path == DEFAULT_TOKENIZER or os.path.isdir(config.tokenizer.name_or_path)
        ensure_ray(config.resources.address, offline)
        from jobs.dedup import check_prefilter_device

        check_prefilter_device(config, ray.cluster_resources())
        from ray.data import DataContext

        context = DataContext.get_current()
        saved_block_size = context.target_max_block_size
        # A read task's rows are cut into blocks of this size; each block goes to one tokenizer actor, so
        # Ray's 128 MiB default would leave a single large file to a single actor. (ds.repartition would
        # add a whole-CPU task that cannot fuse with fractional-CPU maps: the 2-core deadlock.)
        context.target_max_block_size = int(config.resources.block_size_mb * 2**20)
        try:
            return _run(config, output, discovery, Timings(), started, references, benchmarks)
        finally:
            context.target_max_block_size = saved_block_size


def write_rows_block(block: pa.Table, fs, directory: str) -> pa.Table:
    """Ray stage: write one block of the rows checkpoint; returns its row count (the progress display's).

    Named by the ids it holds, so a retried task rewrites the same file instead of adding a second copy."""
    if block.num_rows:
        digest = hashlib.sha1("\n".join(block.column(schema.ID).to_pylist()).encode()).hexdigest()[:24]
        pq.write_table(block, f"{directory}/part-{digest}.parquet", filesystem=fs, compression="zstd")
    return pa.table({"rows": [block.num_rows]})


def job_identity(config: PrepareConfig) -> dict:
    """What decides this job's result (open_output resumes only the same job): every setting but the
    resources (the result does not depend on them), the output's path and --overwrite."""
    settings = config.to_dict()
    settings.pop("resources")
    settings["output"] = {k: v for k, v in settings["output"].items() if k not in ("path", "overwrite")}
    return {"command": "prepare", "config": settings}


def _run(config: PrepareConfig, output: Output, discovery: Discovery | None, timings: Timings, started: float,
         references: list, benchmarks) -> dict:
    with timings.stage("discover"):
        if discovery is None:
            discovery = discover(resolve_inputs(config, output))
    inputs = discovery.files
    logger.info("%d input files", len(inputs))
    for skipped in discovery.skipped:
        logger.warning("input %s skipped: %s", skipped["path"], skipped["reason"])
    rows = (output, (WORK_DIR, ROWS_CHECKPOINT))
    output.delete_dir(WORK_DIR, ROWS_CHECKPOINT)  # an earlier attempt's rows never mix in
    output.fs.create_dir(output.child_path(WORK_DIR, ROWS_CHECKPOINT), recursive=True)
    display = progress.current()
    with timings.stage("read_normalize_tokenize_filter"), display.stage("read", unit="rows"):
        written = build_rows_plan(config, inputs).map_batches(
            write_rows_block,
            fn_args=(output.fs, output.child_path(WORK_DIR, ROWS_CHECKPOINT)),
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=IO_TASK_CPUS,
        )
        for counts in written.iter_batches(batch_format="pyarrow", batch_size=None):
            display.advance(int(pc.sum(counts.column("rows")).as_py() or 0))
    decisions, dedup_manifest, contamination = [], None, None
    if benchmarks is not None:
        from jobs.decontaminate import run_decontaminate

        contamination = run_decontaminate(config, output, rows, benchmarks, timings)
        decisions.append(contamination.decisions)
    if config.dedup.enabled:
        from jobs.dedup import run_dedup

        outcome = run_dedup(config, output, rows, timings, references,
                            excluded=None if contamination is None else contamination.ids)
        decisions.append(outcome.decisions)
        dedup_manifest = outcome.manifest
    manifest = commit(
        config,
        output,
        rows,
        timings,
        decisions=pa.concat_tables(decisions) if decisions else None,
        # Object-store URIs, but no absolute path of the submitting machine: the source names the file.
        extra={"inputs": [{"source": f.source, **({"uri": f.uri} if "://" in f.uri else {})} for f in inputs]},
    )
    manifest["inputs_skipped"] = discovery.skipped
    manifest["dedup"] = dedup_manifest
    manifest["decontaminate"] = None if contamination is None else contamination.manifest
    return finish(output, manifest, started)


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.prepare ...`: the same as `chatsieve prepare ...`."""
    import argparse

    from jobs.config import add_prepare_arguments, config_from_args
    from jobs.runtime import run_command

    parser = argparse.ArgumentParser(prog="python -m jobs.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    add_prepare_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command(args, lambda: run(config_from_args(args)), getattr(args, "output", None))


if __name__ == "__main__":
    sys.exit(main())
