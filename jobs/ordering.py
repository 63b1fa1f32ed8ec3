"""The commit's first step: the rows checkpoint, marked with the decisions, in (source, source_row) order as a
materialized Ray dataset, and the columns the manifest's statistics need, block by block in that order.

Most checkpoints need no shuffle. Each checkpoint file is one block of one read task's rows (jobs/prepare.py),
and read tasks take files in discovery order, so the files' key ranges rarely overlap. One task per file reads
it, marks it (`apply_decisions`) and sorts it; when the sorted files' ranges do not overlap, ordering the files
by their first key orders every row. Only when two ranges overlap does Ray Data's distributed sort run, over the
same marked blocks. Keys are unique (one row per line or element of one file), so both ways give the same rows
in the same order, and the output does not depend on which ran (docs/architecture.md, "Output layout").
Ray Data's sort alone costs 2-5 s on 2,000 rows (a sampling pass, a map and a reduce stage: benchmarks/).
"""

from __future__ import annotations

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


def _marked_and_sorted(path: str, fs, decisions: pa.Table | None) -> tuple[pa.Table, tuple | None]:
    """Ray task: one checkpoint file, marked and sorted; with its (first key, last key), None when empty."""
    table = apply_decisions(pq.read_table(path, filesystem=fs), decisions)
    table = table.sort_by([(c, "ascending") for c in SORT_KEY])
    if not table.num_rows:
        return table, None
    first, last = (tuple(table.column(c)[i].as_py() for c in SORT_KEY) for i in (0, table.num_rows - 1))
    return table, (first, last)


def disjoint_order(ranges: list[tuple | None]) -> list[int] | None:
    """Indices of the non-empty blocks ordered by first key, when no two key ranges overlap; None otherwise.

    Keys compare as Python tuples: str by code point, which for UTF-8 is the byte order Arrow sorts by."""
    order = sorted((i for i, r in enumerate(ranges) if r is not None), key=lambda i: ranges[i][0])
    for before, after in zip(order, order[1:]):
        if not ranges[before][1] < ranges[after][0]:
            return None
    return order


def ordered_rows(output: Output, parts: tuple[str, ...], decisions: pa.Table | None):
    """(the marked rows in (source, source_row) order as a materialized dataset, whether a shuffle was needed)."""
    import ray

    files = list_parquet(output, *parts)
    if not files:  # Ray writes no file for an empty dataset: zero rows read
        return ray.data.from_arrow(schema.DECIDED_SCHEMA.empty_table()).materialize(), False
    task = ray.remote(_marked_and_sorted).options(num_returns=2, num_cpus=IO_TASK_CPUS)
    decisions_ref = ray.put(decisions)  # once, not once per task
    refs = [task.remote(path, output.fs, decisions_ref) for path in files]
    ranges = ray.get([meta for _, meta in refs])
    order = disjoint_order(ranges)
    if order == []:
        return ray.data.from_arrow(schema.DECIDED_SCHEMA.empty_table()).materialize(), False
    if order is not None:
        return ray.data.from_arrow_refs([refs[i][0] for i in order]), False
    blocks = [block for (block, _), r in zip(refs, ranges) if r is not None]
    return ray.data.from_arrow_refs(blocks).sort(SORT_KEY).materialize(), True


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
