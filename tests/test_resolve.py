"""The keep rule: hand-made cases, the guarantees on random graphs, per-component equality, keep none."""

from __future__ import annotations

import numpy as np
import pytest

from operators.index import IndexConfig, search_in_process
from operators.resolve import components, resolve_greedy, resolve_none

T = 0.95


def _pairs(*triples):
    a, b, s = zip(*triples)
    return np.array(a), np.array(b), np.array(s, dtype=np.float32)


def _reference_greedy(n, a, b, s, threshold):
    """The rule as written, one row at a time."""
    t = np.float32(threshold)
    lower = {r: [] for r in range(n)}
    for p, q, sim in zip(a.tolist(), b.tolist(), s.tolist()):
        if np.float32(sim) >= t:
            lower[q].append((p, np.float32(sim)))
    kept, dup, dup_sim = [], [], []
    for r in range(n):
        candidates = [(p, sim) for p, sim in lower[r] if kept[p]]
        kept.append(not candidates)
        if candidates:
            p, sim = min(candidates, key=lambda c: (-c[1], c[0]))
            dup.append(p)
            dup_sim.append(sim)
        else:
            dup.append(-1)
            dup_sim.append(np.nan)
    return np.array(kept), np.array(dup), np.array(dup_sim, dtype=np.float32)


def _random_graph(seed, n, m, local=None):
    """Random pairs a < b, sims around the threshold; `local` keeps b - a small (long rank-ordered chains)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, m)
    b = a + rng.integers(1, local + 1, m) if local else rng.integers(0, n, m)
    keep = (a != b) & (b < n)
    a, b = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    key = np.unique(a * n + b)
    a, b = key // n, key % n
    s = rng.uniform(0.9, 1.0, len(a)).astype(np.float32)
    s[rng.random(len(s)) < 0.05] = np.float32(T)  # exactly at the threshold: an edge
    return a, b, s


def _check_guarantees(n, a, b, s, res):
    edge = s >= np.float32(T)
    assert not np.any(res.kept[a[edge]] & res.kept[b[edge]]), "two kept rows are near-duplicates"
    removed = np.flatnonzero(~res.kept)
    assert np.all(res.kept[res.duplicate_of[removed]]), "duplicate_of must name a kept row"
    assert np.all(res.duplicate_of[removed] < removed), "duplicate_of has a higher priority"
    sims = {(p, q): v for p, q, v in zip(a.tolist(), b.tolist(), s.tolist())}
    for r in removed[:2000].tolist():
        assert sims[(int(res.duplicate_of[r]), r)] == res.similarity[r] >= np.float32(T)
    assert np.all(res.duplicate_of[res.kept] == -1) and np.all(np.isnan(res.similarity[res.kept]))


def test_chain_keeps_both_ends():
    # a~b and b~c but not a~c: greedy keeps a, removes b (duplicate of a), keeps c.
    res = resolve_greedy(3, *_pairs((0, 1, 0.97), (1, 2, 0.96), (0, 2, 0.93)), T)
    assert res.kept.tolist() == [True, False, True]
    assert res.duplicate_of.tolist() == [-1, 0, -1]
    assert res.similarity[1] == np.float32(0.97)


def test_duplicate_of_is_the_most_similar_kept_row_ties_to_lower_rank():
    res = resolve_greedy(5, *_pairs((0, 3, 0.96), (1, 3, 0.98), (2, 3, 0.99), (0, 2, 0.97),
                                    (0, 4, 0.97), (1, 4, 0.97)), T)
    # 2 is removed (dup of 0), so 3 names 1 (0.98) rather than 2 (0.99, not kept); 4 ties 0 and 1 -> 0.
    assert res.kept.tolist() == [True, True, False, False, False]
    assert res.duplicate_of.tolist() == [-1, -1, 0, 1, 0]
    assert res.similarity[3] == np.float32(0.98)


def test_threshold_is_inclusive_in_float32_and_lower_pairs_are_ignored():
    t32 = np.float32(T)
    below = np.nextafter(t32, np.float32(0))
    res = resolve_greedy(4, *_pairs((0, 1, t32), (2, 3, below)), T)
    assert res.kept.tolist() == [True, False, True, True]
    assert res.similarity[1] == t32


def test_no_pairs_keeps_everything():
    res = resolve_greedy(3, np.array([], np.int64), np.array([], np.int64), np.array([], np.float32), T)
    assert res.kept.all() and (res.duplicate_of == -1).all()
    assert resolve_greedy(0, [], [], [], T).kept.shape == (0,)


@pytest.mark.parametrize("seed, n, m, local", [(0, 3000, 6000, None), (1, 3000, 9000, 3), (2, 500, 8000, None),
                                               (3, 4000, 4000, 1)])
def test_greedy_matches_the_rule_and_its_guarantees(seed, n, m, local):
    a, b, s = _random_graph(seed, n, m, local)
    res = resolve_greedy(n, a, b, s, T)
    kept, dup, dup_sim = _reference_greedy(n, a, b, s, T)
    assert np.array_equal(res.kept, kept)
    assert np.array_equal(res.duplicate_of, dup)
    assert np.array_equal(res.similarity, dup_sim, equal_nan=True)
    _check_guarantees(n, a, b, s, res)


@pytest.mark.parametrize("seed, local", [(9, None), (10, 3)])
def test_sequential_finish_matches_the_rule(monkeypatch, seed, local):
    # Rounds hand over to the row-by-row loop when they settle little (long chains); force it after round one.
    import operators.resolve as resolve

    monkeypatch.setattr(resolve, "_MIN_ROUND_PROGRESS", 1.01)
    n = 3000
    a, b, s = _random_graph(seed, n, 7000, local)
    res = resolve.resolve_greedy(n, a, b, s, T)
    kept, dup, _ = _reference_greedy(n, a, b, s, T)
    assert np.array_equal(res.kept, kept) and np.array_equal(res.duplicate_of, dup)


def _union_find_components(n, a, b, s):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p, q, v in zip(a.tolist(), b.tolist(), s.tolist()):
        if np.float32(v) >= np.float32(T):
            rp, rq = find(p), find(q)
            parent[max(rp, rq)] = min(rp, rq)
    return np.array([find(x) for x in range(n)])


@pytest.mark.parametrize("seed, local", [(4, None), (5, 2)])
def test_resolving_each_component_alone_gives_the_global_result(seed, local):
    n = 2000
    a, b, s = _random_graph(seed, n, 1500, local)
    labels = components(n, a, b, s, T)
    assert np.array_equal(labels, _union_find_components(n, a, b, s))  # labelled by the lowest rank
    assert len(np.unique(labels)) > 10
    whole = resolve_greedy(n, a, b, s, T)
    kept = np.zeros(n, bool)
    dup = np.full(n, -2, np.int64)
    sim = np.zeros(n, np.float32)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)  # sorted: local order = rank order
        inside = np.isin(a, members) & np.isin(b, members)
        local_res = resolve_greedy(len(members), np.searchsorted(members, a[inside]),
                                   np.searchsorted(members, b[inside]), s[inside], T)
        kept[members] = local_res.kept
        dup[members] = np.where(local_res.duplicate_of >= 0, members[local_res.duplicate_of], -1)
        sim[members] = local_res.similarity
    assert np.array_equal(kept, whole.kept)
    assert np.array_equal(dup, whole.duplicate_of)
    assert np.array_equal(sim, whole.similarity, equal_nan=True)


def test_keep_none_removes_every_row_with_a_near_duplicate():
    res = resolve_none(4, *_pairs((0, 1, 0.97), (1, 2, 0.96), (0, 2, 0.93)), T)
    assert res.kept.tolist() == [False, False, False, True]
    assert res.duplicate_of.tolist() == [1, 0, 1, -1]  # names a removed row: the reason, not a survivor
    assert res.similarity[2] == np.float32(0.96)


def test_keep_none_equals_the_notebook_rule_on_vectors():
    # The tutorial: remove every row whose best other similarity is >= threshold.
    rng = np.random.default_rng(6)
    base = rng.standard_normal((40, 64))
    copies = base[rng.integers(0, 40, 200)] + 0.03 * rng.standard_normal((200, 64))
    x = np.concatenate([rng.standard_normal((300, 64)), copies])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    nb = search_in_process(np.arange(len(x)), x, IndexConfig(), 0.9)
    res = resolve_none(len(x), nb.pairs_a, nb.pairs_b, nb.pairs_sim, T)
    assert np.array_equal(res.kept, ~(sims.max(axis=1) >= T))
    assert 0 < (~res.kept).sum() < len(x)
    removed = ~res.kept
    assert np.array_equal(res.duplicate_of[removed], sims.argmax(axis=1)[removed])
    assert np.array_equal(res.duplicate_of[removed], nb.best_rank[removed])


def test_random_graph_keep_none_matches_a_direct_computation():
    n = 1000
    a, b, s = _random_graph(7, n, 700)
    res = resolve_none(n, a, b, s, T)
    best = {}
    for p, q, v in zip(a.tolist(), b.tolist(), s.tolist()):
        if np.float32(v) >= np.float32(T):
            for row, other in ((p, q), (q, p)):
                if row not in best or (-v, other) < (-best[row][1], best[row][0]):
                    best[row] = (other, v)
    assert res.kept.tolist() == [r not in best for r in range(n)]
    assert res.duplicate_of.tolist() == [best[r][0] if r in best else -1 for r in range(n)]


def test_a_million_rows_resolve_in_the_suite():
    # ~2M random pairs over 1M rows (one giant component); about 0.2 s each here, no timing assert.
    n = 1_000_000
    a, b, s = _random_graph(8, n, 2_000_000)
    res = resolve_greedy(n, a, b, s, T)
    edge = s >= np.float32(T)
    assert not np.any(res.kept[a[edge]] & res.kept[b[edge]])
    removed = ~res.kept
    assert np.all(res.kept[res.duplicate_of[removed]])
    assert removed.sum() > 0
    assert resolve_none(n, a, b, s, T).kept.sum() < n
    assert len(np.unique(components(n, a, b, s, T))) < n


def test_long_rank_ordered_chain_alternates():
    n = 20_001
    a = np.arange(n - 1)
    res = resolve_greedy(n, a, a + 1, np.ones(n - 1, np.float32), T)
    assert np.array_equal(res.kept, np.arange(n) % 2 == 0)
    assert np.array_equal(res.duplicate_of[1::2], np.arange(0, n - 1, 2))


@pytest.mark.parametrize(
    "pairs, message",
    [(([1], [0], [0.99]), "a < b"), (([0], [5], [0.99]), "a < b"), (([0, 1], [1], [0.99]), "one length")],
)
def test_bad_pairs_fail_loudly(pairs, message):
    with pytest.raises(ValueError, match=message):
        resolve_greedy(3, *(np.array(p) for p in pairs), T)
