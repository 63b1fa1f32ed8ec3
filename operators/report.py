"""Report stage: counts per stage, reason and source, and token statistics, gathered in one
streaming pass over a few narrow columns (the driver never holds rows, only exact value counts).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import schema

# Which stage decides each reason: the funnel in manifest.json follows the flow of ARCHITECTURE.md.
STAGE_OF_REASON = {
    **{error: "read" for error in schema.REJECTION_ERRORS},
    schema.EMPTY_CONVERSATION: "normalize",
    schema.NO_ASSISTANT_TURN: "normalize",
    schema.BAD_ROLE_ORDER: "normalize",
    schema.UNSUPPORTED_ROLE: "normalize",
    schema.UNSUPPORTED_CONTENT: "normalize",
    schema.PREFERENCE_PAIR: "normalize",
    schema.NEGATIVE_LABEL: "normalize",
    schema.SPECIAL_TOKEN_IN_CONTENT: "tokenize",
    schema.TEMPLATE_ERROR: "tokenize",
    schema.TOO_LONG: "length_filter",
    schema.TOO_SHORT: "length_filter",
    schema.EXACT_DUPLICATE: "exact_dedup",
    schema.NEAR_DUPLICATE: "near_dedup",
}
STAGES = ("read", "normalize", "tokenize", "length_filter", "exact_dedup", "near_dedup")
TOKEN_COLUMNS = (schema.NUM_TOKENS, schema.PROMPT_TOKENS, schema.RESPONSE_TOKENS)
PERCENTILES = (50, 90, 99)


@dataclass
class ValueCounts:
    """Exact counts of integer values: mergeable, and small (one entry per distinct token count)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, values: np.ndarray) -> None:
        if len(values):
            unique, counts = np.unique(values, return_counts=True)
            self.counts.update(dict(zip(unique.tolist(), counts.tolist())))

    def summary(self) -> dict | None:
        if not self.counts:
            return None
        values = np.array(sorted(self.counts), dtype=np.int64)
        counts = np.array([self.counts[v] for v in values], dtype=np.int64)
        cumulative = np.cumsum(counts)
        total = int(cumulative[-1])

        def percentile(p: float) -> int:
            # Nearest-rank percentile: the smallest value with at least p% of rows at or below it.
            rank = max(1, int(np.ceil(p / 100 * total)))
            return int(values[np.searchsorted(cumulative, rank)])

        out = {"rows": total, "min": int(values[0]), "mean": round(float((values * counts).sum() / total), 2)}
        out.update({f"p{p}": percentile(p) for p in PERCENTILES})
        out["max"] = int(values[-1])
        return out


@dataclass
class RowStats:
    """Everything the manifest says about rows, accumulated batch by batch."""

    by_status: Counter = field(default_factory=Counter)
    by_reason: Counter = field(default_factory=Counter)
    by_source: dict = field(default_factory=lambda: defaultdict(Counter))
    tokens_before_filter: dict = field(default_factory=lambda: {c: ValueCounts() for c in TOKEN_COLUMNS})
    tokens_kept: dict = field(default_factory=lambda: {c: ValueCounts() for c in TOKEN_COLUMNS})

    COLUMNS = (schema.STATUS, schema.REASON, schema.SOURCE, *TOKEN_COLUMNS)

    def add(self, batch: pa.Table) -> None:
        status = batch.column(schema.STATUS)
        self.by_status.update(_value_counts(status))
        self.by_reason.update(_value_counts(batch.column(schema.REASON).drop_null()))
        for (source, state), n in _value_counts_pairs(batch.column(schema.SOURCE), status).items():
            self.by_source[source][state] += n
        kept = pc.equal(status, schema.KEPT)
        # Rows the tokenizer counted, whatever happened after: the "before the length filter" view.
        counted = pc.is_valid(batch.column(schema.NUM_TOKENS))
        for column in TOKEN_COLUMNS:
            values = batch.column(column)
            self.tokens_before_filter[column].add(values.filter(counted).to_numpy())
            self.tokens_kept[column].add(values.filter(kept).to_numpy())

    def manifest_rows(self) -> dict:
        read = sum(self.by_status.values())
        funnel, remaining = [], read
        for stage in STAGES:
            dropped = {r: n for r, n in sorted(self.by_reason.items()) if STAGE_OF_REASON.get(r) == stage}
            funnel.append({"stage": stage, "in": remaining, "dropped": dropped, "out": remaining - sum(dropped.values())})
            remaining -= sum(dropped.values())
        return {
            "read": read,
            "kept": self.by_status[schema.KEPT],
            "removed": self.by_status[schema.REMOVED],
            "rejected": self.by_status[schema.REJECTED],
            "by_reason": dict(sorted(self.by_reason.items())),
            "stages": funnel,
            "by_source": {s: {k: c[k] for k in schema.STATUSES} for s, c in sorted(self.by_source.items())},
        }

    def manifest_tokens(self) -> dict:
        return {
            "before_length_filter": {c: v.summary() for c, v in self.tokens_before_filter.items()},
            "kept": {c: v.summary() for c, v in self.tokens_kept.items()},
        }


def _value_counts(array: pa.ChunkedArray) -> dict:
    counts = pc.value_counts(array)
    return {v["values"]: v["counts"] for v in counts.to_pylist()}


def _value_counts_pairs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> Counter:
    table = pa.table({"a": a, "b": b}).group_by(["a", "b"]).aggregate([([], "count_all")])
    return Counter({(r["a"], r["b"]): r["count_all"] for r in table.to_pylist()})
