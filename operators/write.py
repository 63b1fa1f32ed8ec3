"""Write stage: the output layout of docs/architecture.md, committed so a partial output is never mistaken
for a complete one.

Commit protocol (the same on local disks and object stores, which have no atomic rename):
1. At start, an output holding `_SUCCESS` is complete: refuse unless --overwrite, which deletes it.
   An output without `_SUCCESS` is a failed earlier attempt: its layout files are deleted so stale
   shards never mix with new ones. A non-empty directory that is not a chatsieve output is refused.
2. Every file is written under its final, deterministic name (`part-00000-of-00004.parquet`), so a
   retried task rewrites the same name instead of adding a file.
3. `_SUCCESS` is written last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from operators.discover import filesystem_from_uri

logger = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
LOCK = "_LOCK"  # held while a job writes the output (jobs/lock.py)
MANIFEST = "manifest.json"
WORK_DIR = "_work"
DATA_DIR, REMOVED_DIR, REJECTED_DIR = "data", "removed", "rejected"
NEIGHBORS_DIR, REPORT_DIR, CARD = "neighbors", "report", "README.md"
# Everything a run writes except _work/ (checkpoints are keyed by their inputs and safe to reuse).
LAYOUT = (DATA_DIR, REMOVED_DIR, REJECTED_DIR, NEIGHBORS_DIR, REPORT_DIR, MANIFEST, CARD, SUCCESS)
PARQUET_COMPRESSION = "zstd"


class OutputExistsError(RuntimeError):
    pass


class Output:
    """An output directory or object-store prefix, addressed through a pyarrow filesystem.

    On object stores (s3://, gs://) directories are virtual: a prefix "exists" while any object lies
    under it, `create_dir` writes a marker object, `delete_dir` deletes every object under the prefix.
    An object becomes visible only when its stream is closed, so a name never holds a partial file; a
    failed attempt leaves whole files under final names, which step 1 deletes. Credentials come from
    the environment of each process, never from the URI (operators.discover.filesystem_from_uri).
    """

    def __init__(self, uri: str):
        self.uri = uri if "://" in uri else os.path.abspath(uri)
        self.fs, self.path = filesystem_from_uri(self.uri)
        self.path = self.path.rstrip("/")

    @property
    def name(self) -> str:
        """The output's own name (its last path component), for pages that leave this machine."""
        return posixpath.basename(self.path) or self.uri

    def child_uri(self, *parts: str) -> str:
        joined = posixpath.join(self.path, *parts)
        return self.uri.split("://", 1)[0] + "://" + joined if "://" in self.uri else joined

    def child_path(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.child_path(*parts)).type != pafs.FileType.NotFound

    def check(self, overwrite: bool) -> set[str] | None:
        """Step 1's refusals, reading only: the names at the top of the output, or None where none exists."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            raise OutputExistsError(f"output {self.uri} is a file; give a directory or prefix")
        if info.type == pafs.FileType.NotFound:
            return None
        entries = {posixpath.basename(i.path) for i in self.fs.get_file_info(pafs.FileSelector(self.path))}
        foreign = {e for e in entries - set(LAYOUT) - {WORK_DIR, LOCK} if not e.startswith(LOCK + ".stale-")}
        if foreign:
            raise OutputExistsError(
                f"output {self.uri} holds files chatsieve did not write ({', '.join(sorted(foreign)[:5])}); "
                "choose an empty or new output directory"
            )
        if SUCCESS in entries and not overwrite:
            raise OutputExistsError(
                f"output {self.uri} already holds a complete result (_SUCCESS); pass --overwrite to replace it"
            )
        return entries

    def prepare(self, overwrite: bool) -> None:
        """Step 1 of the commit protocol (run while holding the output's lock, jobs/lock.py)."""
        entries = self.check(overwrite)
        if entries is None:
            self.fs.create_dir(self.path, recursive=True)
            return
        if entries & set(LAYOUT):
            logger.info("removing %s from %s", ", ".join(sorted(entries & set(LAYOUT))), self.uri)
        # _SUCCESS first: from here on the output is visibly incomplete.
        for name in (SUCCESS, *LAYOUT):
            if name in entries:
                self._delete(name)
                entries.discard(name)

    def _delete(self, name: str) -> None:
        path = self.child_path(name)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        else:
            self.fs.delete_file(path)

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.child_path(*parts))

    def write_text(self, name: str, text: str) -> None:
        with self.fs.open_output_stream(self.child_path(name)) as stream:
            stream.write(text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

    def mark_success(self) -> None:
        self.write_text(SUCCESS, "")


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def _write_shard(fs: pafs.FileSystem, path: str, out_schema: pa.Schema, *tables: pa.Table) -> int:
    tables = [t.select(out_schema.names).cast(out_schema) for t in tables if t.num_rows]
    if not tables:
        # No row group at all: an empty row group makes readers that size batches by row group (datasets)
        # fail with "BatchSize must be greater than 0". The schema is still in the footer.
        with fs.open_output_stream(path) as stream:
            pq.ParquetWriter(stream, out_schema, compression=PARQUET_COMPRESSION).close()
        return 0
    table = pa.concat_tables(tables)
    pq.write_table(table, path, filesystem=fs, compression=PARQUET_COMPRESSION)
    return table.num_rows


def write_shards(ordered, output: Output, subdir: str, out_schema: pa.Schema, rows_per_shard: int) -> list[str]:
    """Write an already-ordered, materialized dataset as exactly-cut, exactly-named shards.

    The shard writes run as Ray tasks; the driver holds only object references and row counts. An
    empty dataset gives one empty shard, so `data/*.parquet` always matches a file.
    """
    total = ordered.count()
    output.fs.create_dir(output.child_path(subdir), recursive=True)
    count = max(1, math.ceil(total / rows_per_shard))
    names = [shard_name(i, count) for i in range(count)]
    parts = ordered.split_at_indices([rows_per_shard * i for i in range(1, count)]) if count > 1 else [ordered]
    import ray  # here, not at module import: the CLI's parser loads this module and must not start Ray's import

    task = ray.remote(_write_shard).options(num_cpus=0.25)
    written = ray.get(
        [
            task.remote(
                output.fs, output.child_path(subdir, name), out_schema, *part.to_arrow_refs()
            )
            for name, part in zip(names, parts)
        ]
    )
    if sum(written) != total:
        raise RuntimeError(f"{subdir}: wrote {sum(written)} rows of {total}")
    return names


def list_parquet(output: Output, *parts: str) -> list[str]:
    """Parquet files under a checkpoint directory, sorted (deterministic block order)."""
    selector = pafs.FileSelector(output.child_path(*parts), recursive=True, allow_not_found=True)
    return sorted(i.path for i in output.fs.get_file_info(selector) if i.path.endswith(".parquet"))


def _read_parquet_files(batch: pa.Table, fs: pafs.FileSystem, columns: list[str] | None):
    for path in batch.column("path").to_pylist():
        yield from (pa.Table.from_batches([b]) for b in pq.ParquetFile(path, filesystem=fs).iter_batches(columns=columns))


def read_checkpoint(
    output: Output, parts: tuple[str, ...], columns: list[str] | None = None, empty: pa.Schema | None = None
):
    """A Ray dataset over a checkpoint directory, read by fractional-CPU tasks.

    Why not `ray.data.read_parquet`: in Ray 2.60 it adds a ListFiles task that reserves a whole CPU,
    which never schedules next to actor pools holding the rest of a 2-core machine (docs/notes.md's deadlock).
    """
    import ray

    files = list_parquet(output, *parts)
    if not files:
        if empty is None:
            raise FileNotFoundError(f"no parquet files under {output.child_uri(*parts)}")
        # Ray writes no file for an empty dataset: zero rows written is an empty checkpoint, not a fault.
        schema_ = pa.schema([empty.field(c) for c in columns]) if columns else empty
        return ray.data.from_arrow(schema_.empty_table())
    return ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files)).map_batches(
        _read_parquet_files,
        fn_args=(output.fs, columns),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0.25,
    )
