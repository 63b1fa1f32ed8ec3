"""The commit's first step: the rows checkpoint, marked with the decisions, in (source, source_row) order as a
materialized Ray dataset, and the columns the manifest's statistics need, block by block in that order.

Most checkpoints need no shuffle. Read tasks take whole files in discovery order, and a task's rows come out
in blocks of consecutive rows; each block becomes one checkpoint file (jobs/prepare.py). One task per file reads
it, marks it (`apply_decisions`), sorts it and reports its runs of one source. A source's runs in different files
are then disjoint row ranges, so ordering all runs by first key orders every row: each file is cut where its runs
are not next to each other in that order (most files stay whole). Only when two runs overlap does Ray Data's
distributed sort run, over the same marked blocks. Keys are unique (one row per line or element of one file), so
both ways give the same rows in the same order, and the output does not depend on which ran (docs/architecture.md,
"Output layout"). Ray Data's sort alone costs 2-5 s on 2,000 rows (a sampling pass, a map and a reduce stage).
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.resources import IO_TASK_CPUS
from operators import schema
from operators.write import Output, list_parquet

SORT_KEY = [schema.SOURCE, schema.SOURCE_ROW]


def apply_decisions(batch: pa.Table, decisions: pa.Table | None) -> pa.Table:
    """Mark the rows that dedup or decontamination removed: status, reason, detail, duplicate_of, similarity,
    duplicate_of_source (DECIDED_SCHEMA out)."""
    batch = batch.select(schema.WORK_SCHEMA.names)
    columns = {name: batch.column(name) for name in batch.column_names}
    columns[schema.DUPLICATE_OF_SOURCE] = pa.nulls(batch.num_rows, pa.string())
    if decisions is None or not decisions.num_rows:
        return pa.table(columns, schema=schema.DECIDED_SCHEMA)
    position = pc.index_in(batch.column(schema.ID), value_set=decisions.column(schema.ID))
    hit = pc.is_valid(position)
    if not pc.any(hit).as_py():
        return pa.table(columns, schema=schema.DECIDED_SCHEMA)
    taken = decisions.take(pc.fill_null(position, 0))
    columns[schema.STATUS] = pc.if_else(hit, schema.REMOVED, batch.column(schema.STATUS))
    for name in (schema.REASON, schema.DETAIL, schema.DUPLICATE_OF, schema.SIMILARITY, schema.DUPLICATE_OF_SOURCE):
        columns[name] = pc.if_else(hit, taken.column(name), columns[name])
    return pa.table(columns, schema=schema.DECIDED_SCHEMA)


class Run(NamedTuple):
    """Rows of one source, consecutive in one sorted checkpoint file."""

    file: int
    offset: int
    length: int
    first: tuple[str, int]
    last: tuple[str, int]


def _marked_and_sorted(path: str, fs, decisions: pa.Table | None) -> tuple[pa.Table, list[tuple]]:
    """Ray task: one checkpoint file, marked and sorted; with its runs of one source (offset, length, first
    key, last key). A file may hold the rows of several read tasks: the tokenizer pool bundles a read task's
    last, short block with whatever block arrives next."""
    table = apply_decisions(pq.read_table(path, filesystem=fs), decisions)
    table = table.sort_by([(c, "ascending") for c in SORT_KEY])
    # Sorted, so each source's rows are consecutive: a run starts where the source's code changes.
    codes = pc.dictionary_encode(table.column(schema.SOURCE)).combine_chunks().indices.to_numpy()
    starts = np.flatnonzero(np.diff(codes, prepend=-1))
    ends = np.append(starts[1:], table.num_rows)
    keys = table.select(SORT_KEY)
    first, last = keys.take(starts).to_pylist(), keys.take(ends - 1).to_pylist()
    return table, [(int(s), int(e - s), tuple(f.values()), tuple(l.values()))
                   for s, e, f, l in zip(starts, ends, first, last)]


def disjoint_order(runs: list[Run]) -> list[Run] | None:
    """The runs ordered by first key, when no two key ranges overlap; None otherwise.

    Keys compare as Python tuples: str by code point, which for UTF-8 is the byte order Arrow sorts by."""
    order = sorted(runs, key=lambda run: run.first)
    for before, after in zip(order, order[1:]):
        if not before.last < after.first:
            return None
    return order


def segments(order: list[Run]) -> list[tuple[int, int, int]]:
    """Ordered runs joined where they continue each other in the same file: (file, offset, length)."""
    out: list[tuple[int, int, int]] = []
    for run in order:
        if out and out[-1][0] == run.file and out[-1][1] + out[-1][2] == run.offset:
            out[-1] = (run.file, out[-1][1], out[-1][2] + run.length)
        else:
            out.append((run.file, run.offset, run.length))
    return out


def ordered_rows(output: Output, parts: tuple[str, ...], decisions: pa.Table | None):
    """(the marked rows in (source, source_row) order as a materialized dataset, what it took: the checkpoint
    files, the blocks they were cut into and whether Ray Data's distributed sort had to run)."""
    import ray

    files = list_parquet(output, *parts)
    task = ray.remote(_marked_and_sorted).options(num_returns=2, num_cpus=IO_TASK_CPUS)
    decisions_ref = ray.put(decisions)  # once, not once per task
    refs = [task.remote(path, output.fs, decisions_ref) for path in files]
    runs = [Run(f, *run) for f, file_runs in enumerate(ray.get([meta for _, meta in refs])) for run in file_runs]
    order = disjoint_order(runs)
    if order is None:
        blocks = ray.data.from_arrow_refs([table for table, _ in refs]).sort(SORT_KEY).materialize()
        return blocks, {"checkpoint_files": len(files), "blocks": blocks.num_blocks(), "distributed_sort": True}
    if not order:  # Ray writes no file for an empty dataset: zero rows read
        return (ray.data.from_arrow(schema.DECIDED_SCHEMA.empty_table()).materialize(),
                {"checkpoint_files": len(files), "blocks": 0, "distributed_sort": False})
    pieces = segments(order)
    pieces_of = Counter(f for f, _, _ in pieces)  # a file left in one piece is its own block, uncut
    cut = ray.remote(_slice).options(num_cpus=IO_TASK_CPUS)
    blocks = [refs[f][0] if pieces_of[f] == 1 else cut.remote(refs[f][0], offset, length) for f, offset, length in pieces]
    return (ray.data.from_arrow_refs(blocks),
            {"checkpoint_files": len(files), "blocks": len(blocks), "distributed_sort": False})


def _slice(table: pa.Table, offset: int, length: int) -> pa.Table:
    return table.slice(offset, length)


def _columns_of(block: pa.Table, columns: list[str]) -> pa.Table:
    return block.select(columns)


def column_batches(ordered, columns: list[str]):
    """The blocks of a materialized dataset cut to `columns`, in order: one task per block, so only these
    columns ever reach the driver (a Ray Data pass would start a whole streaming execution for this)."""
    import ray

    task = ray.remote(_columns_of).options(num_cpus=IO_TASK_CPUS)
    refs = [task.remote(block, columns) for block in ordered.to_arrow_refs()]
    for ref in refs:  # one at a time: the driver holds one block's columns
        yield ray.get(ref)
