"""operators.length: kept rows outside [min, max] tokens are removed with a reason; nothing is truncated."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators import schema
from operators.length import length_filter


def work_table(num_tokens, status=None, reason=None, detail=None) -> pa.Table:
    n = len(num_tokens)
    columns = {name: [None] * n for name in schema.WORK_SCHEMA.names}
    columns[schema.ID] = [f"id{i}" for i in range(n)]
    columns[schema.SOURCE] = ["data/x.jsonl"] * n
    columns[schema.SOURCE_ROW] = list(range(n))
    columns[schema.STATUS] = status or [schema.KEPT] * n
    columns[schema.REASON] = reason or [None] * n
    columns[schema.DETAIL] = detail or [None] * n
    columns[schema.MESSAGES] = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]] * n
    columns[schema.TEXT] = ["<s> [INST] q [/INST] a</s>"] * n
    columns[schema.NUM_TOKENS] = num_tokens
    columns[schema.PROMPT_TOKENS] = [None if v is None else v // 2 for v in num_tokens]
    columns[schema.RESPONSE_TOKENS] = [None if v is None else v - v // 2 for v in num_tokens]
    return pa.Table.from_pydict(columns, schema=schema.WORK_SCHEMA)


def test_too_long_and_too_short_are_removed_with_reason_and_detail():
    out = length_filter(work_table([4123, 4096, 4097, 5, 4, 100]), min_tokens=5, max_tokens=4096)
    assert out.column(schema.STATUS).to_pylist() == [
        schema.REMOVED, schema.KEPT, schema.REMOVED, schema.KEPT, schema.REMOVED, schema.KEPT,
    ]
    assert out.column(schema.REASON).to_pylist() == [
        schema.TOO_LONG, None, schema.TOO_LONG, None, schema.TOO_SHORT, None,
    ]
    assert out.column(schema.DETAIL).to_pylist() == [
        "4123 tokens > max 4096", None, "4097 tokens > max 4096", None, "4 tokens < min 5", None,
    ]


def test_never_truncates_and_keeps_every_other_column():
    table = work_table([10_000, 3])
    out = length_filter(table, min_tokens=0, max_tokens=4096)
    for name in schema.WORK_SCHEMA.names:
        if name not in (schema.STATUS, schema.REASON, schema.DETAIL):
            assert out.column(name).equals(table.column(name)), name


def test_rows_not_kept_pass_through_untouched():
    table = work_table(
        [99_999, None, 1],
        status=[schema.REMOVED, schema.REJECTED, schema.REMOVED],
        reason=[schema.EXACT_DUPLICATE, schema.INVALID_JSON, schema.TEMPLATE_ERROR],
        detail=["dup", "bad line", "boom"],
    )
    out = length_filter(table, min_tokens=5, max_tokens=10)
    assert out.equals(table)


def test_output_schema_and_empty_and_chunked_batches():
    empty = length_filter(work_table([]), 0, 4096)
    assert empty.schema == schema.WORK_SCHEMA and empty.num_rows == 0
    chunked = pa.concat_tables([work_table([1, 5000]), work_table([7000, 2])])
    out = length_filter(chunked, 0, 4096)
    assert out.schema == schema.WORK_SCHEMA
    assert out.column(schema.REASON).to_pylist() == [None, schema.TOO_LONG, schema.TOO_LONG, None]


def test_many_rows_vectorized_matches_a_loop():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 9000, size=5000).tolist()
    status = rng.choice([schema.KEPT, schema.KEPT, schema.REMOVED], size=5000).tolist()
    out = length_filter(work_table(counts, status=status), min_tokens=50, max_tokens=4096)
    expected = []
    for count, state in zip(counts, status):
        if state != schema.KEPT:
            expected.append(None)
        else:
            expected.append(schema.TOO_LONG if count > 4096 else schema.TOO_SHORT if count < 50 else None)
    assert out.column(schema.REASON).to_pylist() == expected


def test_kept_row_without_a_count_is_a_code_fault():
    with pytest.raises(ValueError, match="tokenize stage"):
        length_filter(work_table([10, None]), 0, 4096)


@pytest.mark.parametrize(
    ("min_tokens", "max_tokens", "message"),
    [
        (-1, 10, "non-negative"),
        (0, 0, "at least 1"),
        (20, 10, "must not exceed"),
        (0, 4096.0, "integer"),
        (True, 5, "integer"),
    ],
)
def test_bad_bounds_fail_fast(min_tokens, max_tokens, message):
    with pytest.raises(ValueError, match=message):
        length_filter(work_table([10]), min_tokens, max_tokens)
