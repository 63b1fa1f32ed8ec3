"""Resolve: the keep rule on the similarity graph -> which rows stay, and whom each removed row duplicates.

docs/architecture.md, "Near-duplicate semantics". Rows are identified by rank (0 = highest keep priority); the
graph's edges are the pairs `(a, b, sim)` from the index, `a < b`, recorded down to the record threshold.
Only pairs with `sim >= threshold` are edges here; both sides are float32 (`np.float32(threshold)`), so
"near-duplicate" means exactly what the index filtered on.

`resolve_greedy` (`--keep first` / `longest`): in rank order, a row is kept unless it is a near-duplicate
of a row already kept — the lexicographically first maximal independent set. Guarantees: no two kept rows
are near-duplicates; every removed row names a kept row of lower rank with sim >= threshold
(`duplicate_of`, the most similar such row, ties to the lower rank). The rule only looks along edges, so
resolving each connected component on its own gives the same answer (tested).

The greedy rule is sequential by nature; we decide it in vectorized *rounds* — a row is decided kept once
every lower neighbour is decided removed, removed once any lower neighbour is decided kept — which settle
most rows of a near-duplicate graph in a few rounds (a group's first row is kept in round one and removes
the rest). When a round settles little (long rank-ordered chains), the rest is finished by a plain loop
over the remaining rows and edges. 1M rows with 2M random edges: about 1 s here.

`resolve_none` (`--keep none`): the tutorial's rule — every row with any other row >= threshold is
removed, nobody from a group is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Switch from vectorized rounds to the sequential finish when a round settles less than this share of the
# undecided rows: rounds cost O(rows + edges) each, the loop O(remaining rows + edges) once.
_MIN_ROUND_PROGRESS = 0.05


@dataclass
class Resolution:
    kept: np.ndarray  # bool [n]
    duplicate_of: np.ndarray  # int64 [n]: rank of the row it duplicates, -1 if kept
    similarity: np.ndarray  # float32 [n]: similarity to duplicate_of, NaN if kept


def _edges(n: int, pairs_a, pairs_b, pairs_sim, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated pairs with sim >= threshold (float32 on both sides)."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    a, b, s = np.asarray(pairs_a), np.asarray(pairs_b), np.asarray(pairs_sim)
    if not (a.ndim == b.ndim == s.ndim == 1 and len(a) == len(b) == len(s)):
        raise ValueError(f"pairs_a, pairs_b, pairs_sim must be 1-d of one length, got {a.shape}, {b.shape}, {s.shape}")
    if len(a) and not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise ValueError("pair ranks must be integers")
    if len(a) and (a.min() < 0 or b.max() >= n or np.any(a >= b)):
        raise ValueError(f"pairs must satisfy 0 <= a < b < n={n} (each pair once, lower rank first)")
    t = np.float32(threshold)
    if not (-1.0 <= t <= 1.0):
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
    s = s.astype(np.float32, copy=False)
    edge = s >= t
    return a[edge].astype(np.int64, copy=False), b[edge].astype(np.int64, copy=False), s[edge]


def best_per_row(rows: np.ndarray, other: np.ndarray, sim: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the `other` with the highest sim (ties to the lower rank); -1 / NaN where none."""
    top = np.full(n, -np.inf, np.float32)
    np.maximum.at(top, rows, sim)
    at_top = sim == top[rows]
    best = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(best, rows[at_top], other[at_top])
    none = best == np.iinfo(np.int64).max
    best[none] = -1
    top[none] = np.nan
    return best, top


def _greedy_kept(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The lexicographically first maximal independent set of the graph (a < b), as a bool mask."""
    undecided, kept, removed = 0, 1, 2
    state = np.zeros(n, dtype=np.int8)
    open_rows = n
    rounds = 0
    while True:
        rounds += 1
        below = state[a]
        has_kept_below = np.zeros(n, dtype=bool)
        has_kept_below[b[below == kept]] = True
        has_open_below = np.zeros(n, dtype=bool)
        has_open_below[b[below == undecided]] = True
        todo = state == undecided
        state[todo & has_kept_below] = removed
        state[todo & ~has_kept_below & ~has_open_below] = kept
        # Edges that can still matter: the upper row is undecided and the lower row not removed.
        live = (state[b] == undecided) & (state[a] != removed)
        a, b = a[live], b[live]
        settled = open_rows - int(np.count_nonzero(state == undecided))
        open_rows -= settled
        if open_rows == 0:
            break
        if settled < _MIN_ROUND_PROGRESS * (open_rows + settled):
            _finish_sequentially(state, a, b)
            break
    logger.debug("greedy keep rule: %d vectorized rounds", rounds)
    return state == kept


def _finish_sequentially(state: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Decide the remaining undecided rows in rank order (edges: upper row undecided, lower not removed)."""
    order = np.argsort(b, kind="stable")
    a, b = a[order], b[order]
    rows = np.flatnonzero(state == 0)
    lo = np.searchsorted(b, rows, side="left").tolist()
    hi = np.searchsorted(b, rows, side="right").tolist()
    lower = a.tolist()
    flags = bytearray(state.tobytes())  # 0 undecided, 1 kept, 2 removed; fast scalar access
    for row, start, stop in zip(rows.tolist(), lo, hi):
        flags[row] = 1
        for j in range(start, stop):
            if flags[lower[j]] == 1:
                flags[row] = 2
                break
    state[:] = np.frombuffer(bytes(flags), dtype=np.int8)


def resolve_greedy(n: int, pairs_a, pairs_b, pairs_sim, threshold: float) -> Resolution:
    """The keep rule: rows in rank order, kept unless near-duplicate (>= threshold) of an already kept row."""
    a, b, s = _edges(n, pairs_a, pairs_b, pairs_sim, threshold)
    kept = _greedy_kept(n, a, b)
    # duplicate_of: the most similar kept lower neighbour (ties to the lower rank).
    link = kept[a] & ~kept[b]
    duplicate_of, similarity = best_per_row(b[link], a[link], s[link], n)
    if np.any(~kept & (duplicate_of < 0)):
        raise AssertionError("greedy keep rule removed a row without a kept near-duplicate (bug)")
    return Resolution(kept, duplicate_of, similarity)


def resolve_none(n: int, pairs_a, pairs_b, pairs_sim, threshold: float) -> Resolution:
    """The tutorial's rule: remove every row with any other row >= threshold; nobody from a group is kept.

    `duplicate_of` is the row's most similar neighbour (ties to the lower rank), which is itself removed:
    here it names the reason, not a survivor.
    """
    a, b, s = _edges(n, pairs_a, pairs_b, pairs_sim, threshold)
    rows = np.concatenate([a, b])
    other = np.concatenate([b, a])
    duplicate_of, similarity = best_per_row(rows, other, np.concatenate([s, s]), n)
    return Resolution(duplicate_of < 0, duplicate_of, similarity)


def components(n: int, pairs_a, pairs_b, pairs_sim, threshold: float) -> np.ndarray:
    """Connected component of each row in the graph of pairs >= threshold, labelled by its lowest rank."""
    a, b, _ = _edges(n, pairs_a, pairs_b, pairs_sim, threshold)
    from scipy.sparse import coo_matrix  # here, not at import: ~17 MB in the driver and every worker importing
    from scipy.sparse.csgraph import connected_components  # jobs.dedup, which only components() needs

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # np.unique's first index of each label is the lowest rank in that component.
    _, first = np.unique(labels, return_index=True)
    return first[labels].astype(np.int64)
