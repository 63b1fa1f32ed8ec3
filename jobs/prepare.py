"""The prepare job: parse config -> build the Ray Data plan -> run -> commit the output layout.

    read+normalize (tasks) -> tokenize (CPU actor pool) -> length filter -> [dedup: next stage]
      -> _work/rows/ (every row, with its status)  -> commit: data/ removed/ rejected/ manifest _SUCCESS

Run as `chatsieve prepare ...` or `python -m jobs.prepare ...`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy, DataContext

from jobs.config import PrepareConfig
from jobs.report import write_report
from jobs.resources import IO_TASK_CPUS, plan_tokenize
from operators import schema
from operators.length import length_filter
from operators.read import discover_inputs, input_file_to_dict, read_file_batches
from operators.report import RowStats
from operators.tokens import DEFAULT_TOKENIZER, Tokenize
from operators.write import (
    DATA_DIR,
    MANIFEST,
    REJECTED_DIR,
    REMOVED_DIR,
    WORK_DIR,
    Output,
    read_checkpoint,
    write_shards,
)

logger = logging.getLogger(__name__)

ROWS_CHECKPOINT = "rows"
# Packages whose versions decide the output; recorded in manifest.json.
VERSIONED_PACKAGES = (
    "chatsieve", "ray", "pyarrow", "transformers", "tokenizers", "sentence-transformers",
    "mistral-common", "faiss-cpu", "faiss-gpu", "torch", "numpy",
)


class Timings:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        logger.info("stage %s ...", name)
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        logger.info("stage %s done in %.1f s", name, self.seconds[name])


def read_and_normalize(batch: pa.Table, normalize_config):
    """Ray stage: one input file per call, yielding normalized WORK_SCHEMA batches."""
    from operators.read import InputFile

    for item in batch.to_pylist():
        yield from read_file_batches(InputFile(**item), normalize_config)


def in_submitted_job() -> bool:
    """True inside `ray job submit`: the job supervisor hands the driver its job config in this variable."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return False
    try:
        return "job_submission_id" in json.loads(raw).get("metadata", {})
    except (ValueError, AttributeError):
        return False


def check_submitted_job_paths(config: PrepareConfig) -> None:
    """Inside a submitted job the cwd is a temporary copy of the submitter's working dir: a relative path
    that does not exist there almost surely meant the submitter's directory, which the job cannot see."""
    if not in_submitted_job():
        return
    candidates = [p for p in config.inputs if p != "sample" and not p.startswith("hf:")] + [config.output.path]
    for path in candidates:
        if "://" in path or os.path.isabs(path):
            continue
        if not os.path.exists(path) or path == config.output.path:
            raise ValueError(
                f"{path!r} is a relative path inside a Ray job, whose working directory is a temporary copy of "
                "the submitter's: use an absolute path on the cluster's shared storage, or a URI (s3://, gs://)"
            )


def ensure_ray(config: PrepareConfig) -> None:
    if ray.is_initialized():
        return
    if in_submitted_job():
        ray.init()  # the job's runtime_env (cluster/runtime_env.yaml) already applies to every worker
        return
    env_vars = {"TOKENIZERS_PARALLELISM": "true"}
    if config.tokenizer.name_or_path == DEFAULT_TOKENIZER or os.path.isdir(config.tokenizer.name_or_path):
        # Offline defaults: fail loudly rather than touch a hub (read when huggingface_hub is imported).
        env_vars["HF_HUB_OFFLINE"] = "1"
    ray.init(address=config.resources.address, runtime_env={"env_vars": env_vars}, log_to_driver=True)


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
    files = ray.data.from_items([input_file_to_dict(f) for f in inputs], override_num_blocks=len(inputs))
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


def _select(batch: pa.Table, status: str, out_schema: pa.Schema, renames: dict[str, str]) -> pa.Table:
    rows = batch.filter(pc.equal(batch.column(schema.STATUS), status))
    rows = rows.rename_columns([renames.get(n, n) for n in rows.column_names])
    return rows.select(out_schema.names).cast(out_schema)


OUTPUTS = (
    (schema.KEPT, DATA_DIR, schema.DATA_SCHEMA, {}),
    (schema.REMOVED, REMOVED_DIR, schema.REMOVED_SCHEMA, {}),
    (schema.REJECTED, REJECTED_DIR, schema.REJECTED_SCHEMA, {schema.REASON: schema.ERROR}),
)


def apply_decisions(batch: pa.Table, decisions: pa.Table) -> pa.Table:
    """Mark the rows that dedup removed: status, reason, detail, duplicate_of, similarity."""
    position = pc.index_in(batch.column(schema.ID), value_set=decisions.column(schema.ID))
    hit = pc.is_valid(position)
    if not pc.any(hit).as_py():
        return batch
    taken = decisions.take(pc.fill_null(position, 0))
    columns = {name: batch.column(name) for name in batch.column_names}
    columns[schema.STATUS] = pc.if_else(hit, schema.REMOVED, batch.column(schema.STATUS))
    for name in (schema.REASON, schema.DETAIL, schema.DUPLICATE_OF, schema.SIMILARITY):
        columns[name] = pc.if_else(hit, taken.column(name), batch.column(name))
    return pa.table(columns, schema=schema.WORK_SCHEMA)


def commit(
    config: PrepareConfig,
    output: Output,
    rows: tuple[Output, tuple[str, ...]],
    timings: Timings,
    extra: dict,
    decisions: pa.Table | None,
) -> dict:
    """Turn the rows checkpoint into the final layout and check the accounting; returns the manifest.

    One read and one distributed sort of the checkpoint; each status is then selected from the sorted
    blocks with Ray Data's order preserved, so shards come out in (source, source_row) order.
    """
    context = DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        with timings.stage("sort"):
            ordered = read_checkpoint(*rows, empty=schema.WORK_SCHEMA)
            if decisions is not None and decisions.num_rows:
                ordered = ordered.map_batches(
                    apply_decisions, fn_args=(decisions,), batch_format="pyarrow", num_cpus=IO_TASK_CPUS
                )
            ordered = ordered.sort([schema.SOURCE, schema.SOURCE_ROW]).materialize()
        stats = RowStats()
        with timings.stage("stats"):
            for batch in ordered.select_columns(list(RowStats.COLUMNS)).iter_batches(
                batch_format="pyarrow", batch_size=65536
            ):
                stats.add(batch)
        files: dict[str, list[str]] = {}
        for status, subdir, out_schema, renames in OUTPUTS:
            with timings.stage(f"write_{subdir}"):
                selected = ordered.map_batches(
                    _select, fn_args=(status, out_schema, renames), batch_format="pyarrow", num_cpus=IO_TASK_CPUS
                ).materialize()
                files[subdir] = write_shards(selected, output, subdir, out_schema, config.output.rows_per_shard)
    finally:
        context.execution_options.preserve_order = preserve_order
    rows = stats.manifest_rows()
    written = {subdir: _count_rows(output, subdir, names) for subdir, names in files.items()}
    check_accounting(rows, written)
    return {
        "chatsieve_version": _version("chatsieve"),
        "config": config.to_dict(),
        "inputs": extra["inputs"],
        "rows": rows,
        "tokens": stats.manifest_tokens(),
        "files": files,
        "timings_s": timings.seconds,
        "versions": _versions(),
        "ray": {"cluster_resources": {k: v for k, v in ray.cluster_resources().items() if "node:" not in k}},
    }


def check_accounting(rows: dict, written: dict[str, int]) -> None:
    """The invariant of ARCHITECTURE.md: rows read = kept + removed + rejected, in the files too."""
    expected = {DATA_DIR: rows["kept"], REMOVED_DIR: rows["removed"], REJECTED_DIR: rows["rejected"]}
    if written != expected or rows["read"] != sum(expected.values()):
        raise RuntimeError(f"row accounting failed: read {rows['read']}, expected {expected}, files hold {written}")


def _count_rows(output: Output, subdir: str, names: list[str]) -> int:
    return sum(pq.ParquetFile(output.child_path(subdir, n), filesystem=output.fs).metadata.num_rows for n in names)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict:
    versions = {p: _version(p) for p in VERSIONED_PACKAGES}
    versions["python"] = platform.python_version()
    return {k: v for k, v in versions.items() if v is not None}


def run(config: PrepareConfig) -> dict:
    """Run the whole job; returns the manifest. Raises on config faults; data faults become rows."""
    timings = Timings()
    started = time.perf_counter()
    check_submitted_job_paths(config)
    output = Output(config.output.path)
    output.prepare(config.output.overwrite)
    ensure_ray(config)
    context = DataContext.get_current()
    saved_block_size = context.target_max_block_size
    # A read task's rows are cut into blocks of this size; each block goes to one tokenizer actor, so
    # Ray's 128 MiB default would leave a single large file to a single actor. (ds.repartition would
    # add a whole-CPU task that cannot fuse with fractional-CPU maps: the 2-core deadlock.)
    context.target_max_block_size = int(config.resources.block_size_mb * 2**20)
    try:
        return _run(config, output, timings, started)
    finally:
        context.target_max_block_size = saved_block_size


def _run(config: PrepareConfig, output: Output, timings: Timings, started: float) -> dict:
    with timings.stage("discover"):
        inputs = discover_inputs(resolve_inputs(config, output))
    logger.info("%d input files", len(inputs))
    rows = (output, (WORK_DIR, ROWS_CHECKPOINT))
    output.delete_dir(WORK_DIR, ROWS_CHECKPOINT)  # an earlier attempt's rows never mix in
    with timings.stage("read_normalize_tokenize_filter"):
        build_rows_plan(config, inputs).write_parquet(
            output.child_uri(WORK_DIR, ROWS_CHECKPOINT), ray_remote_args={"num_cpus": IO_TASK_CPUS}, compression="zstd"
        )
    decisions, dedup_manifest = None, None
    if config.dedup.enabled:
        from jobs.dedup import run_dedup

        outcome = run_dedup(config, output, rows, timings)
        decisions, dedup_manifest = outcome.decisions, outcome.manifest
    manifest = commit(
        config,
        output,
        rows,
        timings,
        decisions=decisions,
        extra={"inputs": [{"source": f.source, "uri": f.uri} for f in inputs]},
    )
    manifest["dedup"] = dedup_manifest
    return finish(output, manifest, started)


def finish(output: Output, manifest: dict, started: float) -> dict:
    manifest["timings_s"]["total"] = round(time.perf_counter() - started, 3)
    output.write_json(MANIFEST, manifest)
    write_report(output, manifest)  # report/ (plots, report.html) and README.md (dataset card)
    output.mark_success()  # last: its presence says every other file is complete
    return manifest


def main(argv: list[str] | None = None) -> int:
    from jobs.cli import main as cli_main

    return cli_main(["prepare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
