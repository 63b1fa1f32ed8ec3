"""The commit's order (jobs/ordering.py): the rows checkpoint in (source, source_row) order, with or without
Ray Data's distributed sort, always equal to one global sort of every row with the decisions applied."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.dedup import DECISION_SCHEMA
from jobs.ordering import SORT_KEY, apply_decisions, column_batches, disjoint_order, ordered_rows
from operators import schema
from operators.write import Output

SOURCES = ("a/one.jsonl", "a/two.jsonl", "b/é.json", "b/z.json")  # non-ASCII: byte order is code point order


def test_disjoint_ranges_are_ordered_by_first_key():
    ranges = [(("b", 0), ("b", 9)), None, (("a", 5), ("a", 7)), (("a", 8), ("a", 8)), (("c", 0), ("c", 1))]
    assert disjoint_order(ranges) == [2, 3, 0, 4]


@pytest.mark.parametrize("ranges", [
    [(("a", 0), ("a", 9)), (("a", 5), ("b", 0))],  # one starts inside the other
    [(("a", 0), ("c", 0)), (("b", 0), ("b", 1))],  # one inside the other
    [(("a", 0), ("a", 5)), (("a", 5), ("a", 6))],  # a shared key: never two rows with one key in order
])
def test_overlapping_ranges_need_a_sort(ranges):
    assert disjoint_order(ranges) is None
    assert disjoint_order(list(reversed(ranges))) is None


def rows(keys: list[tuple[str, int]]) -> pa.Table:
    return pa.Table.from_pylist([
        {schema.ID: schema.row_id(s, r), schema.SOURCE: s, schema.SOURCE_ROW: r, schema.STATUS: schema.KEPT,
         schema.TEXT: f"{s} {r}", schema.NUM_TOKENS: r % 50}
        for s, r in keys
    ], schema=schema.WORK_SCHEMA)


def decisions(keys: list[tuple[str, int]]) -> pa.Table:
    return pa.Table.from_pylist([
        {schema.ID: schema.row_id(s, r), schema.REASON: schema.NEAR_DUPLICATE, schema.DETAIL: "cosine 0.97",
         schema.DUPLICATE_OF: schema.row_id(s, 0), schema.SIMILARITY: 0.97}
        for s, r in keys
    ], schema=DECISION_SCHEMA)


def checkpoint(tmp_path, blocks: list[list[tuple[str, int]]]) -> Output:
    output = Output(str(tmp_path / "out"))
    directory = tmp_path / "out" / "_work" / "rows"
    directory.mkdir(parents=True)
    for i, keys in enumerate(blocks):
        random.Random(i).shuffle(keys)  # a block's rows in any order: the tokenizer pool may regroup them
        pq.write_table(rows(keys), directory / f"part-{i:03d}.parquet")
    return output


def expected(blocks, removed) -> pa.Table:
    everything = pa.concat_tables([rows(keys) for keys in blocks])
    return apply_decisions(everything, decisions(removed)).sort_by([(c, "ascending") for c in SORT_KEY])


KEYS = [(s, r) for s in SOURCES for r in range(30)]
REMOVED = KEYS[3::7]


@pytest.mark.parametrize("layout, shuffled", [
    # Read tasks over whole files, in discovery order: disjoint ranges, whatever the files' names say.
    ([KEYS[60:90], KEYS[0:25], KEYS[25:60], KEYS[90:]], False),
    # Rows of one source spread over files (e.g. a retried task's blocks): ranges overlap.
    ([KEYS[0::2], KEYS[1::2]], True),
    # One row out of place: the second file's range reaches back into the first's.
    ([KEYS[:40] + KEYS[41:50], KEYS[50:70] + KEYS[40:41], KEYS[70:]], True),
])
def test_ordered_rows_equal_one_global_sort(ray_local, tmp_path, layout, shuffled):
    import ray

    output = checkpoint(tmp_path, [list(block) for block in layout])
    ordered, was_shuffled = ordered_rows(output, ("_work", "rows"), decisions(REMOVED))
    assert was_shuffled is shuffled
    got = pa.concat_tables(ray.get(ordered.to_arrow_refs()))
    want = expected(layout, REMOVED)
    assert got.num_rows == len(KEYS)
    assert got.equals(want)
    assert got.column(schema.STATUS).to_pylist().count(schema.REMOVED) == len(REMOVED)
    stats_columns = [schema.SOURCE, schema.SOURCE_ROW, schema.STATUS]
    streamed = pa.concat_tables(list(column_batches(ordered, stats_columns)))
    assert streamed.equals(want.select(stats_columns))


def test_an_empty_checkpoint_is_an_empty_ordered_dataset(ray_local, tmp_path):
    (tmp_path / "out" / "_work" / "rows").mkdir(parents=True)
    ordered, shuffled = ordered_rows(Output(str(tmp_path / "out")), ("_work", "rows"), None)
    assert ordered.count() == 0 and not shuffled
    assert ordered.schema().names == schema.DECIDED_SCHEMA.names
