"""What every job that writes an output shares (`prepare`, `rethreshold`): Ray start-up, the output's lock and
resume check, timings, the commit of the rows checkpoint into the final layout, and how a failure is told.

The commit protocol (docs/architecture.md, "Output layout"):
1. Refusals first, reading only (a complete output without --overwrite, foreign files), then the lock
   (jobs/lock.py), then an incomplete output is checked to be of the same job before it is resumed.
2. Every file is written under its final, deterministic name; `_SUCCESS` is written last.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import platform
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.lock import OutputLock
from operators import schema
from operators.write import (
    DATA_DIR,
    MANIFEST,
    REJECTED_DIR,
    REMOVED_DIR,
    SUCCESS,
    WORK_DIR,
    Output,
    OutputExistsError,
    list_parquet,
    write_shards,
)

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"  # under _work/: which job (command and settings) this output's checkpoints belong to
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
        release_freed_memory()
        logger.info("stage %s done in %.1f s", name, self.seconds[name])


def use_system_allocator() -> None:
    """The driver's Arrow buffers from glibc's malloc, not mimalloc (pyarrow's default), on glibc systems.

    Measured on the 1M-row plan (docs/notes.md, "The driver's memory"): reading the 128 MB of candidate keys
    raised the driver's heap by 205 MB with mimalloc and 130 MB with glibc's malloc, and building the plan
    peaked 137 MB lower. The driver's Arrow work is a few large, single-threaded arrays, where mimalloc's
    per-thread pages buy nothing. Only the driver: Ray's workers keep pyarrow's default."""
    if _LIBC is not None:
        pa.set_memory_pool(pa.system_memory_pool())


def release_freed_memory() -> None:
    """Hand memory the driver has freed back to the system, at each stage's end.

    Arrow's allocator and glibc's malloc keep freed pages for reuse: a stage's transient arrays (at 1M
    rows, hundreds of MB while the plan is built) otherwise stay in the driver's RSS for the rest of the job,
    under every later stage's own peak (benchmarks/driver_memory.py)."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and others: no malloc_trim
        return None


_LIBC = _glibc()


# --- Ray -----------------------------------------------------------------------------------------------


def in_submitted_job() -> bool:
    """True inside `ray job submit`: the job supervisor hands the driver its job config in this variable."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return False
    try:
        return "job_submission_id" in json.loads(raw).get("metadata", {})
    except (ValueError, AttributeError):
        return False


# Set by the command line: Ray's own output (start-up lines, progress bars, operator dumps, worker logs) is
# shown only with --verbose; the job's progress display (jobs/progress.py) replaces it.
_verbose_ray = True


def set_verbose_ray(verbose: bool) -> None:
    global _verbose_ray
    _verbose_ray = verbose


def ensure_ray(address: str | None, offline: bool) -> None:
    import ray

    quiet = not _verbose_ray
    if quiet:
        quiet_ray()
    if ray.is_initialized():
        return
    if in_submitted_job():
        ray.init()  # the job's runtime_env (cluster/runtime_env.yaml) already applies to every worker
        return
    if address in (None, "local"):
        # A local Ray of our own: no idle worker processes kept for reuse. Ray keeps up to one per CPU by default,
        # each holding what its last task imported (~300 MB for a read worker); a task that finds none starts
        # one (docs/notes.md, "Ray's own memory"). Read by the raylet this ray.init starts; a user's value wins.
        os.environ.setdefault("RAY_num_workers_soft_limit", "0")
    env_vars = {"TOKENIZERS_PARALLELISM": "true"}
    if offline:
        # Offline defaults: fail loudly rather than touch a hub (read when huggingface_hub is imported).
        env_vars["HF_HUB_OFFLINE"] = "1"
    ray.init(
        address=address, runtime_env={"env_vars": env_vars}, log_to_driver=not quiet,
        logging_level=logging.ERROR if quiet else logging.INFO,
        # The dashboard serves nothing a local run shows; a user who wants it starts Ray with it.
        include_dashboard=False if address in (None, "local") and quiet else None,
    )
    if quiet:
        quiet_ray()  # ray.init configures Ray's loggers: quiet them again


def quiet_ray() -> None:
    """Ray's output off: Ray Data's progress bars and 10-second operator dumps, its INFO/WARNING logs, and
    the core worker's error-level notice about actor constructor arguments (printed on every run with an
    actor pool, harmless: docs/notes.md). Errors still raise in the driver and are told by run_command."""
    from ray.data import DataContext

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # read by the driver's core worker at ray.init
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray", "ray.data", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data warns when an actor pool gets fewer blocks than actors (a small input read by one task): the
    # pool just runs fewer actors, nothing for the user to do.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)


# --- the output: lock, resume check, clean-up of a failed first attempt -----------------------------------


@contextmanager
def open_output(path: str, overwrite: bool, job: dict) -> Iterator[Output]:
    """The output, locked for this job and prepared (step 1 of the commit protocol), for the `with` body.

    `job` says what this run computes (its command and every setting that changes the result, not the
    resources). An incomplete output (no _SUCCESS) of the same job is resumed: its checkpoints are reused.
    One of another job is refused unless --overwrite, so a rerun never mixes two jobs' work. An output this
    run created is removed again if the run fails before anything worth resuming was written.
    """
    output = Output(path)
    job = json.loads(json.dumps(job))  # as it reads back from job.json (tuples become lists)
    existed = output.check(overwrite) is not None
    lock = OutputLock(output, job.get("command", "job"))
    lock.acquire()
    try:
        _check_same_job(output, job, overwrite)
        output.prepare(overwrite)
        output.fs.create_dir(output.child_path(WORK_DIR), recursive=True)
        output.write_json(f"{WORK_DIR}/{JOB_FILE}", job)
        yield output
    except BaseException:
        if not existed and not _holds_finished_work(output):
            _remove_quietly(output)  # the lock goes with it
            raise
        lock.release()
        raise
    lock.release()


def _check_same_job(output: Output, job: dict, overwrite: bool) -> None:
    if overwrite or output.exists(SUCCESS) or not output.exists(WORK_DIR, JOB_FILE):
        return
    with output.fs.open_input_stream(output.child_path(WORK_DIR, JOB_FILE)) as stream:
        try:
            earlier = json.loads(stream.read())
        except ValueError:
            earlier = {}
    differences = _differences(earlier, job)
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise OutputExistsError(
            f"output {output.uri} holds an unfinished run of another job ({shown}): rerun that job's command to "
            "resume it, pass --overwrite to discard its results, or choose another --output"
        )


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found.extend(_differences(old.get(key), new.get(key), f"{prefix}{key}."))
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"]


def _holds_finished_work(output: Output) -> bool:
    """Embedded vectors are the one checkpoint worth keeping after a failure (they cost hours)."""
    return bool(list_parquet(output, WORK_DIR, "vectors"))


def _remove_quietly(output: Output) -> None:
    try:
        output.fs.delete_dir(output.path)
    except OSError as exc:  # the failure being raised matters more than this clean-up
        logger.warning("could not remove the output %s this failed run created: %s", output.uri, exc)


# --- commit --------------------------------------------------------------------------------------------


def _select(batch: pa.Table, status: str, out_schema: pa.Schema, renames: dict[str, str]) -> pa.Table:
    rows = batch.filter(pc.equal(batch.column(schema.STATUS), status))
    rows = rows.rename_columns([renames.get(n, n) for n in rows.column_names])
    return rows.select(out_schema.names).cast(out_schema)


OUTPUTS = (
    (schema.KEPT, DATA_DIR, schema.DATA_SCHEMA, {}),
    (schema.REMOVED, REMOVED_DIR, schema.REMOVED_SCHEMA, {}),
    (schema.REJECTED, REJECTED_DIR, schema.REJECTED_SCHEMA, {schema.REASON: schema.ERROR}),
)


def commit(
    config,
    output: Output,
    rows: tuple[Output, tuple[str, ...]],
    timings: Timings,
    extra: dict,
    decisions: pa.Table | None,
) -> dict:
    """Turn the rows checkpoint into the final layout and check the accounting; returns the manifest.

    One read of the checkpoint, in (source, source_row) order (jobs/ordering.py: a distributed sort only when
    its files' key ranges overlap); each status is then selected from the ordered blocks with Ray Data's order
    preserved, so shards come out in that order.
    """
    import ray
    from ray.data import DataContext

    from jobs.ordering import column_batches, ordered_rows
    from jobs.resources import IO_TASK_CPUS
    from operators.report import RowStats

    from jobs import progress

    display = progress.current()
    context = DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        with timings.stage("sort"), display.stage("sort", unit="rows") as sorting:
            ordered, ordering = ordered_rows(*rows, decisions)
            sorting.done = ordered.count()
        logger.info("sort: %s", ordering)
        stats = RowStats()
        with display.stage("write", total=sorting.done, unit="rows"):
            with timings.stage("stats"):
                for batch in column_batches(ordered, list(RowStats.COLUMNS)):
                    stats.add(batch)
                    display.advance(batch.num_rows)
            files: dict[str, list[str]] = {}
            for status, subdir, out_schema, renames in OUTPUTS:
                with timings.stage(f"write_{subdir}"):
                    selected = ordered.map_batches(
                        _select, fn_args=(status, out_schema, renames), batch_format="pyarrow",
                        num_cpus=IO_TASK_CPUS,
                    ).materialize()
                    files[subdir] = write_shards(selected, output, subdir, out_schema, config.output.rows_per_shard)
    finally:
        context.execution_options.preserve_order = preserve_order
    row_counts = stats.manifest_rows()
    written = {subdir: _count_rows(output, subdir, names) for subdir, names in files.items()}
    check_accounting(row_counts, written)
    return {
        "chatsieve_version": _version("chatsieve"),
        "config": config.to_dict(),
        "inputs": extra["inputs"],
        "rows": row_counts,
        "tokens": stats.manifest_tokens(),
        "files": files,
        "timings_s": timings.seconds,
        "ordering": ordering,
        "versions": _versions(),
        "ray": {"cluster_resources": {k: v for k, v in ray.cluster_resources().items() if "node:" not in k}},
    }


def check_accounting(rows: dict, written: dict[str, int]) -> None:
    """The invariant of docs/architecture.md: rows read = kept + removed + rejected, in the files too."""
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


def finish(output: Output, manifest: dict, started: float) -> dict:
    from jobs.report import write_report

    manifest["timings_s"]["total"] = round(time.perf_counter() - started, 3)
    output.write_json(MANIFEST, manifest)
    write_report(output, manifest)  # report/ (plots, report.html) and README.md (dataset card)
    output.mark_success()  # last: its presence says every other file is complete
    return manifest


# --- telling a failure ------------------------------------------------------------------------------------


def describe_failure(exc: BaseException, output: str | None = None) -> str:
    """One readable line for a job that stopped: the innermost cause (Ray wraps a worker's exception in
    RayTaskError and Ray Data in its own errors), with what to do for the faults a user can fix."""
    from operators.read import InputFault

    current, seen = exc, {id(exc)}
    while not isinstance(current, InputFault):
        following = getattr(current, "cause", None) or current.__cause__
        if following is None or id(following) in seen:
            break
        seen.add(id(following))
        current = following
    if isinstance(current, OSError) and (current.errno == errno.ENOSPC or "No space left" in str(current)):
        where = f" under {output}" if output else ""
        return (
            f"no space left on the device{where} ({_first_line(current)}); free space, then rerun the same command: "
            "finished embeddings are kept and the run resumes"
        )
    return f"{type(current).__name__}: {_first_line(current)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def run_command(args, job, output: str | None) -> int:
    """Run a job from the command line: logging set up, the summary printed, a failure told in one line at
    the end (after the traceback, for a fault that is not the user's to fix). Exit status: 0 done, 3 done but
    no row kept, 2 refused (config, input, output in use or complete), 1 failed while running."""
    import sys

    from jobs.lock import OutputLockedError

    from jobs import progress

    verbose = bool(getattr(args, "verbose", False))
    use_system_allocator()
    logging.basicConfig(
        # Without --verbose the progress display tells what runs; logs say only what went wrong.
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    set_verbose_ray(verbose)
    try:
        with progress.using(progress.Progress()):
            manifest = job()
    except (OutputExistsError, OutputLockedError, ValueError, FileNotFoundError) as exc:
        print(f"chatsieve: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - told in full (traceback) and in one line, never swallowed
        logger.error("the job failed", exc_info=True)
        print(f"chatsieve: failed: {describe_failure(exc, output)}", file=sys.stderr)
        return 1
    print(summary_table(manifest, output or ""))
    rows = manifest["rows"]
    if rows["kept"] == 0:
        top = sorted(rows["by_reason"].items(), key=lambda item: -item[1])[:3]
        why = ", ".join(f"{reason} {count}" for reason, count in top) or "no rows were read"
        print(f"chatsieve: no row was kept ({why}); removed/ and rejected/ say why row by row", file=sys.stderr)
        return NOTHING_KEPT
    return 0


# Exit statuses: 0 done; 1 failed while running; 2 refused before anything was written; 3 done, but no row kept.
NOTHING_KEPT = 3


def summary_table(manifest: dict, output: str) -> str:
    rows = manifest["rows"]
    lines = [
        "",
        f"{'stage':<16}{'in':>10}{'out':>10}  dropped",
    ]
    for stage in rows["stages"]:
        dropped = ", ".join(f"{r}={n}" for r, n in stage["dropped"].items()) or "-"
        lines.append(f"{stage['stage']:<16}{stage['in']:>10}{stage['out']:>10}  {dropped}")
    lines.append("")
    lines.append(
        f"read {rows['read']} = kept {rows['kept']} + removed {rows['removed']} + rejected {rows['rejected']}"
    )
    rejected = {r: n for r, n in rows["by_reason"].items() if r in schema.REJECTION_ERRORS}
    if rejected:
        lines.append("rejected rows, by error (one example each):")
        for reason, count in sorted(rejected.items(), key=lambda item: -item[1]):
            example = rows.get("examples", {}).get(reason)
            where = f"{example['source']} row {example['source_row']}: {example['detail']}" if example else ""
            lines.append(f"  {reason:<20}{count:>8}  {where}"[:400])
    dedup = manifest.get("dedup") or {}
    if (dedup.get("index") or {}).get("kind") == "ivf":
        recall = dedup.get("ivf_recall") or {}
        how = "chosen by --index auto" if dedup["index"].get("chosen_by_auto") else "--index ivf"
        lines.append(
            f"index: ivf ({how}, {dedup['vectors']['rows']:,} rows): recall of the recorded pairs "
            f"{recall.get('recall', float('nan')):.4f} against exact search on {recall.get('sample_rows', 0):,} sampled rows"
        )
    prefilter = dedup.get("prefilter")
    if prefilter:
        how = " (chosen by --embed-prefilter auto)" if (dedup.get("prefilter_choice") or {}).get("asked") == "auto" else ""
        lines.append(
            f"prefilter: {prefilter['precision']}{how} search down to {prefilter['floor']:g}; "
            f"{prefilter['texts_confirmed']:,} of {prefilter['texts']:,} texts embedded again in "
            f"{dedup['vectors']['precision']} for every recorded pair; largest similarity move "
            f"{prefilter['max_similarity_moved']:.4f} (margin {prefilter['margin']:g})"
        )
    chosen = dedup.get("target_rows")
    if chosen:
        same = f" (any threshold in ({chosen['same_result_above']:.7g}, {chosen['threshold']:.7g}] gives these rows)" \
            if chosen["same_result_above"] is not None else ""
        lines.append(f"--target-rows {chosen['target']}: threshold {chosen['threshold']:.7g} keeps {chosen['kept']} rows{same}")
    timings = manifest["timings_s"]
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    lines.append(f"output: {output} (data/, removed/, rejected/, manifest.json, README.md)")
    return "\n".join(lines)
