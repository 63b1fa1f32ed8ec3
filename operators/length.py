"""Length filter: the decision step after the tokenize stage measured `num_tokens`.

Score, then decide (STYLE.md): tokenize counts, this stage applies the bounds. A kept row longer than
`max_tokens` is removed `too_long` — never truncated, since a cut conversation teaches the model to stop
mid-answer; one shorter than `min_tokens` is removed `too_short`. The defaults (max 4096, the tutorial's
choice for Mistral-7B; min 0) live in the job config, not here.
"""

from __future__ import annotations

import logging
import numbers

import pyarrow as pa
import pyarrow.compute as pc

from operators import schema

logger = logging.getLogger(__name__)


def length_filter(batch: pa.Table, min_tokens: int, max_tokens: int) -> pa.Table:
    """Remove kept rows with `num_tokens` outside [min_tokens, max_tokens]; WORK_SCHEMA in and out.

    Both bounds are inclusive. Rows that are not kept pass through untouched.
    """
    min_tokens, max_tokens = _check_bounds(min_tokens, max_tokens)
    batch = batch.select(schema.WORK_SCHEMA.names).cast(schema.WORK_SCHEMA)
    if batch.num_rows == 0:
        return batch
    kept = pc.fill_null(pc.equal(batch.column(schema.STATUS), schema.KEPT), False)
    num = batch.column(schema.NUM_TOKENS)
    unmeasured = pc.sum(pc.and_(kept, pc.is_null(num))).as_py() or 0
    if unmeasured:
        # A kept row without a count means the flow skipped the tokenize stage: a code fault, not data.
        raise ValueError(f"{unmeasured} kept rows have no {schema.NUM_TOKENS}: run the tokenize stage first")

    too_long = pc.fill_null(pc.and_(kept, pc.greater(num, max_tokens)), False)
    too_short = pc.fill_null(pc.and_(kept, pc.less(num, min_tokens)), False)
    removed = pc.or_(too_long, too_short)
    if not pc.any(removed).as_py():
        return batch

    counts = pc.cast(num, pa.string())
    long_detail = pc.binary_join_element_wise(counts, f" tokens > max {max_tokens}", "")
    short_detail = pc.binary_join_element_wise(counts, f" tokens < min {min_tokens}", "")
    columns = {
        schema.STATUS: pc.if_else(removed, schema.REMOVED, batch.column(schema.STATUS)),
        schema.REASON: pc.if_else(
            too_long, schema.TOO_LONG, pc.if_else(too_short, schema.TOO_SHORT, batch.column(schema.REASON))
        ),
        schema.DETAIL: pc.if_else(
            too_long, long_detail, pc.if_else(too_short, short_detail, batch.column(schema.DETAIL))
        ),
    }
    arrays = [columns.get(name, batch.column(name)) for name in schema.WORK_SCHEMA.names]
    return pa.Table.from_arrays(arrays, schema=schema.WORK_SCHEMA)


def _check_bounds(min_tokens: int, max_tokens: int) -> tuple[int, int]:
    for name, value in (("min_tokens", min_tokens), ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens} (4096 suits Mistral-7B)")
    if min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})")
    return int(min_tokens), int(max_tokens)
