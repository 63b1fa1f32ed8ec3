"""The commit's order (jobs/ordering.py): the rows checkpoint in (source, source_row) order, with or without
Ray Data's distributed sort, always equal to one global sort of every row with the decisions applied."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.dedup import DECISION_SCHEMA
from jobs.ordering import SORT_KEY, Run, apply_decisions, column_batches, disjoint_order, ordered_rows, segments
from operators import schema
from operators.write import Output

SOURCES = ("a/one.jsonl", "a/two.jsonl", "b/é.json", "b/z.json")  # non-ASCII: byte order is code point order


def run(file, first, last, offset=0):
    return Run(file, offset, last[1] - first[1] + 1, first, last)


def test_disjoint_runs_are_ordered_by_first_key_and_joined_within_a_file():
    runs = [run(0, ("b", 0), ("b", 9)), run(1, ("a", 5), ("a", 7)), run(1, ("c", 0), ("c", 1), offset=3),
            run(2, ("a", 8), ("a", 8)), run(0, ("b", 10), ("b", 12), offset=10), run(3, ("a", 0), ("a", 4))]
    order = disjoint_order(runs)
    assert [(r.file, r.first) for r in order] == [
        (3, ("a", 0)), (1, ("a", 5)), (2, ("a", 8)), (0, ("b", 0)), (0, ("b", 10)), (1, ("c", 0))]
    # File 0's two runs follow each other in the order and in the file: one segment.
    assert segments(order) == [(3, 0, 5), (1, 0, 3), (2, 0, 1), (0, 0, 13), (1, 3, 2)]


@pytest.mark.parametrize("runs", [
    [run(0, ("a", 0), ("a", 9)), run(1, ("a", 5), ("a", 12))],  # one starts inside the other
    [run(0, ("a", 0), ("a", 20)), run(1, ("a", 3), ("a", 4))],  # one inside the other
    [run(0, ("a", 0), ("a", 5)), run(1, ("a", 5), ("a", 6))],  # a shared key: never two rows with one key in order
])
def test_overlapping_runs_need_a_sort(runs):
    assert disjoint_order(runs) is None
    assert disjoint_order(list(reversed(runs))) is None


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


@pytest.mark.parametrize("layout, shuffled, blocks", [
    # Read tasks over whole files, in discovery order: disjoint ranges, whatever the files' names say.
    ([KEYS[60:90], KEYS[0:25], KEYS[25:60], KEYS[90:]], False, 4),
    # The tokenizer pool bundled a read task's short last block (a/one's last rows) with the next one to
    # arrive (b/z's first rows): that file is cut in two. b/é sorts after b/z, so the file holding a/two and
    # b/é is cut too: a/one | a/one | a/two | b/z | b/z | b/é.
    ([KEYS[:25], KEYS[25:30] + KEYS[90:100], KEYS[30:90], KEYS[100:]], False, 6),
    # Rows of one source interleaved over files: ranges overlap, Ray Data sorts.
    ([KEYS[0::2], KEYS[1::2]], True, None),
    # One row out of place: the second file's run of a source reaches back into the first's.
    ([KEYS[:40] + KEYS[41:50], KEYS[50:70] + KEYS[40:41], KEYS[70:]], True, None),
])
def test_ordered_rows_equal_one_global_sort(ray_local, tmp_path, layout, shuffled, blocks):
    import ray

    output = checkpoint(tmp_path, [list(block) for block in layout])
    ordered, ordering = ordered_rows(output, ("_work", "rows"), decisions(REMOVED))
    assert ordering["checkpoint_files"] == len(layout) and ordering["distributed_sort"] is shuffled
    if blocks is not None:
        assert ordering["blocks"] == blocks
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
    ordered, ordering = ordered_rows(Output(str(tmp_path / "out")), ("_work", "rows"), None)
    assert ordered.count() == 0 and ordering == {"checkpoint_files": 0, "blocks": 0, "distributed_sort": False}
    assert ordered.schema().names == schema.DECIDED_SCHEMA.names
