"""Report stage, the numbers: counts per stage, reason and source, token statistics and histograms,
gathered in one streaming pass over a few narrow columns (the driver never holds rows, only exact
value counts, merged batch by batch); and the similarity histogram, accumulated the same way.

The pictures (operators/plots.py), the HTML page and the dataset card (operators/report_html.py) are
drawn from these numbers; jobs/report.py reads an output and writes report/ and README.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import schema

# Which stage decides each reason: the funnel in manifest.json follows the flow of docs/architecture.md.
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
    schema.CONTAMINATED: "decontaminate",
    schema.IN_REFERENCE: "reference",
    schema.EXACT_DUPLICATE: "exact_dedup",
    schema.NEAR_DUPLICATE: "near_dedup",
}
# decontaminate runs first; a row that duplicates a reference is removed in_reference whether the copy is exact
# or near, so "reference" is counted before the dedup stages proper.
STAGES = ("read", "normalize", "tokenize", "length_filter", "decontaminate", "reference", "exact_dedup", "near_dedup")
OPTIONAL_STAGES = ("decontaminate", "reference")  # in the funnel only when they removed a row
TOKEN_COLUMNS = (schema.NUM_TOKENS, schema.PROMPT_TOKENS, schema.RESPONSE_TOKENS)
PERCENTILES = (50, 90, 99)
EXAMPLE_DETAIL_CHARS = 300
LENGTH_REASONS = (schema.TOO_LONG, schema.TOO_SHORT)
# The three views of each token column in manifest.json's tokens.histograms, in drawing order.
BEFORE, AFTER, KEPT_VIEW = "before_length_filter", "after_length_filter", "kept"
HISTOGRAM_VIEWS = (BEFORE, AFTER, KEPT_VIEW)
# Bins of the token histograms. About 50 linear bins resolve a unimodal length distribution without
# leaving most bins empty at a few thousand rows; 15 bins per decade (ratio 1.17) keep the log view as
# fine as the linear one over the bulk of chat data (one to two decades). Both are drawn from the exact
# merged counts, so the bins are exact, never re-binned approximations.
LINEAR_BINS = 50
LOG_BINS_PER_DECADE = 15
# Similarity histogram: fixed bins over [-1, 1], so per-batch histograms merge by addition. 0.005 puts
# ten bins between the default threshold 0.95 and the default record threshold 0.90.
SIMILARITY_BIN = 0.005


@dataclass
class ValueCounts:
    """Exact counts of integer values: mergeable, and small (one entry per distinct token count)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, values: np.ndarray) -> None:
        if len(values):
            unique, counts = np.unique(values, return_counts=True)
            self.counts.update(dict(zip(unique.tolist(), counts.tolist())))

    def histogram(self, edges: list[int]) -> list[int]:
        """Rows per bin [edges[i], edges[i+1]); every counted value must lie inside the edges."""
        if not self.counts:
            return [0] * (len(edges) - 1)
        values = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        weights = np.fromiter(self.counts.values(), dtype=np.int64, count=len(self.counts))
        if values.min() < edges[0] or values.max() >= edges[-1]:
            raise ValueError(f"values [{values.min()}, {values.max()}] outside the bins [{edges[0]}, {edges[-1]})")
        bins = np.searchsorted(np.asarray(edges), values, side="right") - 1
        return np.bincount(bins, weights=weights, minlength=len(edges) - 1).astype(np.int64).tolist()

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
    tokens_after_filter: dict = field(default_factory=lambda: {c: ValueCounts() for c in TOKEN_COLUMNS})
    tokens_kept: dict = field(default_factory=lambda: {c: ValueCounts() for c in TOKEN_COLUMNS})
    # Rows the tokenizer counted whose template located no assistant turn (prompt/response counts null).
    split_unknown: int = 0

    # The first row of each reason, in (source, source_row) order: what the end-of-run summary shows.
    examples: dict = field(default_factory=dict)

    COLUMNS = (schema.STATUS, schema.REASON, schema.SOURCE, schema.SOURCE_ROW, schema.DETAIL, *TOKEN_COLUMNS)

    def add(self, batch: pa.Table) -> None:
        status = batch.column(schema.STATUS)
        self.by_status.update(_value_counts(status))
        reasons = batch.column(schema.REASON)
        self.by_reason.update(_value_counts(reasons.drop_null()))
        for reason in pc.unique(reasons.drop_null()).to_pylist():
            if reason not in self.examples and schema.SOURCE_ROW in batch.column_names:
                first = pc.index(reasons, reason).as_py()
                self.examples[reason] = {
                    "source": batch.column(schema.SOURCE)[first].as_py(),
                    "source_row": batch.column(schema.SOURCE_ROW)[first].as_py(),
                    "detail": (batch.column(schema.DETAIL)[first].as_py() or "")[:EXAMPLE_DETAIL_CHARS],
                }
        for (source, state), n in _value_counts_pairs(batch.column(schema.SOURCE), status).items():
            self.by_source[source][state] += n
        kept = pc.equal(status, schema.KEPT)
        # Rows the tokenizer counted, whatever happened after: the "before the length filter" view.
        counted = pc.is_valid(batch.column(schema.NUM_TOKENS))
        length_removed = pc.fill_null(pc.is_in(batch.column(schema.REASON), value_set=pa.array(LENGTH_REASONS)), False)
        passed = pc.and_(counted, pc.invert(length_removed))
        self.split_unknown += int(pc.sum(pc.and_(counted, pc.is_null(batch.column(schema.RESPONSE_TOKENS)))).as_py() or 0)
        for column in TOKEN_COLUMNS:
            # drop_null: prompt/response counts are null where a template allowed neither way of counting
            # them (operators/tokens.py); they are left out of the statistics, never taken for a number.
            values = batch.column(column)
            self.tokens_before_filter[column].add(values.filter(counted).drop_null().to_numpy())
            self.tokens_after_filter[column].add(values.filter(passed).drop_null().to_numpy())
            self.tokens_kept[column].add(values.filter(kept).drop_null().to_numpy())

    def manifest_rows(self) -> dict:
        read = sum(self.by_status.values())
        funnel, remaining = [], read
        for stage in STAGES:
            dropped = {r: n for r, n in sorted(self.by_reason.items()) if STAGE_OF_REASON.get(r) == stage}
            if stage in OPTIONAL_STAGES and not dropped:
                continue
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
            "examples": dict(sorted(self.examples.items())),
        }

    def manifest_tokens(self) -> dict:
        return {
            # Rows whose chat template has no generation block and whose prompts are not prefixes of the
            # conversation: their prompt_tokens / response_tokens are null (operators/tokens.py).
            "rows_without_prompt_response_split": self.split_unknown,
            "before_length_filter": {c: v.summary() for c, v in self.tokens_before_filter.items()},
            "kept": {c: v.summary() for c, v in self.tokens_kept.items()},
            "histograms": self.token_histograms(),
        }

    def token_histograms(self) -> dict:
        """Per token column, linear and log bins over the counted range, each with the rows per bin
        before the length filter, after it, and kept (after dedup too). None where nothing was counted."""
        views = {BEFORE: self.tokens_before_filter, AFTER: self.tokens_after_filter, KEPT_VIEW: self.tokens_kept}
        out = {}
        for column in TOKEN_COLUMNS:
            before = self.tokens_before_filter[column]
            if not before.counts:
                out[column] = None
                continue
            lo, hi = min(before.counts), max(before.counts)
            out[column] = {
                scale: {"edges": edges, **{view: counts[column].histogram(edges) for view, counts in views.items()}}
                for scale, edges in (("linear", linear_edges(hi)), ("log", log_edges(lo, hi)))
            }
        return out


def nice_step(raw: float) -> int:
    """The smallest of 1, 2, 5 x 10^k (at least 1) that is >= raw."""
    if raw <= 1:
        return 1
    magnitude = 10 ** int(np.floor(np.log10(raw)))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def linear_edges(hi: int, bins: int = LINEAR_BINS) -> list[int]:
    """Integer edges 0, w, 2w, ... with a round width w, the last one above hi (bins are [a, b))."""
    width = nice_step(max(hi, 1) / bins)
    return [i * width for i in range(hi // width + 2)]


def log_edges(lo: int, hi: int, per_decade: int = LOG_BINS_PER_DECADE) -> list[int]:
    """Integer edges at 10^(k/per_decade), rounded and deduplicated, from at most lo to above hi.
    A bin [0, 1) comes first when lo is 0 (a log axis cannot show 0; plots draw it at 0.5)."""
    first = int(np.floor(np.log10(max(lo, 1)) * per_decade))
    last = int(np.floor(np.log10(max(hi, 1)) * per_decade)) + 1
    edges = np.unique(np.round(10 ** (np.arange(first, last + 1) / per_decade)).astype(np.int64)).tolist()
    while edges[-1] <= hi:
        last += 1
        edges.append(max(edges[-1] + 1, int(round(10 ** (last / per_decade)))))
    return ([0] if lo == 0 else []) + edges


@dataclass
class SimilarityHistogram:
    """Rows per best-neighbour similarity bin, fixed bins over [-1, 1] (mergeable; NaN = no neighbour)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(round(2 / SIMILARITY_BIN), np.int64))
    no_neighbor: int = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32)
        missing = np.isnan(values)
        self.no_neighbor += int(missing.sum())
        # Compared in float32 like the keep rule (`similarity >= float32(threshold)`), so a row exactly
        # at the threshold lands in the bin that starts there. Values a hair over 1 (docs/notes.md) and
        # exactly 1 (exact copies) go to the last bin.
        edges = self.edges().astype(np.float32)
        index = np.searchsorted(edges, values[~missing], side="right") - 1
        index = np.clip(index, 0, len(self.counts) - 1)
        self.counts += np.bincount(index, minlength=len(self.counts))

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    def edges(self) -> np.ndarray:
        return np.round(np.arange(len(self.counts) + 1) * SIMILARITY_BIN - 1.0, 6)

    def trimmed(self, include: float) -> tuple[list[float], list[int]]:
        """(edges, counts) from the first bin holding rows (or `include`, a threshold to show) up to 1."""
        nonzero = np.nonzero(self.counts)[0]
        first_bin = int(np.floor((include + 1.0) / SIMILARITY_BIN))
        start = max(0, min(first_bin, int(nonzero[0]) if len(nonzero) else first_bin) - 1)
        return self.edges()[start:].tolist(), self.counts[start:].tolist()


def _value_counts(array: pa.ChunkedArray) -> dict:
    counts = pc.value_counts(array)
    return {v["values"]: v["counts"] for v in counts.to_pylist()}


def _value_counts_pairs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> Counter:
    table = pa.table({"a": a, "b": b}).group_by(["a", "b"]).aggregate([([], "count_all")])
    return Counter({(r["a"], r["b"]): r["count_all"] for r in table.to_pylist()})
