"""Sharded index and cross-shard search: every row against every shard -> pairs >= record threshold.

docs/architecture.md, "Near-duplicate semantics" and "Same input, same output". Rows are identified by their
**rank** (0..n-1, keep priority, 0 first); vectors are L2-normalized float32 `[n, d]`. Shard `s` of `S`
holds the rows with `rank % S == s`. Every query is searched against every shard, and a shard reports only
the pairs whose query rank is the lower one, so each pair `(a, b)`, `a < b`, is found exactly once.

Why the results do not depend on sharding or batching (the contract, tested exactly):

* FAISS computes the same inner product with different code paths (BLAS for big query batches, SIMD loops
  otherwise), so one pair's similarity can differ in the last bits between 1 and 4 shards. Every similarity
  we *report* is therefore recomputed by `pair_similarity`: the products of two float32 vectors are exact in
  float64, their float64 sum is rounded once to float32. The value depends only on the two vectors.
* FAISS is used only to find candidates, with a safety `margin` below the record threshold
  (`_margin(d)` >= 2x the worst-case float32 error of a d-term dot product of unit vectors, d * 2**-24),
  and the candidates are filtered on the recomputed value with exactly `>=` (docs/notes.md: FAISS range search
  is strict `>`, which the margin makes irrelevant). So the pairs are exactly "all pairs whose recomputed
  similarity is >= record_threshold", whatever FAISS's own rounding did.
* Work per query is bounded by k-NN with `k = max_neighbors + 1` (the query itself may be one of them).
  A query whose k-th result is still within reach (>= record threshold - margin, or within `margin` of its
  best result) *hit the bound*: it is re-searched with a range search, which has no bound. The second rule
  makes the best neighbour exact too: a tie group larger than the bound cannot hide the true best.
  Which queries hit the bound depends on how the rows are split (a group of 40 hits a bound of 16 on one
  shard but not on four), so `Neighbors.researched` is a work counter, not part of the result.
* IVF: the coarse assignment (which list a vector goes to, which lists a query probes) is a near-tie
  decision as well, so we make it ourselves (`_Centroids`): float32 scores from numpy, the close calls
  re-decided with `pair_similarity`, ties to the lower list id, then FAISS's preassigned add/search. All
  shards share one trained quantizer (docs/notes.md), so they partition the space identically and an IVF search
  over S shards probes exactly the vectors one index would. The assignment of a batch is computed once, by
  the caller (`CoarseAssigner`), and handed to every shard: S shards no longer score every query against
  every centroid S times.

GPU (`IndexConfig.gpu`, flat only): the k-NN pass runs on a GPU copy of the shard (k <= 2048 there);
GPU flat indexes have no range search (docs/notes.md), so the re-search of the queries that hit the bound runs
on the CPU index, as `faiss.contrib.exhaustive_search.range_search_gpu` does. Not exercised by the tests
(no faiss-gpu on the test machines).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf")
# `--index auto` below this many rows is flat (exact): measured here, flat at 100k rows takes 69-110 s and
# grows with n^2 (1M: about 1.8 h), IVF at 1M about 2.5 min with training (benchmarks/RESULTS.md, "Index at
# 1M rows"). At 200k flat is a few minutes, small beside embedding the same rows on CPU (about 40 rows/s here).
AUTO_FLAT_MAX_ROWS = 200_000
# GPU k-NN returns at most 2048 results per query (docs/notes.md, "FAISS").
GPU_MAX_K = 2048
# Queries per FAISS call in `search_in_process`: far above FAISS's BLAS switch (20 queries) and small
# enough that the k-NN result matrices stay a few MB.
QUERY_BATCH = 4096
# Queries per IVF search call: each shard scans a probed list once per call for all the call's queries
# that probe it, so bigger calls amortize the per-list work (1M rows, 4000 lists: 8192 queries per call
# give ~33 queries a list and spend most of the time in per-list overhead; at 32768 the scan ran 4.6x
# faster than FAISS's own, docs/notes.md). 32768 x 384 float32 is 50 MB.
IVF_QUERY_BATCH = 32768
# Rows per add call and per flat query call in `search_with_ray`: the vectors store's files hold ~1,000 rows
# each, and every batch is one round trip through the feeder actor (about 900 of them at 1M rows otherwise).
FEED_BATCH = 8192
# FAISS IndexIVF.parallel_mode for preassigned searches: 3 = queries split over the OpenMP threads (k-NN only;
# mode 0 is single-threaded there), 0 = the same for range search (which does not accept 3). docs/notes.md.
_KNN_PARALLEL_MODE = 3
_RANGE_PARALLEL_MODE = 0
_SCAN_BY_LIST = True

# Rows per chunk when recomputing similarities: the float64 gathers stay in cache (about 4x faster than
# one big gather, measured here).
_DOT_CHUNK = 4096
# Coarse scores per chunk (rows x nlist float32, 16 MB): big chunks, since small BLAS calls are slow here
# (512-row matmuls measured 5x slower per row than one big one on the shared 2 cores).
_COARSE_SCORES = 1 << 22
# Extra float32 coarse candidates beyond nprobe (rows whose close calls reach past them are re-scored
# against every list).
_COARSE_EXTRA = 8
# FAISS's IVF guidance (wiki "Guidelines to choose an index"): nlist between 4*sqrt(n) and 16*sqrt(n),
# trained on 30*nlist .. 256*nlist vectors; k-means warns below 39 points per centroid.
_NLIST_PER_SQRT_N = 4
_MIN_POINTS_PER_LIST = 39
_TRAIN_POINTS_PER_LIST = 64


@dataclass(frozen=True)
class IndexConfig:
    """How the index is built and searched; one object shared by training, every shard and the merge.

    `nprobe=16`: FAISS's default is 1, which misses near-duplicates that fall just across a list border;
    with nlist ~ 4*sqrt(n) lists, 16 probes scan ~16/nlist of the data and measured recall of the pairs
    against flat search was 1.0 on the planted test data (tests/test_index.py). Measure on your data.
    `max_neighbors=64`: bounds first-pass work per query per shard; rows in bigger groups are re-searched.
    """

    kind: str = "auto"  # auto: flat up to flat_max_rows rows (or on a GPU), ivf above (`resolved`)
    shards: int = 1
    nlist: int | None = None
    nprobe: int = 16
    max_neighbors: int = 64
    gpu: bool = False
    flat_max_rows: int = AUTO_FLAT_MAX_ROWS

    def resolved(self, n: int, gpu_available: bool = False) -> IndexConfig:
        """This config with `auto` decided for n rows: flat (exact) up to flat_max_rows rows or when a GPU
        runs the flat search, ivf above."""
        if self.kind != "auto":
            return self
        kind = "flat" if gpu_available or self.gpu or n <= self.flat_max_rows else "ivf"
        return dataclasses.replace(self, kind=kind)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind {self.kind!r} is unknown: use one of {', '.join(KINDS)}")
        if not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError(f"index shards must be an integer >= 1, got {self.shards!r}")
        if self.nlist is not None and (not isinstance(self.nlist, int) or self.nlist < 1):
            raise ValueError(f"nlist must be an integer >= 1 or None (chosen from n), got {self.nlist!r}")
        if not isinstance(self.nprobe, int) or self.nprobe < 1:
            raise ValueError(f"nprobe must be an integer >= 1, got {self.nprobe!r}")
        if not isinstance(self.max_neighbors, int) or self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be an integer >= 1, got {self.max_neighbors!r}")
        if not isinstance(self.flat_max_rows, int) or self.flat_max_rows < 0:
            raise ValueError(f"flat_max_rows must be an integer >= 0, got {self.flat_max_rows!r}")
        if self.gpu and self.kind == "ivf":
            raise ValueError(
                "gpu=True supports kind='flat' only (GPU IVF has no preassigned range search, which the exact "
                "re-search needs): use kind='flat' on GPU or kind='ivf' on CPU"
            )
        if self.gpu and self.max_neighbors + 1 > GPU_MAX_K:
            raise ValueError(
                f"max_neighbors={self.max_neighbors} is too large for a GPU index (k = max_neighbors + 1 <= "
                f"{GPU_MAX_K}): lower it; rows with more neighbours are re-searched anyway"
            )

    def resolved_nlist(self, n: int) -> int:
        """`nlist`, or the default for n rows: round(4*sqrt(n)), at most n // 39 (FAISS guidance), >= 1."""
        if self.nlist is not None:
            return self.nlist
        return default_nlist(n)


def _faiss():
    # Imported where an index is built, not at module import: config parsing and `chatsieve --help` load
    # this module for IndexConfig and must stay light.
    import faiss

    return faiss


def _ivf_tools():
    from faiss.contrib import ivf_tools

    return ivf_tools


def default_nlist(n: int) -> int:
    return max(1, min(round(_NLIST_PER_SQRT_N * math.sqrt(n)), n // _MIN_POINTS_PER_LIST))


def training_sample_ranks(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """The ranks the IVF quantizer is trained on: min(n, 64 * nlist) of them, drawn with `seed`, sorted.

    Drawn by rank (not by position in a batch), so the sample does not depend on how rows are batched.
    """
    size = min(n, _TRAIN_POINTS_PER_LIST * nlist)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def pair_similarity(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine of float32 vectors as float32: exact float64 products, float64 sum, one rounding.

    The value depends only on the two rows (not on batch, shard or memory layout); it is within 2**-24
    relative of the exact dot product, so it is also closer to it than FAISS's float32 accumulation.
    """
    out = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), _DOT_CHUNK):
        stop = start + _DOT_CHUNK
        prod = x[start:stop].astype(np.float64)
        prod *= y[start:stop]
        out[start:stop] = prod.sum(axis=1)
    return out


def _margin(dim: int) -> np.float32:
    # Worst-case error of a float32 d-term dot product of unit vectors is about d * 2**-24 (2.3e-5 at
    # d=384); candidates are taken `margin` below what we need, so twice that error always fits.
    return np.float32(max(1e-4, 4 * dim * 2.0**-24))


def _check_threshold(value: float, name: str) -> np.float32:
    t = np.float32(value)
    if not (-1.0 <= t <= 1.0):
        raise ValueError(f"{name} must be a cosine in [-1, 1], got {value!r}")
    return t


def _check_batch(ranks: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ranks = np.asarray(ranks)
    vectors = np.asarray(vectors)
    if ranks.ndim != 1 or not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must be a 1-d integer array, got shape {ranks.shape} dtype {ranks.dtype}")
    if vectors.ndim != 2 or vectors.shape != (len(ranks), dim):
        raise ValueError(f"vectors must have shape ({len(ranks)}, {dim}), got {vectors.shape}")
    if vectors.dtype != np.float32:
        raise ValueError(f"vectors must be float32 (compared in float32, docs/architecture.md), got {vectors.dtype}")
    if len(ranks) and ranks.min() < 0:
        raise ValueError("ranks must be >= 0")
    if len(vectors):
        # Squared norms in float32 by einsum: 4x cheaper than linalg.norm on 1M x 384 rows, checked per batch
        # on add and again on search. |norm - 1| > 1e-3 exactly as before (sqrt in float64 of the few bad).
        squared = np.einsum("ij,ij->i", vectors, vectors)
        suspect = np.flatnonzero(np.abs(squared - 1) > 1.9e-3)
        norms = np.sqrt(np.einsum("ij,ij->i", vectors[suspect].astype(np.float64), vectors[suspect]))
        bad = norms[np.abs(norms - 1) > 1e-3]
        if len(bad):
            raise ValueError(
                f"{len(bad)} vectors are not L2-normalized (norm {bad[0]:.4f}): normalize them "
                "before indexing, inner product is cosine only on unit vectors"
            )
    return ranks.astype(np.int64, copy=False), np.ascontiguousarray(vectors)


@dataclass
class ShardResult:
    """One shard's answer for one batch of queries."""

    pairs_a: np.ndarray  # int64 query rank (the lower one)
    pairs_b: np.ndarray  # int64 neighbour rank
    pairs_sim: np.ndarray  # float32, recomputed, >= record threshold
    query_ranks: np.ndarray  # int64 [q]: the queries answered
    best_rank: np.ndarray  # int64 [q]: best other row in this shard, -1 if none
    best_sim: np.ndarray  # float32 [q]: its similarity, NaN if none
    researched: np.ndarray  # int64 ranks of the queries that hit the bound in this shard

    @classmethod
    def nothing_found(cls, query_ranks: np.ndarray) -> ShardResult:
        q = len(query_ranks)
        empty = np.empty(0, dtype=np.int64)
        return cls(
            empty, empty, np.empty(0, np.float32), query_ranks,
            np.full(q, -1, np.int64), np.full(q, np.nan, np.float32), empty,
        )


@dataclass
class Neighbors:
    pairs_a: np.ndarray  # int64 ranks, a < b, sorted by (a, b)
    pairs_b: np.ndarray
    pairs_sim: np.ndarray  # float32, recomputed (pair_similarity), >= record threshold
    best_rank: np.ndarray  # int64 [n]: each row's best OTHER neighbour (-1 if none: n == 1, or IVF probed nothing)
    best_sim: np.ndarray  # float32 [n]; NaN where best_rank == -1
    researched: int  # queries that hit max_neighbors in some shard (depends on the shard count: a counter)


class _Centroids:
    """Deterministic coarse assignment for a shared IVF quantizer: top-m lists by inner product.

    float32 scores (numpy matmul) select candidates; every list within `margin` of the m-th is re-scored with
    `pair_similarity` (a function of the two vectors only) and the top m are taken by (score desc, list id
    asc). So the lists do not depend on which rows share a batch (FAISS's own assignment does, in near-ties).
    Returned sorted by list id.
    """

    def __init__(self, centroids: np.ndarray, margin: np.float32):
        self.c32 = np.ascontiguousarray(centroids, dtype=np.float32)
        self.nlist = len(self.c32)
        self.margin = margin
        # Candidate lists come from FAISS's own top-k over the centroids (BLAS scores and a heap: about 3x
        # faster than numpy's matmul + argpartition here). Any float32 scores within margin/2 of the exact
        # ones give the same result below, since every close call is re-decided exactly.
        self._flat = _faiss().IndexFlatIP(self.c32.shape[1])
        self._flat.add(self.c32)

    def top(self, x: np.ndarray, m: int) -> np.ndarray:
        return self.top_and_first(x, m)[0]

    def top_and_first(self, x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """top(x, m), and each row's top(x, 1) from the same scores (what an add needs, for free)."""
        m = min(m, self.nlist)
        out = np.empty((len(x), m), dtype=np.int64)
        first = np.empty(len(x), dtype=np.int64)
        step = max(256, _COARSE_SCORES // self.nlist)
        for start in range(0, len(x), step):
            out[start:start + step], first[start:start + step] = self._top(x[start:start + step], m)
        return out, first

    def _top(self, x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        n, nlist, margin = len(x), self.nlist, self.margin
        if m == nlist and m > 1:
            return np.tile(np.arange(nlist, dtype=np.int64), (n, 1)), self._top(x, 1)[1]
        width = min(nlist, m + _COARSE_EXTRA)
        if width < nlist:
            cand_scores, cand = self._flat.search(np.ascontiguousarray(x, dtype=np.float32), width)  # best first
        else:
            scores = x @ self.c32.T
            cand = np.tile(np.arange(nlist, dtype=np.int64), (n, 1))
            order = np.argsort(-scores, axis=1, kind="stable")
            cand = np.take_along_axis(cand, order, axis=1)
            cand_scores = np.take_along_axis(scores, order, axis=1)
        # The first list: the best float32 score when the runner-up is more than `margin` behind (both are
        # within margin/2 of exact); otherwise a close call, decided as top(x, 1) decides it (rare).
        first = cand[:, 0].copy()
        if m > 1:  # (m == 1: the result below is the first)
            close_first = np.flatnonzero(cand_scores[:, 1] >= cand_scores[:, 0] - margin)
            if len(close_first):
                first[close_first] = self._top(x[close_first], 1)[1]
        mth = cand_scores[:, m - 1 : m]
        # float32 scores are within margin/2 of the exact ones: lists more than `margin` above the m-th
        # are in for sure; lists within `margin` of it are re-decided with pair_similarity.
        sure = cand_scores > mth + margin
        close = ~sure & (cand_scores >= mth - margin)
        # If even the last candidate is a close call, lists outside `cand` may be too: re-score all (rare).
        wide = close[:, -1] if width < nlist else np.zeros(n, dtype=bool)
        chosen = sure & ~wide[:, None]
        rows, pos = np.nonzero(close & ~wide[:, None])
        ids = cand[rows, pos]
        exact = pair_similarity(x[rows], self.c32[ids])
        order = np.lexsort((ids, -exact, rows))
        rows, pos = rows[order], pos[order]
        place = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        free = m - sure.sum(axis=1)
        pick = place < free[rows]
        chosen[rows[pick], pos[pick]] = True
        result = np.empty((n, m), dtype=np.int64)
        narrow = np.flatnonzero(~wide)
        result[narrow] = cand[narrow][chosen[narrow]].reshape(len(narrow), m)
        for row in np.flatnonzero(wide):
            exact = pair_similarity(np.broadcast_to(x[row], self.c32.shape), self.c32)
            result[row] = np.lexsort((np.arange(nlist), -exact))[:m]
        if m == 1:
            first = result[:, 0]
        return np.sort(result, axis=1), first


def train_quantizer(sample: np.ndarray, nlist: int, seed: int = 0) -> bytes:
    """Train an empty IndexIVFFlat (inner product, spherical k-means) on `sample`; faiss.serialize_index bytes.

    Trained once and shared by every shard (docs/notes.md), so all shards partition the space identically.
    """
    if len(sample) == 0:
        raise ValueError("the IVF training sample is empty")
    sample = _check_batch(np.zeros(len(sample), np.int64), np.asarray(sample), np.asarray(sample).shape[1])[1]
    if not isinstance(nlist, int) or not 1 <= nlist <= len(sample):
        raise ValueError(f"nlist must be in [1, {len(sample)}] (one training vector per list at least), got {nlist}")
    dim = sample.shape[1]
    quantizer = _faiss().IndexFlatIP(dim)
    index = _faiss().IndexIVFFlat(quantizer, dim, nlist, _faiss().METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.spherical = True  # unit centroids: inner product to a centroid is a cosine
    index.train(sample)
    return _faiss().serialize_index(index).tobytes()


def train_from_stream(
    batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], n: int, dim: int, nlist: int, omp_threads: int = 0
) -> bytes:
    """Gather the training sample from one pass over `batches()` (by rank: `training_sample_ranks`) and train
    the quantizer; search_with_ray runs it as a Ray task. `omp_threads` as in IndexShard (0: the node's cores,
    since Ray sets OMP_NUM_THREADS=1 in a fractional task)."""
    _faiss().omp_set_num_threads(_resolve_threads(omp_threads, 1))
    want = training_sample_ranks(n, nlist)
    got_r, got_v = [], []
    for r, v in batches():
        r, v = _check_batch(r, v, dim)
        mask = np.isin(r, want)
        got_r.append(r[mask])
        got_v.append(v[mask])
    got_r = np.concatenate(got_r) if got_r else np.empty(0, np.int64)
    if not np.array_equal(np.sort(got_r), want):
        raise ValueError("batches() did not yield every training-sample rank exactly once")
    sample = np.concatenate(got_v)[np.argsort(got_r)]
    del got_v
    return train_quantizer(sample, nlist)


class CoarseAssigner:
    """The IVF coarse assignment of a trained quantizer, computed once per batch for every shard.

    Each shard would otherwise score every query batch against every centroid itself: S times the same work
    (at nlist ~ 4*sqrt(n), as much as the search itself). The assignment is a function of the vector and the
    centroids only (`_Centroids`), so computing it once and handing it to every shard changes nothing.
    """

    def __init__(self, trained: bytes, nprobe: int):
        index = _faiss().deserialize_index(np.frombuffer(trained, dtype=np.uint8))
        quantizer = _faiss().downcast_index(index.quantizer)
        centroids = _faiss().rev_swig_ptr(quantizer.get_xb(), index.nlist * index.d).reshape(index.nlist, index.d)
        self._centroids = _Centroids(centroids.copy(), _margin(index.d))
        self.nprobe = min(nprobe, index.nlist)

    def lists(self, vectors: np.ndarray) -> np.ndarray:
        """[n, 1] the list each vector is added to."""
        return self._centroids.top(np.asarray(vectors, dtype=np.float32), 1)

    def probes(self, queries: np.ndarray) -> np.ndarray:
        """[n, nprobe] the lists each query probes, sorted by list id."""
        return self._centroids.top(np.asarray(queries, dtype=np.float32), self.nprobe)

    def lists_and_probes(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`lists(vectors)` and `probes(vectors)` from one scoring pass (half the work of both)."""
        probes, first = self._centroids.top_and_first(np.asarray(vectors, dtype=np.float32), self.nprobe)
        return first[:, None], probes


def _check_assignment(assignment: np.ndarray, rows: int, width: int, nlist: int) -> np.ndarray:
    assignment = np.asarray(assignment)
    if assignment.shape != (rows, width) or not np.issubdtype(assignment.dtype, np.integer):
        raise ValueError(f"IVF list assignment must be an integer array of shape {(rows, width)}, got "
                         f"{assignment.dtype} {assignment.shape}")
    if rows and (assignment.min() < 0 or assignment.max() >= nlist):
        raise ValueError(f"IVF list ids must be in [0, {nlist})")
    return assignment.astype(np.int64, copy=False)


def _resolve_threads(omp_threads: int, shards: int) -> int:
    if omp_threads > 0:
        return omp_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // shards)


class IndexShard:
    """One shard of the index: the rows with `rank % config.shards == shard_id`.

    A plain class (the Ray job wraps it with `ray.remote`). `add` may receive whole batches: the shard keeps
    its own rows. `omp_threads`: None leaves FAISS's thread count alone; 0 means this node's cores / shards
    (Ray sets OMP_NUM_THREADS=1 for fractional actors, docs/notes.md); > 0 is used as given.
    """

    def __init__(
        self,
        config: IndexConfig,
        dim: int,
        trained: bytes | None = None,
        *,
        shard_id: int = 0,
        omp_threads: int | None = None,
    ):
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not 0 <= shard_id < config.shards:
            raise ValueError(f"shard_id must be in [0, {config.shards}), got {shard_id}")
        if omp_threads is not None:
            _faiss().omp_set_num_threads(_resolve_threads(omp_threads, config.shards))
        if config.kind == "auto":
            raise ValueError("IndexShard needs a decided kind: pass config.resolved(n) (auto picks flat or ivf by size)")
        if config.gpu and _faiss().get_num_gpus() < 1:
            raise RuntimeError("IndexConfig.gpu is set but FAISS sees no GPU: install faiss-gpu or use gpu=False")
        self.config = config
        self.dim = int(dim)
        self.shard_id = shard_id
        self.margin = _margin(self.dim)
        self._ranks: list[np.ndarray] = []
        self._vectors: list[np.ndarray] = []  # ivf only: FAISS keeps IVF codes by list
        self._sealed: tuple[np.ndarray, np.ndarray] | None = None
        self._by_list: _ListViews | None = None  # ivf: the inverted lists as numpy views (`_list_views`)
        self._gpu_index = None
        self._gpu_resources = None
        if config.kind == "flat":
            if trained is not None:
                raise ValueError("a flat shard takes no trained quantizer (trained=None)")
            self._index = _faiss().IndexFlatIP(self.dim)
            self._centroids = None
        else:
            if trained is None:
                raise ValueError("an ivf shard needs the shared trained quantizer: pass train_quantizer(...)")
            index = _faiss().deserialize_index(np.frombuffer(trained, dtype=np.uint8))  # owned, already downcast
            if not isinstance(index, _faiss().IndexIVFFlat) or index.metric_type != _faiss().METRIC_INNER_PRODUCT:
                raise ValueError("trained must be an inner-product IndexIVFFlat from train_quantizer()")
            if index.d != self.dim or not index.is_trained or index.ntotal != 0:
                raise ValueError(f"trained quantizer has d={index.d}, ntotal={index.ntotal}; need d={dim}, empty")
            index.nprobe = min(config.nprobe, index.nlist)
            quantizer = _faiss().downcast_index(index.quantizer)
            centroids = _faiss().rev_swig_ptr(quantizer.get_xb(), index.nlist * self.dim).reshape(index.nlist, self.dim)
            self._centroids = _Centroids(centroids.copy(), self.margin)
            self._index = index

    def size(self) -> int:
        return int(self._index.ntotal)

    def add(self, ranks: np.ndarray, vectors: np.ndarray, lists: np.ndarray | None = None) -> int:
        """Add this shard's rows of the batch; returns how many it kept. ivf: `lists` is each row's list
        (`CoarseAssigner.lists`, computed once for every shard), computed here when None."""
        ranks, vectors = _check_batch(ranks, vectors, self.dim)
        mine = ranks % self.config.shards == self.shard_id
        ranks, vectors = ranks[mine], vectors[mine]
        if len(ranks) == 0:
            return 0
        if self._centroids is None:
            self._index.add(vectors)
        else:
            if lists is None:
                lists = self._centroids.top(vectors, 1)[:, 0]
            else:
                lists = _check_assignment(lists, len(mine), 1, self._centroids.nlist).reshape(-1)[mine]
            lists = np.ascontiguousarray(lists, dtype=np.int64)
            ids = np.arange(self._index.ntotal, self._index.ntotal + len(ranks), dtype=np.int64)
            _ivf_tools().add_preassigned(self._index, vectors, lists, ids)
            self._vectors.append(vectors)
        self._ranks.append(ranks)
        self._sealed = None
        self._by_list = None
        self._gpu_index = None
        return len(ranks)

    def _storage(self) -> tuple[np.ndarray, np.ndarray]:
        """(rank, vector) of every row of the shard, by FAISS id."""
        if self._sealed is None:
            ranks = np.concatenate(self._ranks) if self._ranks else np.empty(0, np.int64)
            if self._centroids is None:
                # The flat index's own storage, no copy; valid until the next add (which unseals).
                n = self._index.ntotal
                vectors = _faiss().rev_swig_ptr(self._index.get_xb(), n * self.dim).reshape(n, self.dim)
            else:
                vectors = np.concatenate(self._vectors) if self._vectors else np.empty((0, self.dim), np.float32)
                self._vectors = [vectors]
            self._ranks = [ranks]
            self._sealed = (ranks, vectors)
        return self._sealed

    def _knn(self, q: np.ndarray, k: int, probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if probes is not None:
            # parallel_mode 0 (FAISS's default) runs preassigned k-NN on one thread; 3 splits the queries over
            # the threads (1.6x faster here, docs/notes.md). Range search rejects 3, so each call sets its own.
            self._index.parallel_mode = _KNN_PARALLEL_MODE
            return _ivf_tools().search_preassigned(self._index, q, k, probes)
        if self.config.gpu:
            if self._gpu_index is None:
                self._gpu_resources = _faiss().StandardGpuResources()
                self._gpu_index = _faiss().index_cpu_to_gpu(self._gpu_resources, 0, self._index)
            return self._gpu_index.search(q, k)
        return self._index.search(q, k)

    def _range(self, q: np.ndarray, radius: float, probes: np.ndarray | None):
        # Always the CPU index: GPU flat has no range search (docs/notes.md).
        if probes is not None:
            self._index.parallel_mode = _RANGE_PARALLEL_MODE
            return _ivf_tools().range_search_preassigned(self._index, q, float(radius), probes)
        return self._index.range_search(q, float(radius))

    def _knn_candidates(self, qr, q, ranks, probes, radius, k, bound):
        """Each query's k-NN, and a range search at `need` for the queries whose k-th neighbour is at or
        above it (they hit the bound: more may tie or pass the threshold)."""
        margin = self.margin
        dist, ids = self._knn(q, k, probes)
        valid = ids >= 0
        is_self = valid & (ranks[np.where(valid, ids, 0)] == qr[:, None])
        top = np.where(valid & ~is_self, dist, -np.inf).max(axis=1)
        # Everything at or above `need` must be seen: pairs (>= radius) and near-ties of the best.
        need = np.minimum(radius, top - margin)
        hit = (k == bound) & valid[:, -1] & (dist[:, -1] >= need)

        rows, cols = np.nonzero(valid & ~hit[:, None])
        cand_q, cand_id, cand_f = [rows], [ids[rows, cols]], [dist[rows, cols]]
        hit_rows = np.flatnonzero(hit)
        if len(hit_rows):
            common = hit_rows[need[hit_rows] >= radius]  # need == radius: one range search for all
            groups = [(common, radius)] if len(common) else []
            # Tie groups below the record threshold (rare): one range search per 0.01 band of `need`, at
            # the band's lowest need; the few extra results below a query's own need are never used.
            ties = hit_rows[need[hit_rows] < radius]
            band = np.floor(need[ties] / 0.01)
            groups += [(ties[band == b], need[ties[band == b]].min()) for b in np.unique(band)]
            for sub, r in groups:
                lims, d, i = self._range(q[sub], r, None if probes is None else probes[sub])
                cand_q.append(np.repeat(sub, np.diff(lims.astype(np.int64))))
                cand_id.append(i)
                cand_f.append(d)
        cand_q = np.concatenate(cand_q)
        cand_id = np.concatenate(cand_id).astype(np.int64, copy=False)
        cand_f = np.concatenate(cand_f)
        return cand_q, cand_id, cand_f, hit_rows

    def _list_candidates(self, qr, q, probes, radius, k, bound):
        """ivf, list by list: every probed list's vectors against all the batch's queries that probe it in one
        BLAS product (a list is read once per call, not once per query as in FAISS's scan: 4.6x faster at
        1M rows here, docs/notes.md). Keeps, per query and list, what the k-NN + range path would use:
        similarities >= radius and those within `margin` of the list's best non-self one; the hit test
        counts the same way (k-th largest similarity, self included, >= need)."""
        views = self._list_views()
        margin, floor = self.margin, np.float32(-2.0)  # cosines are >= -1: -inf (self) stays below floor
        n = len(qr)
        own = views.position_of(qr)  # FAISS id of each query's own row in this shard, -1 if elsewhere
        own_list = np.where(own >= 0, views.list_of_id[np.maximum(own, 0)], -1)
        own_pos = np.where(own >= 0, views.pos_of_id[np.maximum(own, 0)], -1)
        self_f = np.full(n, -np.inf, np.float32)
        width = probes.shape[1]
        by_list = np.argsort(probes.reshape(-1), kind="stable")
        probe_q = by_list // width
        probe_l = probes.reshape(-1)[by_list]
        starts = np.flatnonzero(np.r_[True, probe_l[1:] != probe_l[:-1]]) if len(probe_l) else probe_l
        stops = np.r_[starts[1:], len(probe_l)]

        def scan(part: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            found = []
            for a, b in part:
                lst = int(probe_l[a])
                ids, vecs = views.ids[lst], views.vectors[lst]
                if ids is None:
                    continue
                qs = probe_q[a:b]
                sims = q[qs] @ vecs.T
                mine = np.flatnonzero(own_list[qs] == lst)
                if len(mine):  # a query probes its own list once: each self_f entry has one writer
                    cols = own_pos[qs[mine]]
                    self_f[qs[mine]] = sims[mine, cols]
                    sims[mine, cols] = -np.inf
                keep_from = np.maximum(np.minimum(radius, sims.max(axis=1) - margin), floor)
                rows, cols = np.nonzero(sims >= keep_from[:, None])
                found.append((qs[rows], ids[cols], sims[rows, cols]))
            return found

        # The lists are split over the shard's FAISS threads, each running one-thread BLAS (numpy's loops
        # release the GIL; two threads each asking OpenBLAS for both cores were slower than one thread, 2
        # threads of 1-thread BLAS 1.9x faster, docs/notes.md). Interleaved: every part gets lists of every
        # size. The candidates' order does not matter (everything below is decided per pair, exactly).
        segments = list(zip(starts.tolist(), stops.tolist()))
        threads = max(1, min(_faiss().omp_get_max_threads(), len(segments)))
        if threads == 1:
            found = scan(segments)
        else:
            with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
                found = [f for part in pool.map(scan, [segments[i::threads] for i in range(threads)]) for f in part]
        cand_q = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
        cand_id = np.concatenate([f[1] for f in found]).astype(np.int64, copy=False) if found else np.empty(0, np.int64)
        cand_f = np.concatenate([f[2] for f in found]) if found else np.empty(0, np.float32)
        top = np.full(n, -np.inf, np.float32)
        np.maximum.at(top, cand_q, cand_f)
        need = np.minimum(radius, top - margin)
        at_need = np.bincount(cand_q[cand_f >= need[cand_q]], minlength=n) + (self_f >= need)
        hit_rows = np.flatnonzero((k == bound) & (at_need >= k))
        return cand_q, cand_id, cand_f, hit_rows

    def _list_views(self) -> _ListViews:
        if self._by_list is None:
            self._by_list = _ListViews.of(self._index, self._storage()[0])
        return self._by_list

    def search(
        self, query_ranks: np.ndarray, queries: np.ndarray, record_threshold: float, probes: np.ndarray | None = None
    ) -> ShardResult:
        """Best other neighbour of each query in this shard, and its pairs >= record_threshold (query rank lower).

        ivf: `probes` are the lists each query probes (`CoarseAssigner.probes`, computed once per batch for every
        shard: the assignment is the same function everywhere), computed here when None."""
        qr, q = _check_batch(query_ranks, queries, self.dim)
        t = _check_threshold(record_threshold, "record_threshold")
        ranks, base = self._storage()
        if len(qr) == 0 or len(ranks) == 0:
            return ShardResult.nothing_found(qr)
        margin = self.margin
        radius = np.float32(t - margin)
        bound = self.config.max_neighbors + 1
        k = min(bound, len(ranks))
        if self._centroids is None:
            probes = None
        elif probes is None:
            probes = self._centroids.top(q, self._index.nprobe)
        else:
            probes = _check_assignment(probes, len(qr), min(self._index.nprobe, self._centroids.nlist),
                                       self._centroids.nlist)

        if probes is None or not _SCAN_BY_LIST:
            cand_q, cand_id, cand_f, hit_rows = self._knn_candidates(qr, q, ranks, probes, radius, k, bound)
        else:
            cand_q, cand_id, cand_f, hit_rows = self._list_candidates(qr, q, probes, radius, k, bound)

        nb = ranks[cand_id]
        other = nb != qr[cand_q]
        cand_q, cand_id, cand_f, nb = cand_q[other], cand_id[other], cand_f[other], nb[other]
        best_f = np.full(len(qr), -np.inf, dtype=np.float32)
        np.maximum.at(best_f, cand_q, cand_f)
        want_pair = (cand_f >= radius) & (qr[cand_q] < nb)
        want_best = cand_f >= best_f[cand_q] - margin
        sel = np.flatnonzero(want_pair | want_best)
        sims = pair_similarity(q[cand_q[sel]], base[cand_id[sel]])

        keep = want_pair[sel] & (sims >= t)
        pairs_a, pairs_b, pairs_sim = qr[cand_q[sel[keep]]], nb[sel[keep]], sims[keep]

        bsel = want_best[sel]
        bq, bn, bs = cand_q[sel[bsel]], nb[sel[bsel]], sims[bsel]
        best_rank = np.full(len(qr), -1, np.int64)
        best_sim = np.full(len(qr), np.nan, np.float32)
        first = _first_per_group(bq, bs, bn)
        best_rank[bq[first]] = bn[first]
        best_sim[bq[first]] = bs[first]
        return ShardResult(pairs_a, pairs_b, pairs_sim, qr, best_rank, best_sim, qr[hit_rows])


@dataclass
class _ListViews:
    """A sealed IVF shard's inverted lists as numpy views of FAISS's own storage (no copy; an add unseals)."""

    ids: list  # per list: int64 FAISS ids, None where the list is empty in this shard
    vectors: list  # per list: float32 [size, d] view of the stored vectors
    list_of_id: np.ndarray  # FAISS id -> its list
    pos_of_id: np.ndarray  # FAISS id -> its position in that list
    sorted_ranks: np.ndarray  # the shard's ranks, sorted
    id_of_sorted: np.ndarray  # their FAISS ids

    @classmethod
    def of(cls, index, ranks_by_id: np.ndarray) -> _ListViews:
        faiss, inv, dim = _faiss(), index.invlists, index.d
        ids, vectors = [], []
        list_of_id = np.empty(index.ntotal, np.int64)
        pos_of_id = np.empty(index.ntotal, np.int64)
        for lst in range(index.nlist):
            size = inv.list_size(lst)
            if size == 0:
                ids.append(None)
                vectors.append(None)
                continue
            # IVFFlat codes are the raw float32 vectors (code_size = 4 d).
            ids.append(faiss.rev_swig_ptr(inv.get_ids(lst), size))
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), size * index.code_size)
            vectors.append(codes.view(np.float32).reshape(size, dim))
            list_of_id[ids[-1]] = lst
            pos_of_id[ids[-1]] = np.arange(size)
        order = np.argsort(ranks_by_id, kind="stable")
        return cls(ids, vectors, list_of_id, pos_of_id, ranks_by_id[order], order)

    def position_of(self, query_ranks: np.ndarray) -> np.ndarray:
        """The FAISS id of each query rank held by this shard, -1 for the others."""
        at = np.searchsorted(self.sorted_ranks, query_ranks)
        at = np.minimum(at, len(self.sorted_ranks) - 1)
        held = self.sorted_ranks[at] == query_ranks
        return np.where(held, self.id_of_sorted[at], -1)


def _first_per_group(group: np.ndarray, sim: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Indices of the best entry per group: highest sim, ties to the lower rank."""
    if len(group) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((rank, -sim, group))
    g = group[order]
    return order[np.r_[True, g[1:] != g[:-1]]]


class NeighborMerge:
    """Shard results folded in as they arrive: pairs kept, best neighbours reduced at once.

    Holding every ShardResult until the end kept (query rank, best rank, best similarity) per query and shard on
    the driver: 80 MB at 1M rows and 4 shards, and as much again to concatenate them. Folded, the driver keeps
    one best per row (12 bytes) and the pairs. The rule is merge's: best = max similarity over shards, ties to
    the lower rank, so the fold's order does not matter."""

    def __init__(self, n: int):
        self.n = n
        self.pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.researched: list[np.ndarray] = []
        self.queried = np.zeros(n, dtype=bool)
        self.best_rank = np.full(n, -1, np.int64)
        self.best_sim = np.full(n, np.nan, np.float32)

    def add(self, result: ShardResult) -> None:
        if len(result.pairs_a):
            self.pairs.append((np.asarray(result.pairs_a, np.int64), np.asarray(result.pairs_b, np.int64),
                               np.asarray(result.pairs_sim, np.float32)))
        if len(result.researched):
            self.researched.append(np.asarray(result.researched, np.int64))
        q = np.asarray(result.query_ranks, np.int64)
        if len(q) and (q.min() < 0 or q.max() >= self.n):
            raise ValueError("shard results hold query ranks outside [0, n)")
        self.queried[q] = True
        found = result.best_rank >= 0
        q, br, bs = q[found], result.best_rank[found].astype(np.int64), result.best_sim[found].astype(np.float32)
        first = _first_per_group(q, bs, br)  # one best per query within this result
        q, br, bs = q[first], br[first], bs[first]
        held_rank, held_sim = self.best_rank[q], self.best_sim[q]
        better = (held_rank < 0) | (bs > held_sim) | ((bs == held_sim) & (br < held_rank))
        self.best_rank[q[better]] = br[better]
        self.best_sim[q[better]] = bs[better]

    def finish(self) -> Neighbors:
        """Pairs sorted by (a, b); checks that every rank was queried and no pair was found twice."""
        def cat(k: int, dtype) -> np.ndarray:
            return np.concatenate([np.empty(0, dtype), *(p[k] for p in self.pairs)])

        a, b, s = cat(0, np.int64), cat(1, np.int64), cat(2, np.float32)
        self.pairs = []
        if len(a) and (a.min() < 0 or b.max() >= self.n or np.any(a >= b)):
            raise ValueError("shard results hold pairs outside [0, n) or with a >= b")
        order = np.lexsort((b, a))
        a, b, s = a[order], b[order], s[order]
        if len(a) > 1 and np.any((a[1:] == a[:-1]) & (b[1:] == b[:-1])):
            raise ValueError("a pair was found twice: some rank was added to more than one shard")
        if not self.queried.all():
            raise ValueError(f"{int((~self.queried).sum())} of {self.n} ranks were never queried: every row must "
                             "be searched")
        researched = int(np.unique(np.concatenate([np.empty(0, np.int64), *self.researched])).size)
        return Neighbors(a, b, s, self.best_rank, self.best_sim, researched)


def merge(n: int, results: Iterable[ShardResult]) -> Neighbors:
    """Combine shard results: pairs sorted by (a, b), best = max sim over shards, ties to the lower rank."""
    merged = NeighborMerge(n)
    for result in results:
        merged.add(result)
    return merged.finish()


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError("ranks must be a 1-d integer array")
    if not np.array_equal(np.sort(ranks), np.arange(len(ranks))):
        raise ValueError("ranks must be a permutation of 0..n-1 (one rank per row)")
    return ranks.astype(np.int64, copy=False)


def search_in_process(
    ranks: np.ndarray,
    vectors: np.ndarray,
    config: IndexConfig,
    record_threshold: float,
    *,
    trained: bytes | None = None,
) -> Neighbors:
    """All shards in this process: the reference the Ray version must equal. ivf trains if `trained` is None."""
    ranks = _check_ranks(ranks)
    n = len(ranks)
    config = config.resolved(n)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array [n, d], got shape {vectors.shape}")
    dim = vectors.shape[1]
    ranks, vectors = _check_batch(ranks, vectors, dim)
    started = time.perf_counter()
    if config.kind == "ivf" and trained is None:
        position = np.empty(n, np.int64)
        position[ranks] = np.arange(n)
        nlist = config.resolved_nlist(n)
        trained = train_quantizer(vectors[position[training_sample_ranks(n, nlist)]], nlist)
    shards = [IndexShard(config, dim, trained, shard_id=s) for s in range(config.shards)]
    assigner = CoarseAssigner(trained, config.nprobe) if config.kind == "ivf" else None
    all_probes = []  # ivf: every row's probes, scored with its list in the add pass (all rows are here anyway)
    for start in range(0, n, QUERY_BATCH):
        batch = vectors[start:start + QUERY_BATCH]
        lists = None
        if assigner is not None:
            lists, probes = assigner.lists_and_probes(batch)
            all_probes.append(probes.astype(np.int32))
        for shard in shards:
            shard.add(ranks[start:start + QUERY_BATCH], batch, lists)
    all_probes = np.concatenate(all_probes) if all_probes else None
    results = []
    step = QUERY_BATCH if assigner is None else IVF_QUERY_BATCH
    for start in range(0, n, step):
        batch = vectors[start:start + step]
        probes = None if assigner is None else all_probes[start:start + step].astype(np.int64)
        for shard in shards:
            results.append(shard.search(ranks[start:start + step], batch, record_threshold, probes))
    neighbors = merge(n, results)
    logger.info(
        "%s index, %d shards, %d rows: %d pairs >= %.4f, %d queries re-searched, %.1f s",
        config.kind, config.shards, n, len(neighbors.pairs_a), record_threshold, neighbors.researched,
        time.perf_counter() - started,
    )
    return neighbors


def _regrouped(batches: Iterable[tuple[np.ndarray, np.ndarray]], rows: int):
    """(ranks, vectors) batches regrouped into batches of exactly `rows` rows (the last may be smaller).

    Filled into one buffer, reused: each yielded pair is only valid until the next is asked for (the caller,
    `BatchFeeder.next`, `ray.put`s it first). Holding the incoming batches and concatenating them held every
    query row twice (2 x 50 MB at 32,768 x 384 floats)."""
    buffer_r: np.ndarray | None = None
    buffer_v: np.ndarray | None = None
    count = 0
    for r, v in batches:
        r, v = np.asarray(r), np.asarray(v)
        if buffer_v is None:
            buffer_r = np.empty(rows, r.dtype)
            buffer_v = np.empty((rows, *v.shape[1:]), v.dtype)
        start = 0
        while start < len(r):
            take = min(rows - count, len(r) - start)
            buffer_r[count:count + take] = r[start:start + take]
            buffer_v[count:count + take] = v[start:start + take]
            count, start = count + take, start + take
            if count == rows:
                yield buffer_r, buffer_v
                count = 0
    if count:
        yield buffer_r[:count], buffer_v[:count]


class BatchFeeder:
    """The reading side of `search_with_ray`, run as a Ray actor: it reads `batches()`, computes the IVF coarse
    assignment (`CoarseAssigner`), and puts each batch in the object store once, for every shard.

    The driver only forwards the references. When it read and put the batches itself, it held each batch
    (50 MB per IVF query call) and mapped every object-store page it wrote: at 1M rows its RSS grew by
    ~230 MB of object-store pages alone (benchmarks/driver_memory.py), growing with the rows."""

    def __init__(self, batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], dim: int,
                 trained: bytes | None, nprobe: int, omp_threads: int = 0):
        # Ray sets OMP_NUM_THREADS=1 in an actor, which FAISS's OpenMP and both BLAS libraries (numpy's, FAISS's)
        # follow: the coarse assignment's top-k ran at half speed on 2 cores. The assignment does not depend on
        # thread counts (`_Centroids` re-decides every close call exactly).
        threads = _resolve_threads(omp_threads, 1)
        _faiss().omp_set_num_threads(threads)
        self._blas_threads = threadpool_limits(limits=threads)
        self.batches, self.dim = batches, dim
        self.assigner = CoarseAssigner(trained, nprobe) if trained is not None else None
        self._phase, self._pending = "add", iter(())

    def start(self, phase: str, rows_per_batch: int = 0) -> None:
        """Begin a pass over `batches()`: "add" (each batch with its lists) or "search" (with its probes),
        regrouped into `rows_per_batch`-row batches when given."""
        batches = iter(self.batches())  # a list as well as a generator: `next` takes one item per call
        self._phase, self._pending = phase, _regrouped(batches, rows_per_batch) if rows_per_batch else batches

    def next(self):
        """(rows, ranks ref, vectors ref, lists or probes ref or None) of the next batch; None at the end."""
        import ray

        batch = next(self._pending, None)
        if batch is None:
            return None
        r, v = _check_batch(*batch, self.dim)
        assignment = None
        if self.assigner is not None:
            assignment = ray.put(self.assigner.lists(v) if self._phase == "add" else self.assigner.probes(v))
        return len(r), ray.put(r), ray.put(v), assignment


def _fed(feeder, phase: str, rows_per_batch: int = 0):
    """The feeder's batches as (rows, refs...), the next one asked for before the caller works on this one
    (an actor runs its calls in order, so it reads and assigns while the shards search)."""
    import ray

    feeder.start.remote(phase, rows_per_batch)
    upcoming = feeder.next.remote()
    while True:
        item = ray.get(upcoming)
        if item is None:
            return
        upcoming = feeder.next.remote()
        yield item


def search_with_ray(
    batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    n: int,
    dim: int,
    config: IndexConfig,
    record_threshold: float,
    actor_options: dict,
    *,
    trained: bytes | None = None,
    omp_threads: int = 0,
    max_in_flight: int = 4,
    start_timeout_s: float = 300.0,
    on_progress: Callable[[int], None] | None = None,
) -> Neighbors:
    """The same search with one Ray actor per shard; vectors streamed from `batches()`.

    `batches()` yields (ranks, vectors) covering ranks 0..n-1 once; it is called twice (add, then query) by a
    `BatchFeeder` actor, and once more first for ivf when `trained` is None, in a Ray task that gathers the
    training sample (by rank, so the quantizer does not depend on batching) and trains (`train_from_stream`):
    `batches` must pickle. Each batch is put in the object store once and sent to every shard, which keeps its
    own rows; at most `max_in_flight` batches are in flight, and the driver holds only their references and
    the results (the pair list, one best neighbour per row); ivf queries go in IVF_QUERY_BATCH-row calls, one
    queued behind the one running. `actor_options` must set `num_cpus` (fractional: four 1-CPU actors never
    schedule on 2 cores, docs/notes.md); `omp_threads` as in IndexShard (0: node cores / shards).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "num_cpus" not in actor_options:
        raise ValueError(
            "actor_options must set num_cpus (e.g. 0.25): Ray's default reserves 1 CPU per actor and "
            "S shard actors would not schedule on a small node (docs/notes.md, 'Ray Data 2.60')"
        )
    t = _check_threshold(record_threshold, "record_threshold")
    config = config.resolved(n, gpu_available=config.gpu)
    started = time.perf_counter()
    if config.kind == "ivf" and trained is None:
        # In a task, not here: the sample is 64 * nlist vectors (~370 MB at 1M rows) and k-means works on a
        # copy; the driver receives only the trained quantizer (~6 MB), whatever the sample's size.
        train = ray.remote(train_from_stream).options(num_cpus=actor_options["num_cpus"])
        trained = ray.get(train.remote(batches, n, dim, config.resolved_nlist(n), omp_threads))

    shard_cls = ray.remote(IndexShard)
    actors = [
        shard_cls.options(**actor_options).remote(
            config, dim, trained, shard_id=s, omp_threads=omp_threads
        )
        for s in range(config.shards)
    ]
    # No CPU reserved: it does the reading and the coarse assignment the driver did before, beside the shards
    # (which reserve the node's cores); on the driver's node, where the driver read.
    feeder = ray.remote(BatchFeeder).options(
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True),
    ).remote(batches, dim, trained if config.kind == "ivf" else None, config.nprobe, omp_threads)
    try:
        try:
            ray.get([actor.size.remote() for actor in actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"{config.shards} index shard actors with {actor_options} did not start in {start_timeout_s:.0f} s: "
                "the cluster lacks the resources (lower num_cpus / num_gpus per shard)"
            ) from None

        added, queried = 0, 0
        pending: list = []
        # ivf: the coarse assignment is computed once per batch by the feeder and sent to every shard.
        for _rows, r_ref, v_ref, lists in _fed(feeder, "add", FEED_BATCH):
            pending.append([actor.add.remote(r_ref, v_ref, lists) for actor in actors])
            if len(pending) > max_in_flight:
                added += sum(ray.get(pending.pop(0)))
        for refs in pending:
            added += sum(ray.get(refs))
        if added != n:
            raise ValueError(f"batches() yielded {added} rows to index, expected n={n}")

        merged = NeighborMerge(n)  # folded as results arrive (its docstring says why)
        pending = []
        query_batch = FEED_BATCH
        if config.kind == "ivf":  # bigger calls (IVF_QUERY_BATCH), about as many rows in flight
            query_batch, max_in_flight = IVF_QUERY_BATCH, 1
        for rows, r_ref, v_ref, probes in _fed(feeder, "search", query_batch):
            queried += rows
            pending.append([actor.search.remote(r_ref, v_ref, float(t), probes) for actor in actors])
            if len(pending) > max_in_flight:
                done = ray.get(pending.pop(0))
                for result in done:
                    merged.add(result)
                if on_progress is not None:  # queries searched against every shard
                    on_progress(len(done[0].query_ranks))
        for refs in pending:
            done = ray.get(refs)
            for result in done:
                merged.add(result)
            if on_progress is not None:
                on_progress(len(done[0].query_ranks))
        if queried != n:
            raise ValueError(f"batches() yielded {queried} query rows on the second call, expected n={n}")
    finally:
        for actor in [*actors, feeder]:
            ray.kill(actor)
    neighbors = merged.finish()
    logger.info(
        "%s index on Ray, %d shard actors, %d rows: %d pairs >= %.4f, %d queries re-searched, %.1f s",
        config.kind, config.shards, n, len(neighbors.pairs_a), record_threshold, neighbors.researched,
        time.perf_counter() - started,
    )
    return neighbors
