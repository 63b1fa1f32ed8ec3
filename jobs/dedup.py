"""Near-duplicate removal, the driver side: exact dedup -> embed (actor pool) -> vectors checkpoint ->
sharded index -> cross-shard search -> keep rule -> decisions.

What the driver holds (docs/architecture.md, "Resources"): for every kept row its id, exact key and priority
columns (about 100 bytes a row), the representatives' ids, and the pair list. Texts and vectors stay
in Ray's object store and in `_work/` (candidates/, vectors/<key>/), streamed in batches.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from jobs import progress
from jobs.resources import IO_TASK_CPUS, largest_node_cpus, plan_embed, plan_index_cpus
from operators import schema
from operators.embed import CUT, VECTOR, WINDOWS
from operators.exact_dedup import (
    CANDIDATE_SCHEMA,
    DEDUP_KEY,
    DEDUP_TEXT,
    TEXT_SHA1,
    candidates,
    exact_groups,
    priority_order,
)
from operators.index import Neighbors, pair_similarity, search_with_ray
from operators.resolve import resolve_greedy, resolve_none
from jobs.vectors import EmbedToStore, VectorStore, settings_key, settings_of
from operators.write import NEIGHBORS_DIR, WORK_DIR, Output, read_checkpoint

logger = logging.getLogger(__name__)

CANDIDATES_DIR = "candidates"
SEARCH_BATCH = 8192
# Pairs this close to the threshold may decide differently between runs whose vectors differ in the
# last bits (batch composition, docs/notes.md); the manifest counts them.
NEAR_THRESHOLD = 1e-6
RECALL_SAMPLE = 1000
NEIGHBOR_SHARD_ROWS = 1_000_000

DECISION_SCHEMA = pa.schema(
    [
        pa.field(schema.ID, pa.string()),
        pa.field(schema.REASON, pa.string()),
        pa.field(schema.DETAIL, pa.string()),
        pa.field(schema.DUPLICATE_OF, pa.string()),
        pa.field(schema.SIMILARITY, pa.float32()),
    ]
)
PAIRS_SCHEMA = pa.schema(
    [pa.field("id_a", pa.string()), pa.field("id_b", pa.string()), pa.field(schema.SIMILARITY, pa.float32())]
)
BEST_SCHEMA = pa.schema(
    [pa.field(schema.ID, pa.string()), pa.field("best_id", pa.string()), pa.field("best_similarity", pa.float32())]
)
NARROW_COLUMNS = [schema.ID, schema.SOURCE, schema.SOURCE_ROW, schema.RESPONSE_TOKENS, DEDUP_KEY, TEXT_SHA1]


@dataclass
class CandidatePlan:
    """Kept rows in priority order, and their exact-duplicate groups."""

    ids: pa.Array  # [n] ids in rank order
    group_rep: np.ndarray  # [n] rank of each row's exact-group representative
    rep_ids: pa.Array  # [m] representatives' ids in rank order: the rows that are embedded
    rep_index: np.ndarray  # [n] index into rep_ids of each row's representative
    text_sha1: pa.Array  # [n] in rank order

    @property
    def is_rep(self) -> np.ndarray:
        return self.group_rep == np.arange(len(self.group_rep))

    @property
    def rep_sha1(self) -> pa.Array:
        """text_sha1 of the representatives, in rank order: the keys of their vectors in the store."""
        return self.text_sha1.filter(pa.array(self.is_rep))


def plan_candidates(table: pa.Table, keep: str) -> CandidatePlan:
    ranked = table.take(priority_order(table, keep))
    group_rep = exact_groups(ranked.column(DEDUP_KEY).to_numpy(zero_copy_only=False))
    is_rep = group_rep == np.arange(len(group_rep))
    rep_position = np.cumsum(is_rep) - 1
    return CandidatePlan(
        ids=ranked.column(schema.ID).combine_chunks(),
        group_rep=group_rep,
        rep_ids=ranked.column(schema.ID).filter(pa.array(is_rep)).combine_chunks(),
        rep_index=rep_position[group_rep],
        text_sha1=ranked.column(TEXT_SHA1).combine_chunks(),
    )


def build_candidates(config, output: Output, rows: tuple[Output, tuple[str, ...]]) -> None:
    """Ray stage: kept rows -> (id, priority columns, dedup text, exact key) under _work/candidates/."""
    output.delete_dir(WORK_DIR, CANDIDATES_DIR)
    columns = [schema.ID, schema.SOURCE, schema.SOURCE_ROW, schema.STATUS, schema.MESSAGES, schema.RESPONSE_TOKENS]
    read_checkpoint(*rows, columns, empty=schema.WORK_SCHEMA).map_batches(
        candidates, fn_kwargs={"dedup_on": config.dedup.dedup_on}, batch_format="pyarrow", num_cpus=IO_TASK_CPUS
    ).write_parquet(output.child_uri(WORK_DIR, CANDIDATES_DIR), ray_remote_args={"num_cpus": IO_TASK_CPUS})


def load_candidate_keys(output: Output) -> pa.Table:
    """The narrow candidate columns (no text) on the driver: about 100 bytes a row."""
    ds = read_checkpoint(output, (WORK_DIR, CANDIDATES_DIR), NARROW_COLUMNS, empty=CANDIDATE_SCHEMA)
    tables = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    if not tables:
        return pa.schema([CANDIDATE_SCHEMA.field(name) for name in NARROW_COLUMNS]).empty_table()
    return pa.concat_tables(tables)


def _only_ids(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch.column(schema.ID), value_set=wanted))


@dataclass
class Vectors:
    """The store holding a vector for every representative, and what this run did to fill it."""

    store: VectorStore
    runtime: str
    embedded: int  # texts this run embedded; the rest were already stored


def ensure_vectors(config, output: Output, plan: CandidatePlan) -> Vectors:
    """Make sure the store holds a vector for every representative's text, embedding only the missing ones
    (jobs/vectors.py): a rerun after a crash, or after adding rows, embeds only what no run finished."""
    # Planned first: the device decides the runtime, and the runtime is part of the key.
    embed_plan = plan_embed(
        ray.cluster_resources(), config.resources.embed_actors, config.resources.embed_gpus_per_actor,
        node_cpus=largest_node_cpus(),
    )
    # CPU runtimes export the embedder once per node into the per-user cache (~/.cache/chatsieve/embedders,
    # keyed by content: operators/embed_backends.py) unless the embed config names a directory: every output
    # on a machine shares one export.
    embed_config = dataclasses.replace(config.embed, device=embed_plan.device, threads=embed_plan.threads)
    runtime = embed_config.runtime(embed_plan.device)
    store = VectorStore(output, settings_key(config.embed, runtime))
    store.remove_scratch()
    rep_sha1 = plan.rep_sha1
    missing = pc.invert(pc.is_in(rep_sha1, value_set=store.stored_hashes()))
    to_embed = plan.rep_ids.filter(missing)
    logger.info("vectors: %d of %d texts already stored, %d to embed", len(rep_sha1) - len(to_embed), len(rep_sha1),
                len(to_embed))
    if not len(to_embed):
        return Vectors(store, runtime, 0)
    store.write_settings(settings_of(config.embed, runtime))
    logger.info("embed: %s, %s", embed_plan, runtime)
    ds = read_checkpoint(output, (WORK_DIR, CANDIDATES_DIR), [schema.ID, TEXT_SHA1, DEDUP_TEXT])
    ds = ds.map_batches(_only_ids, fn_args=(to_embed,), batch_format="pyarrow", num_cpus=IO_TASK_CPUS)
    ds = ds.map_batches(
        EmbedToStore,
        fn_constructor_args=(embed_config, output.fs, output.child_path(*store.parts)),
        batch_size=config.resources.embed_block_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=embed_plan.actors),
        num_cpus=embed_plan.cpus_per_actor,
        num_gpus=embed_plan.gpus_per_actor or None,
    )
    embedded = 0
    display = progress.current()
    with display.stage("embed", total=len(to_embed), unit="texts"):
        for counts in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            block = int(pc.sum(counts.column("embedded")).as_py() or 0)
            embedded += block
            display.advance(block)
    still_missing = pc.sum(pc.invert(pc.is_in(rep_sha1, value_set=store.stored_hashes()))).as_py() or 0
    if embedded < len(to_embed) or still_missing:
        raise RuntimeError(
            f"embedding finished with {still_missing} texts missing from {store.output.child_uri(*store.parts)} "
            f"({embedded} embedded of {len(to_embed)})"
        )
    return Vectors(store, runtime, embedded)


class VectorBatches:
    """(ranks, vectors) batches of the representatives' vectors, re-readable (the index reads them twice)."""

    def __init__(self, store: VectorStore, rep_sha1: pa.Array):
        self.store, self.rep_sha1 = store, rep_sha1

    def __call__(self):
        for ranks, table in self.store.batches(self.rep_sha1, [VECTOR], SEARCH_BATCH):
            vectors = table.column(VECTOR).combine_chunks()
            dim = vectors.type.list_size
            yield ranks, vectors.flatten().to_numpy().reshape(len(ranks), dim)

    def stats(self) -> dict:
        """Rows, word-piece windows and rows cut, over the representatives."""
        rows = windows = cut = 0
        for ranks, table in self.store.batches(self.rep_sha1, [WINDOWS, CUT], SEARCH_BATCH):
            rows += len(ranks)
            windows += int(pc.sum(table.column(WINDOWS)).as_py() or 0)
            cut += int(pc.sum(table.column(CUT)).as_py() or 0)
        return {"rows": rows, "windows": windows, "rows_cut": cut}


def measure_recall(batches: VectorBatches, neighbors: Neighbors, m: int, record_threshold: float) -> dict:
    """IVF recall of recorded pairs against exact search, on an evenly spaced sample of query rows."""
    sample = np.unique(np.linspace(0, m - 1, num=min(RECALL_SAMPLE, m)).astype(np.int64))
    exact_a, exact_b = [], []
    found_queries = {}
    for ranks, vectors in batches():
        hit = np.isin(ranks, sample)
        for r, v in zip(ranks[hit], vectors[hit]):
            found_queries[int(r)] = v
    queries = np.stack([found_queries[int(r)] for r in sample])
    for ranks, vectors in batches():
        sims = queries @ vectors.T
        qi, vi = np.nonzero(sims >= record_threshold - 1e-4)
        keep = ranks[vi] != sample[qi]
        qi, vi = qi[keep], vi[keep]
        exact = pair_similarity(queries[qi], vectors[vi]) >= np.float32(record_threshold)
        exact_a.append(sample[qi][exact])
        exact_b.append(ranks[vi][exact])
    a = np.concatenate(exact_a) if exact_a else np.empty(0, np.int64)
    b = np.concatenate(exact_b) if exact_b else np.empty(0, np.int64)
    truth = {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist())}
    sampled = set(sample.tolist())
    found = {
        (x, y)
        for x, y in zip(neighbors.pairs_a.tolist(), neighbors.pairs_b.tolist())
        if x in sampled or y in sampled
    }
    recall = len(truth & found) / len(truth) if truth else 1.0
    return {"sample_rows": len(sample), "exact_pairs": len(truth), "found_pairs": len(truth & found), "recall": recall}


def search(config, batches: VectorBatches, m: int, dim: int) -> Neighbors:
    cluster = ray.cluster_resources()
    index_config = config.index
    gpu = cluster.get("GPU", 0) > 0 and index_config.kind == "flat" and _faiss_has_gpu()
    index_config = dataclasses.replace(index_config, gpu=gpu)
    options = {"num_cpus": plan_index_cpus(cluster.get("CPU", 1.0), index_config.shards,
                                           config.resources.index_cpus_per_shard)}
    if gpu:
        options["num_gpus"] = min(1.0, cluster["GPU"] / index_config.shards)
    display = progress.current()
    with display.stage("search", total=m, unit="rows"):
        return search_with_ray(batches, m, dim, index_config, config.dedup.recorded, options, on_progress=display.advance)


def _faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def decide(plan: CandidatePlan, neighbors: Neighbors, dedup) -> tuple[pa.Table, dict]:
    """The keep rule over representatives, then exact duplicates follow their representative."""
    m, threshold = len(plan.rep_ids), dedup.threshold
    resolve = resolve_none if dedup.keep == "none" else resolve_greedy
    result = resolve(m, neighbors.pairs_a, neighbors.pairs_b, neighbors.pairs_sim, threshold)
    rep_ids = np.asarray(plan.rep_ids.to_pylist(), dtype=object)
    ids = np.asarray(plan.ids.to_pylist(), dtype=object)
    is_rep = plan.is_rep
    group_sizes = np.bincount(plan.rep_index, minlength=m)

    out_ids, reasons, details, dup_of, sims = [], [], [], [], []

    def add(rows, reason, detail, targets, similarity):
        out_ids.append(rows)
        reasons.append(np.full(len(rows), reason, dtype=object))
        details.append(np.asarray(detail, dtype=object) if not isinstance(detail, str) else np.full(len(rows), detail, dtype=object))
        dup_of.append(targets)
        sims.append(np.asarray(similarity, dtype=np.float32))

    # Representatives removed by the keep rule: near duplicates of a (kept, except for --keep none) row.
    removed = np.nonzero(~result.kept)[0]
    if dedup.keep == "none":
        removed = removed[group_sizes[removed] == 1]  # reps with exact copies are reported as exact below
    add(
        ids[np.nonzero(is_rep)[0][removed]],
        schema.NEAR_DUPLICATE,
        [f"cosine {s:.6f} >= {threshold}" for s in result.similarity[removed]],
        rep_ids[result.duplicate_of[removed]],
        result.similarity[removed],
    )
    # Exact duplicates: duplicate_of names the final kept row (the representative, or the row it
    # was removed for). With --keep none, every member of a group of copies is removed.
    copies = np.nonzero(~is_rep)[0]
    rep_of_copy = plan.rep_index[copies]
    if dedup.keep == "none":
        targets = rep_ids[rep_of_copy]
        grouped_reps = np.nonzero(group_sizes > 1)[0]
        first_copy = {}
        for row, rep in zip(copies.tolist(), rep_of_copy.tolist()):
            first_copy.setdefault(rep, row)
        add(
            rep_ids[grouped_reps],
            schema.EXACT_DUPLICATE,
            f"same normalized {dedup.dedup_on} text",
            ids[[first_copy[r] for r in grouped_reps.tolist()]] if len(grouped_reps) else np.empty(0, object),
            np.ones(len(grouped_reps), np.float32),
        )
    else:
        final = np.where(result.kept[rep_of_copy], rep_of_copy, result.duplicate_of[rep_of_copy])
        targets = rep_ids[final]
    add(ids[copies], schema.EXACT_DUPLICATE, f"same normalized {dedup.dedup_on} text", targets,
        np.ones(len(copies), np.float32))

    decisions = pa.Table.from_pydict(
        {
            schema.ID: np.concatenate(out_ids).tolist(),
            schema.REASON: np.concatenate(reasons).tolist(),
            schema.DETAIL: np.concatenate(details).tolist(),
            schema.DUPLICATE_OF: np.concatenate(dup_of).tolist(),
            schema.SIMILARITY: np.concatenate(sims),
        },
        schema=DECISION_SCHEMA,
    )
    near_threshold = int(np.sum(np.abs(neighbors.pairs_sim.astype(np.float64) - threshold) <= NEAR_THRESHOLD))
    stats = {
        "candidates": len(ids),
        "exact_duplicate_groups": int(np.sum(group_sizes > 1)),
        "exact_duplicates_removed": int(np.sum(decisions.column(schema.REASON).to_numpy(zero_copy_only=False) == schema.EXACT_DUPLICATE)),
        "near_duplicates_removed": int(np.sum(decisions.column(schema.REASON).to_numpy(zero_copy_only=False) == schema.NEAR_DUPLICATE)),
        "pairs_recorded": len(neighbors.pairs_a),
        "pairs_at_or_above_threshold": int(np.sum(neighbors.pairs_sim >= np.float32(threshold))),
        "pairs_within_1e-6_of_threshold": near_threshold,
        "rows_researched": int(neighbors.researched),
    }
    return decisions, stats


def write_neighbors(output: Output, plan: CandidatePlan, neighbors: Neighbors) -> dict:
    """neighbors/pairs: every recorded pair (ids, similarity); neighbors/best: each row's best other row."""
    rep_ids = plan.rep_ids
    pairs = pa.Table.from_arrays(
        [rep_ids.take(pa.array(neighbors.pairs_a)), rep_ids.take(pa.array(neighbors.pairs_b)),
         pa.array(neighbors.pairs_sim, pa.float32())],
        schema=PAIRS_SCHEMA,
    )
    no_best = neighbors.best_rank < 0
    copies = ~plan.is_rep
    best = pa.concat_tables(
        [
            pa.Table.from_arrays(
                [rep_ids, rep_ids.take(pa.array(neighbors.best_rank, mask=no_best)),
                 pa.array(neighbors.best_sim, pa.float32())],
                schema=BEST_SCHEMA,
            ),
            # An exact copy's best neighbour is its representative, at similarity 1.
            pa.Table.from_arrays(
                [plan.ids.filter(pa.array(copies)), rep_ids.take(pa.array(plan.rep_index[copies])),
                 pa.array(np.ones(int(copies.sum()), np.float32))],
                schema=BEST_SCHEMA,
            ),
        ]
    )
    files = {}
    for name, table in (("pairs", pairs), ("best", best)):
        count = max(1, -(-table.num_rows // NEIGHBOR_SHARD_ROWS))
        output.fs.create_dir(output.child_path(NEIGHBORS_DIR, name), recursive=True)
        files[name] = []
        for i in range(count):
            part = f"part-{i:05d}-of-{count:05d}.parquet"
            chunk = table.slice(i * NEIGHBOR_SHARD_ROWS, NEIGHBOR_SHARD_ROWS)
            pq.write_table(chunk, output.child_path(NEIGHBORS_DIR, name, part), filesystem=output.fs, compression="zstd")
            files[name].append(part)
    return files


def read_neighbors(output: Output, plan: CandidatePlan) -> Neighbors:
    """The recorded pairs and best neighbours of an existing output, in this plan's ranks (rethreshold)."""
    pairs = pq.read_table(output.child_path(NEIGHBORS_DIR, "pairs"), filesystem=output.fs)
    best = pq.read_table(output.child_path(NEIGHBORS_DIR, "best"), filesystem=output.fs)
    a = pc.index_in(pairs.column("id_a"), value_set=plan.rep_ids).to_numpy(zero_copy_only=False)
    b = pc.index_in(pairs.column("id_b"), value_set=plan.rep_ids).to_numpy(zero_copy_only=False)
    sim = pairs.column(schema.SIMILARITY).to_numpy()
    order = np.lexsort((b, a))
    m = len(plan.rep_ids)
    best_rank = np.full(m, -1, np.int64)
    best_sim = np.full(m, np.nan, np.float32)
    rows = pc.index_in(best.column(schema.ID), value_set=plan.rep_ids)
    valid = pc.is_valid(rows)
    best = best.filter(valid)
    rows = rows.filter(valid).to_numpy()
    target = pc.index_in(best.column("best_id"), value_set=plan.rep_ids)
    best_rank[rows] = pc.fill_null(target, -1).to_numpy()
    best_sim[rows] = best.column("best_similarity").to_numpy(zero_copy_only=False)
    return Neighbors(a[order].astype(np.int64), b[order].astype(np.int64), sim[order], best_rank, best_sim, 0)


@dataclass
class DedupOutcome:
    decisions: pa.Table
    manifest: dict


def run_dedup(config, output: Output, rows: tuple[Output, tuple[str, ...]], timings) -> DedupOutcome:
    with timings.stage("exact_dedup"):
        build_candidates(config, output, rows)
        plan = plan_candidates(load_candidate_keys(output), config.dedup.keep)
    m = len(plan.rep_ids)
    logger.info("%d candidates, %d after exact dedup", len(plan.ids), m)
    with timings.stage("embed"):
        vectors = ensure_vectors(config, output, plan) if m else None
    manifest: dict = {"vectors": {"checkpoint": None, "reused": False, "runtime": None, "rows": 0, "embedded": 0}}
    if m:
        batches = VectorBatches(vectors.store, plan.rep_sha1)
        dim = next(iter(batches()))[1].shape[1]
        with timings.stage("index_search"):
            neighbors = search(config, batches, m, dim)
        manifest["vectors"].update(
            checkpoint="/".join(vectors.store.parts), runtime=vectors.runtime, dim=dim,
            embedded=vectors.embedded, reused=vectors.embedded == 0, **batches.stats(),
        )
        if config.index.kind == "ivf":
            with timings.stage("ivf_recall"):
                manifest["ivf_recall"] = measure_recall(batches, neighbors, m, config.dedup.recorded)
    else:
        empty = np.empty(0, np.int64)
        neighbors = Neighbors(empty, empty, np.empty(0, np.float32), empty, np.empty(0, np.float32), 0)
    with timings.stage("resolve"):
        decisions, stats = decide(plan, neighbors, config.dedup)
        manifest.update(stats)
        manifest["neighbor_files"] = write_neighbors(output, plan, neighbors)
    return DedupOutcome(decisions, manifest)
