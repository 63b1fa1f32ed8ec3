"""Sharded index: flat equals one exact FAISS range search, results identical for 1/2/4 shards, IVF recall,
the Ray actors equal the in-process reference. Synthetic 384-d vectors with planted near-duplicate groups."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import operators.index as index_module

from operators.index import (
    IndexConfig,
    IndexShard,
    Neighbors,
    ShardResult,
    _Centroids,
    _margin,
    merge,
    pair_similarity,
    search_in_process,
    search_with_ray,
    train_quantizer,
)

DIM = 384
RECORD = np.float32(0.90)  # record threshold; the planted groups straddle it and 0.95
BIG_GROUP = 100
MAX_NEIGHBORS = 16  # < BIG_GROUP: the big group's members hit the bound
FIELDS = ("pairs_a", "pairs_b", "pairs_sim", "best_rank", "best_sim")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(seed: int = 7) -> tuple[np.ndarray, np.ndarray, dict]:
    """Vectors in row order, their ranks (a shuffled permutation), and the planted special rows (by position)."""
    rng = np.random.default_rng(seed)
    parts = [_unit(rng.standard_normal((2000, DIM)))]  # background: random cosines ~ N(0, 1/384), no pairs
    # Groups: base + sigma * noise. Pairwise cosine ~ 1 / (1 + 384 sigma^2): sigma 0.0117 -> ~0.95.
    big = _unit(rng.standard_normal((1, DIM)) + 0.0117 * rng.standard_normal((BIG_GROUP, DIM)))
    parts.append(big)
    for size, sigma in [(2, 0.008), (3, 0.012), (4, 0.015), (5, 0.0165), (6, 0.018)] * 8:
        base = rng.standard_normal((1, DIM))
        base /= np.linalg.norm(base)
        parts.append(_unit(base + sigma * rng.standard_normal((size, DIM))))
    # Pairs whose cosine is exactly RECORD, one ulp below, one ulp above: u = e_i, v = c e_i + sqrt(1-c^2) e_j
    # (a single non-zero product, so every summation order gives exactly c).
    exact = []
    for i, c in enumerate([RECORD, np.nextafter(RECORD, np.float32(0)), np.nextafter(RECORD, np.float32(2))]):
        u = np.zeros(DIM, np.float32)
        u[i] = 1
        v = np.zeros(DIM, np.float32)
        v[i] = c
        v[100 + i] = np.float32(np.sqrt(1 - np.float64(c) ** 2))
        exact.append((u, v))
    parts.append(np.array([vec for pair in exact for vec in pair], dtype=np.float32))
    x = np.concatenate(parts)
    n = len(x)
    first_exact = n - 6
    special = {
        "big": np.arange(2000, 2000 + BIG_GROUP),
        "at": (first_exact, first_exact + 1),
        "below": (first_exact + 2, first_exact + 3),
        "above": (first_exact + 4, first_exact + 5),
    }
    ranks = rng.permutation(n).astype(np.int64)
    return x, ranks, special


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def flat_results(planted):
    x, ranks, _ = planted
    return {
        shards: search_in_process(ranks, x, IndexConfig(shards=shards, max_neighbors=MAX_NEIGHBORS), RECORD)
        for shards in (1, 2, 4)
    }


@pytest.fixture(scope="module")
def reference_pairs(planted):
    """One exact IndexFlatIP range search of all vectors: pairs (rank_a < rank_b) with FAISS sim >= RECORD."""
    x, ranks, _ = planted
    index = faiss.IndexFlatIP(DIM)
    index.add(x)
    lims, sims, ids = index.range_search(x, float(np.nextafter(RECORD, np.float32(-1))))
    query = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64)))
    a, b = ranks[query], ranks[ids]
    keep = (a < b) & (sims >= RECORD)
    return {(int(p), int(q)): float(s) for p, q, s in zip(a[keep], b[keep], sims[keep])}


def _pair_set(nb: Neighbors) -> set[tuple[int, int]]:
    return set(zip(nb.pairs_a.tolist(), nb.pairs_b.tolist()))


def _assert_same(left: Neighbors, right: Neighbors) -> None:
    for field in FIELDS:
        assert np.array_equal(getattr(left, field), getattr(right, field), equal_nan=True), field


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_flat_pairs_equal_one_exact_faiss_range_search(flat_results, reference_pairs, shards):
    nb = flat_results[shards]
    assert _pair_set(nb) == set(reference_pairs)
    assert np.all(nb.pairs_a < nb.pairs_b)
    assert np.all(np.diff(nb.pairs_a) >= 0)  # sorted by (a, b)
    assert nb.pairs_sim.dtype == np.float32 and np.all(nb.pairs_sim >= RECORD)
    faiss_sims = np.array([reference_pairs[p] for p in zip(nb.pairs_a.tolist(), nb.pairs_b.tolist())])
    # Two float32 BLAS kernels (FAISS's range search, our shard's blocks) sum 384 products in different orders:
    # about sqrt(d) ulps apart (1.01e-6 seen on an AVX-512 Xeon), far inside the d-ulp bound of 2.3e-5.
    assert np.max(np.abs(faiss_sims - nb.pairs_sim)) < 4e-6
    # The planted groups straddle both thresholds, so the test is not trivially all-or-nothing.
    assert len(nb.pairs_a) > BIG_GROUP * (BIG_GROUP - 1) // 2
    assert np.any(nb.pairs_sim < 0.95) and np.any(nb.pairs_sim >= 0.95)


def test_neighbors_identical_for_1_2_4_shards(flat_results):
    _assert_same(flat_results[1], flat_results[2])
    _assert_same(flat_results[1], flat_results[4])


def test_record_threshold_is_inclusive_at_the_exact_float32_value(planted, flat_results):
    x, ranks, special = planted
    pairs = {p: s for p, s in zip(zip(flat_results[1].pairs_a.tolist(), flat_results[1].pairs_b.tolist()),
                                  flat_results[1].pairs_sim.tolist())}

    def key(name):
        i, j = special[name]
        return tuple(sorted((int(ranks[i]), int(ranks[j]))))

    assert np.float32(pairs[key("at")]) == RECORD  # cosine exactly the threshold: recorded (>=)
    assert key("below") not in pairs  # one ulp below: not recorded
    assert np.float32(pairs[key("above")]) == np.nextafter(RECORD, np.float32(2))


def test_big_group_hits_the_bound_and_is_researched_without_changing_results(planted, flat_results):
    x, ranks, special = planted
    for shards in (1, 2, 4):
        assert flat_results[shards].researched > 0
    big = set(ranks[special["big"]].tolist())
    pairs = _pair_set(flat_results[1])
    in_big = {p for p in pairs if p[0] in big and p[1] in big}
    assert len(in_big) == BIG_GROUP * (BIG_GROUP - 1) // 2  # every pair of the group, not 16 per row
    unbounded = search_in_process(ranks, x, IndexConfig(max_neighbors=4 * BIG_GROUP), RECORD)
    assert unbounded.researched == 0
    _assert_same(unbounded, flat_results[1])


def test_best_neighbour_is_the_brute_force_argmax(planted, flat_results):
    x, ranks, _ = planted
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    best_pos = sims.argmax(axis=1)
    nb = flat_results[4]
    expected_rank = np.empty(len(x), np.int64)
    expected_rank[ranks] = ranks[best_pos]
    assert np.array_equal(nb.best_rank, expected_rank)
    expected_sim = np.empty(len(x))
    expected_sim[ranks] = sims.max(axis=1)
    assert np.max(np.abs(nb.best_sim - expected_sim)) < 1e-6
    # best_sim is the recomputed value of that very pair, as in the pairs.
    position = np.argsort(ranks)
    assert np.array_equal(nb.best_sim, pair_similarity(x[position], x[position[nb.best_rank]]))


def test_ivf_recall_against_flat_and_identical_across_shards(planted, flat_results):
    x, ranks, _ = planted
    flat = _pair_set(flat_results[1])
    ivf = {s: search_in_process(ranks, x, IndexConfig(kind="ivf", shards=s, max_neighbors=MAX_NEIGHBORS), RECORD)
           for s in (1, 4)}
    found = _pair_set(ivf[1])
    assert found <= flat  # similarities are recomputed exactly: IVF can miss pairs, never invent one
    recall = len(found) / len(flat)
    assert recall >= 0.99, recall
    assert ivf[1].researched > 0
    _assert_same(ivf[1], ivf[4])  # shared quantizer + deterministic coarse assignment



def test_ivf_list_by_list_scan_equals_faiss_own_preassigned_search(planted, monkeypatch):
    """The list-major scan is an implementation detail: pairs, best neighbours and the re-searched count
    must be exactly those of FAISS's query-by-query k-NN + range search over the same probed lists.
    Extra rows: identical groups of exactly k-1, k and k+1 rows (k = max_neighbors + 1 with self: the
    bound is hit from k on), and a row with two neighbours tied at the same cosine."""
    x, _, _ = planted
    rng = np.random.default_rng(3)
    k = MAX_NEIGHBORS + 1
    extra = [np.repeat(_unit(rng.standard_normal((1, DIM))), size, axis=0) for size in (k - 1, k, k + 1)]
    tie = np.zeros((3, DIM), np.float32)
    tie[0, 200], tie[1:, 200] = 1, 0.95  # cosine exactly 0.95 with both: one non-zero product each
    tie[1, 201] = tie[2, 202] = np.float32(np.sqrt(1 - 0.95**2))
    x = np.concatenate([x, *extra, tie])
    ranks = rng.permutation(len(x)).astype(np.int64)
    results = {}
    for scan_by_list in (True, False):
        monkeypatch.setattr(index_module, "_SCAN_BY_LIST", scan_by_list)
        for shards in (1, 2):
            config = IndexConfig(kind="ivf", shards=shards, max_neighbors=MAX_NEIGHBORS, nprobe=4)
            results[scan_by_list, shards] = search_in_process(ranks, x, config, RECORD)
    for shards in (1, 2):
        by_list, by_faiss = results[True, shards], results[False, shards]
        assert by_faiss.researched > 0 and len(by_faiss.pairs_a) > 0
        assert by_list.researched == by_faiss.researched
        _assert_same(by_list, by_faiss)
    one, n = results[True, 1], len(x)
    assert one.best_sim[ranks[n - 3]] == np.float32(0.95)
    assert one.best_rank[ranks[n - 3]] == min(ranks[n - 2], ranks[n - 1])  # the tie goes to the lower rank
    groups = np.split(ranks[len(planted[0]):n - 3], np.cumsum([k - 1, k]))
    assert all(one.best_sim[g].min() >= np.float32(0.9999) for g in groups)

def test_pair_similarity_does_not_depend_on_batching(planted):
    x, _, _ = planted
    rng = np.random.default_rng(1)
    i, j = rng.integers(0, len(x), 5000), rng.integers(0, len(x), 5000)
    whole = pair_similarity(x[i], x[j])
    pieces = np.concatenate([pair_similarity(x[i[k:k + 37]], x[j[k:k + 37]]) for k in range(0, 5000, 37)])
    assert np.array_equal(whole.view(np.int32), pieces.view(np.int32))
    assert np.max(np.abs(whole - np.einsum("ij,ij->i", x[i].astype(np.float64), x[j].astype(np.float64)))) < 1e-7


def test_coarse_assignment_is_the_exact_top_m_whatever_the_batch(planted):
    x, _, _ = planted
    rng = np.random.default_rng(2)
    centroids = _unit(rng.standard_normal((90, DIM)))
    # Close calls: copies of centroids up to a few ulps, so float32 ordering is unreliable; 31 copies of one
    # centroid make rows whose close calls reach past the float32 candidates (re-scored against every list).
    centroids[50:60] = _unit(centroids[:10] + 1e-7 * rng.standard_normal((10, DIM)))
    centroids[60:90] = _unit(centroids[10] + 1e-7 * rng.standard_normal((30, DIM)))
    x = np.concatenate([x, _unit(centroids[10] + 0.01 * rng.standard_normal((50, DIM)))])
    coarse = _Centroids(centroids, _margin(DIM))
    probes = coarse.top(x, 16)
    assert np.array_equal(probes, np.concatenate([coarse.top(x[k:k + 50], 16) for k in range(0, len(x), 50)]))
    exact = x.astype(np.float64) @ centroids.astype(np.float64).T
    kth = -np.sort(-exact, axis=1)[:, 15]
    chosen = np.take_along_axis(exact, probes, axis=1)
    assert np.all(chosen >= kth[:, None] - 1e-7)  # the top 16 up to pair_similarity's float32 rounding
    # The add list from the same scoring pass is top(x, 1), close calls included (the ulp-apart copies).
    both, first = coarse.top_and_first(x, 16)
    assert np.array_equal(both, probes)
    assert np.array_equal(first, coarse.top(x, 1)[:, 0])
    assert np.array_equal(first, np.concatenate([coarse.top(x[k:k + 50], 1)[:, 0] for k in range(0, len(x), 50)]))


@pytest.mark.parametrize("shards", [2, 4])
def test_search_with_ray_equals_in_process(ray_local, planted, flat_results, shards, monkeypatch):
    monkeypatch.setattr(index_module, "FEED_BATCH", 1000)  # 700-row batches regrouped across their ends
    x, ranks, _ = planted
    order = np.random.default_rng(3).permutation(len(x))  # batches in no particular rank order

    def batches():
        for k in range(0, len(x), 700):
            rows = order[k:k + 700]
            yield ranks[rows], x[rows]

    config = IndexConfig(shards=shards, max_neighbors=MAX_NEIGHBORS)
    nb = search_with_ray(batches, len(x), DIM, config, RECORD, {"num_cpus": 0.25})
    _assert_same(nb, flat_results[shards])
    assert nb.researched > 0


@pytest.mark.parametrize("query_batch", [index_module.IVF_QUERY_BATCH, 777])
def test_search_with_ray_ivf_trains_from_the_stream(ray_local, planted, query_batch, monkeypatch):
    """777: adds and queries regrouped into many calls through one reused buffer, batches straddling its ends."""
    monkeypatch.setattr(index_module, "IVF_QUERY_BATCH", query_batch)
    monkeypatch.setattr(index_module, "FEED_BATCH", query_batch)
    x, ranks, _ = planted

    def batches():
        for k in range(0, len(x), 1000):
            yield ranks[k:k + 1000], x[k:k + 1000]

    config = IndexConfig(kind="ivf", shards=2, max_neighbors=MAX_NEIGHBORS)
    expected = search_in_process(ranks, x, config, RECORD)
    _assert_same(search_with_ray(batches, len(x), DIM, config, RECORD, {"num_cpus": 0.25}), expected)


def test_regrouped_batches_are_exactly_the_rows_in_order():
    rng = np.random.default_rng(0)
    sizes = [5, 300, 1, 0, 777, 64, 129]
    ranks = np.arange(sum(sizes))
    vectors = rng.standard_normal((len(ranks), 4)).astype(np.float32)
    cuts = np.cumsum([0, *sizes])
    batches = [(ranks[a:b], vectors[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    got = [(r.copy(), v.copy()) for r, v in index_module._regrouped(iter(batches), 256)]  # a yield is a view
    assert [len(r) for r, _ in got] == [256] * 4 + [len(ranks) - 4 * 256]
    assert np.array_equal(np.concatenate([r for r, _ in got]), ranks)
    assert np.array_equal(np.concatenate([v for _, v in got]), vectors)


def test_search_with_ray_ivf_training_task_reports_a_missing_row(ray_local, planted):
    x, ranks, _ = planted

    def batches():  # the last row never comes: the training task must say so, not train on a short sample
        yield ranks[:-1], x[:-1]

    config = IndexConfig(kind="ivf", shards=2, max_neighbors=MAX_NEIGHBORS, nlist=-(-len(x) // 64))  # samples all
    with pytest.raises(ValueError, match="every training-sample rank"):
        search_with_ray(batches, len(x), DIM, config, RECORD, {"num_cpus": 0.25})


def test_search_with_ray_requires_fractional_cpus(ray_local, planted):
    with pytest.raises(ValueError, match="num_cpus"):
        search_with_ray(lambda: iter(()), 0, DIM, IndexConfig(shards=2), RECORD, {})


def test_single_row_has_no_neighbour():
    x = _unit(np.ones((1, 8), np.float32))
    nb = search_in_process(np.array([0]), x, IndexConfig(shards=2), 0.5)
    assert nb.best_rank.tolist() == [-1] and np.isnan(nb.best_sim[0]) and len(nb.pairs_a) == 0


def test_shard_keeps_only_its_ranks():
    x = _unit(np.random.default_rng(0).standard_normal((10, 8)))
    shard = IndexShard(IndexConfig(kind="flat", shards=3), 8, shard_id=1)
    assert shard.add(np.arange(10), x) == 3  # ranks 1, 4, 7
    assert shard.size() == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "hnsw"}, "unknown"),
        ({"shards": 0}, "shards"),
        ({"nlist": 0}, "nlist"),
        ({"nprobe": 0}, "nprobe"),
        ({"max_neighbors": 0}, "max_neighbors"),
        ({"kind": "ivf", "gpu": True}, "flat"),
        ({"gpu": True, "max_neighbors": 4096}, "2048"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndexConfig(**kwargs)


def test_bad_inputs_fail_loudly():
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="normalized"):
        search_in_process(np.arange(5), x, IndexConfig(), 0.9)
    near = _unit(x)
    near[1] *= np.float32(1.0009)  # within the 1e-3 tolerance on the norm: accepted
    search_in_process(np.arange(5), near, IndexConfig(), 0.9)
    near[[2, 3]] *= np.float32(0.9989)
    with pytest.raises(ValueError, match=r"^2 vectors are not L2-normalized \(norm 0\.9989\)"):
        search_in_process(np.arange(5), near, IndexConfig(), 0.9)
    with pytest.raises(ValueError, match="permutation"):
        search_in_process(np.array([0, 1, 1, 3, 4]), _unit(x), IndexConfig(), 0.9)
    with pytest.raises(ValueError, match="float32"):
        search_in_process(np.arange(5), _unit(x).astype(np.float64), IndexConfig(), 0.9)
    with pytest.raises(ValueError, match="trained quantizer"):
        IndexShard(IndexConfig(kind="ivf"), 8)
    with pytest.raises(ValueError, match="nlist"):
        train_quantizer(_unit(x), 6)


def test_merge_rejects_a_pair_found_twice_and_unsearched_rows():
    one = ShardResult(np.array([0]), np.array([1]), np.array([0.99], np.float32), np.array([0, 1]),
                      np.array([1, 0]), np.array([0.99, 0.99], np.float32), np.array([], np.int64))
    with pytest.raises(ValueError, match="twice"):
        merge(2, [one, one])
    with pytest.raises(ValueError, match="never queried"):
        merge(3, [one])


def test_merge_folds_results_in_any_order_to_the_best_per_row():
    # Shard results folded one at a time (the Ray search does, as they arrive) keep, for every row, the highest
    # similarity over all shards with ties to the lower rank, whatever order the results come in.
    rng = np.random.default_rng(11)
    n, results = 60, []
    for shard in range(4):
        for start in range(0, n, 16):
            q = np.arange(start, min(start + 16, n))
            best = rng.integers(-1, n, len(q))
            sims = rng.choice(np.array([0.5, 0.7, 0.9], np.float32), len(q))  # many ties across shards
            sims[best < 0] = np.nan
            results.append(ShardResult(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
                                       q, best, sims, np.array([q[0]]) if shard == 0 else np.empty(0, np.int64)))
    expected_rank = np.full(n, -1)
    for row in range(n):
        candidates = [(-float(r.best_sim[k]), int(r.best_rank[k])) for r in results
                      for k in np.flatnonzero(r.query_ranks == row) if r.best_rank[k] >= 0]
        if candidates:
            expected_rank[row] = min(candidates)[1]
    for order in (results, results[::-1], [results[k] for k in rng.permutation(len(results))]):
        merged = merge(n, order)
        assert merged.best_rank.tolist() == expected_rank.tolist()
        assert merged.researched == 4


def test_best_neighbour_ties_beyond_the_bound_go_to_the_lowest_rank():
    # A query with 20 neighbours at exactly cosine 0.5 (below the record threshold) and a bound of 4: FAISS's
    # top 5 is an arbitrary subset of the tie; the near-tie re-search must still pick the lowest rank.
    rng = np.random.default_rng(5)
    background = _unit(rng.standard_normal((200, DIM)))
    background[:, :30] = 0  # no background vector shares an axis with the tie group
    background = _unit(background)
    query = np.zeros((1, DIM), np.float32)
    query[0, 0] = 1
    ties = np.zeros((20, DIM), np.float32)
    ties[:, 0] = 0.5
    ties[np.arange(20), 1 + np.arange(20)] = np.float32(np.sqrt(0.75))
    x = np.concatenate([background, query, ties])
    ranks = rng.permutation(len(x)).astype(np.int64)
    results = [search_in_process(ranks, x, IndexConfig(shards=s, max_neighbors=4), RECORD) for s in (1, 2, 4)]
    q_rank = ranks[200]
    for nb in results:
        assert nb.best_rank[q_rank] == ranks[201:].min()
        assert nb.best_sim[q_rank] == np.float32(0.5)
        assert np.all(nb.best_rank[ranks[201:]] == q_rank)
        assert nb.researched >= 1
        _assert_same(nb, results[0])


def test_a_shared_coarse_assignment_is_the_one_each_shard_would_compute():
    """CoarseAssigner computes a batch's IVF lists once for every shard: the same lists, the same results."""
    from operators.index import CoarseAssigner, train_quantizer

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x[1500:1600] = x[:100] + rng.normal(0, 0.02, (100, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    config = IndexConfig(kind="ivf", shards=3, nlist=40, nprobe=4)
    trained = train_quantizer(x[::3], 40)
    assigner = CoarseAssigner(trained, config.nprobe)
    ranks = np.arange(len(x))
    own = [IndexShard(config, 16, trained, shard_id=s) for s in range(3)]
    shared = [IndexShard(config, 16, trained, shard_id=s) for s in range(3)]
    lists = assigner.lists(x)
    for a, b in zip(own, shared):
        assert a.add(ranks, x) == b.add(ranks, x, lists)
    probes = assigner.probes(x)
    assert probes.shape == (len(x), 4) and np.all(np.diff(probes, axis=1) > 0)
    for a, b in zip(own, shared):
        ra, rb = a.search(ranks, x, 0.9), b.search(ranks, x, 0.9, probes)
        for field in ("pairs_a", "pairs_b", "pairs_sim", "best_rank", "best_sim"):
            np.testing.assert_array_equal(getattr(ra, field), getattr(rb, field))
    with pytest.raises(ValueError, match="shape"):
        shared[0].search(ranks, x, 0.9, probes[:, :2])


def test_auto_is_flat_up_to_flat_max_rows_or_on_a_gpu_and_ivf_above():
    config = IndexConfig(flat_max_rows=1000)
    assert config.kind == "auto" and IndexConfig().flat_max_rows == 200_000
    assert config.resolved(1000).kind == "flat" and config.resolved(1001).kind == "ivf"
    assert config.resolved(10**7, gpu_available=True).kind == "flat"
    assert IndexConfig(kind="ivf").resolved(10).kind == "ivf" and IndexConfig(kind="flat").resolved(10**7).kind == "flat"
    with pytest.raises(ValueError, match="decided kind"):
        IndexShard(config, 8)
    with pytest.raises(ValueError, match="flat_max_rows"):
        IndexConfig(flat_max_rows=-1)


class _InMemoryBatches:
    """(ranks, vectors) batches of the planted rows; picklable, as measure_recall's Ray task needs."""

    def __init__(self, x: np.ndarray, ranks: np.ndarray, rows: int = 500):
        self.x, self.ranks, self.rows = x, ranks, rows

    def __call__(self):
        for k in range(0, len(self.x), self.rows):
            yield self.ranks[k:k + self.rows], self.x[k:k + self.rows]


def test_measure_recall_counts_exactly_the_sampled_pairs_a_search_missed(ray_local, planted, flat_results):
    """The recall check (a Ray task reads the vectors, the driver compares): 1.0 against the exact pairs, and
    (T - k) / T when k of the T sampled exact pairs are left out of what the search recorded."""
    import dataclasses

    from jobs.dedup import measure_recall

    x, ranks, _ = planted
    exact = flat_results[1]
    full = measure_recall(_InMemoryBatches(x, ranks), exact, len(x), RECORD)
    sample = np.unique(np.linspace(0, len(x) - 1, num=1000).astype(np.int64))
    touching = np.flatnonzero(np.isin(exact.pairs_a, sample) | np.isin(exact.pairs_b, sample))
    assert full["sample_rows"] == len(sample) and full["exact_pairs"] == len(touching) > 20
    assert full["found_pairs"] == full["exact_pairs"] and full["recall"] == 1.0
    keep = np.ones(len(exact.pairs_a), dtype=bool)
    keep[touching[:7]] = False
    missed = dataclasses.replace(exact, pairs_a=exact.pairs_a[keep], pairs_b=exact.pairs_b[keep],
                                 pairs_sim=exact.pairs_sim[keep])
    partial = measure_recall(_InMemoryBatches(x, ranks, rows=333), missed, len(x), RECORD)
    assert partial["exact_pairs"] == len(touching) and partial["found_pairs"] == len(touching) - 7
    assert partial["recall"] == pytest.approx((len(touching) - 7) / len(touching))
