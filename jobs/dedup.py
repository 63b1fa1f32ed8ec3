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
from jobs.resources import IO_TASK_CPUS, every_node_has_bf16, largest_node_cpus, plan_embed, plan_index_cpus
from jobs.runtime import release_freed_memory
from operators import schema
from operators.embed import CUT, PREFILTER_AUTO, PREFILTER_BACKEND, VECTOR, WINDOWS
from operators.exact_dedup import (
    BOILERPLATE,
    CANDIDATE_SCHEMA,
    DEDUP_KEY,
    DEDUP_TEXT,
    REFERENCE,
    TEXT_SHA1,
    candidates,
    exact_groups,
    key_digests,
    priority_order,
    reference_index,
)
from operators.index import IndexConfig, Neighbors, pair_similarity, search_with_ray
from operators.resolve import best_per_row, resolve_greedy, resolve_none
from jobs.vectors import EmbedToStore, HashLookup, VectorStore, settings_key, settings_of
from operators.write import NEIGHBORS_DIR, WORK_DIR, Output, list_parquet, read_checkpoint

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
        pa.field(schema.DUPLICATE_OF_SOURCE, pa.string()),
    ]
)
PAIRS_SCHEMA = pa.schema(
    [pa.field("id_a", pa.string()), pa.field("id_b", pa.string()), pa.field(schema.SIMILARITY, pa.float32())]
)
BEST_SCHEMA = pa.schema(
    [pa.field(schema.ID, pa.string()), pa.field("best_id", pa.string()), pa.field("best_similarity", pa.float32())]
)
NARROW_COLUMNS = [
    schema.ID, schema.SOURCE, schema.SOURCE_ROW, schema.RESPONSE_TOKENS, DEDUP_KEY, TEXT_SHA1, REFERENCE, BOILERPLATE
]


@dataclass
class CandidatePlan:
    """Kept rows in priority order, and their exact-duplicate groups.

    Only what later stages read is held, once (docs/architecture.md, "Resources"): the representatives' text
    hashes only as the lookup the vectors store is read through, and their ids taken from `ids` when asked."""

    ids: pa.Array  # [n] ids in rank order
    group_rep: np.ndarray  # [n] rank of each row's exact-group representative
    rep_index: np.ndarray  # [n] index into the representatives (rank order) of each row's representative
    lookup: HashLookup  # the representatives' text_sha1, in rank order: the keys of their vectors in the store
    reference: np.ndarray  # [n] the --against index of a reference row, -1 for an input row
    sources: pa.Array  # [n] source and source_row in rank order (to name reference rows)
    source_rows: pa.Array

    @property
    def is_rep(self) -> np.ndarray:
        return self.group_rep == np.arange(len(self.group_rep))

    @property
    def rep_rank(self) -> np.ndarray:
        """[m] the rank of each representative."""
        return np.flatnonzero(self.is_rep)

    @property
    def m(self) -> int:
        """How many representatives: the rows that are embedded and searched."""
        return len(self.lookup)

    @property
    def rep_ids(self) -> pa.Array:
        """[m] the representatives' ids in rank order (taken when asked: ~20 MB at 1M rows, needed by two steps)."""
        return self.ids.filter(pa.array(self.is_rep))


def plan_candidates(table: pa.Table, keep: str) -> CandidatePlan:
    """Rank every candidate (references first, docs/architecture.md "Priority") and group exact copies.

    Columns are put in rank order one at a time, and the exact key never (only its codes): the driver never
    holds a second copy of the whole keys table."""
    if REFERENCE not in table.column_names:
        table = table.append_column(REFERENCE, pa.nulls(table.num_rows, pa.int32()))
    positions = priority_order(table, keep)
    order = pa.array(positions)

    def ranked(name: str) -> pa.Array:
        return table.column(name).take(order).combine_chunks()

    group_rep = exact_groups(table.column(DEDUP_KEY), positions)
    is_rep = group_rep == np.arange(len(group_rep))
    rep_position = np.cumsum(is_rep) - 1
    # The hashes go straight into the lookup, the representatives' only: no column of every row's hash is kept.
    rep_sha1 = table.column(TEXT_SHA1).take(pa.array(positions[is_rep]))
    return CandidatePlan(
        ids=ranked(schema.ID),
        group_rep=group_rep,
        rep_index=rep_position[group_rep],
        lookup=HashLookup(rep_sha1),
        reference=pc.fill_null(ranked(REFERENCE), -1).to_numpy(zero_copy_only=False).astype(np.int32),
        sources=ranked(schema.SOURCE),
        source_rows=ranked(schema.SOURCE_ROW),
    )


ROW_COLUMNS = [schema.ID, schema.SOURCE, schema.SOURCE_ROW, schema.STATUS, schema.MESSAGES, schema.RESPONSE_TOKENS]


def build_candidates(config, output: Output, rows: tuple[Output, tuple[str, ...]], boilerplate: frozenset[int]) -> None:
    """Ray stage: kept rows -> (id, priority columns, dedup text, exact key) under _work/candidates/."""
    output.delete_dir(WORK_DIR, CANDIDATES_DIR)
    read_checkpoint(*rows, ROW_COLUMNS, empty=schema.WORK_SCHEMA).map_batches(
        candidates, fn_kwargs={"dedup_on": config.dedup.dedup_on, "boilerplate": boilerplate},
        batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
    ).write_parquet(output.child_uri(WORK_DIR, CANDIDATES_DIR), ray_remote_args={"num_cpus": IO_TASK_CPUS})


def candidate_dirs(output: Output) -> list[tuple[str, ...]]:
    """The candidate checkpoints of a run: its inputs', and its references' when it has any."""
    from jobs.references import REFERENCE_CANDIDATES_DIR

    dirs = [(WORK_DIR, CANDIDATES_DIR)]
    if output.exists(WORK_DIR, REFERENCE_CANDIDATES_DIR):
        dirs.append((WORK_DIR, REFERENCE_CANDIDATES_DIR))
    return dirs


def read_candidates(output: Output, columns: list[str]):
    """A Ray dataset over every candidate checkpoint of the run (inputs, then references)."""
    parts = [read_checkpoint(output, parts, columns, empty=CANDIDATE_SCHEMA) for parts in candidate_dirs(output)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def load_candidate_keys(output: Output) -> pa.Table:
    """The narrow candidate columns (no text) on the driver: about 110 bytes a row, `source` dictionary-encoded
    (a path repeated on every row of its file) and the exact key as its 20 bytes (`key_digests`).

    Read with pyarrow on the driver, not through a Ray dataset: only these columns of each file are decoded, no
    streaming execution starts (1-3 s each, docs/notes.md), and no block passes through the object store, whose
    pages the driver would map and hold in its RSS."""
    def narrowed(table: pa.Table) -> pa.Table:
        index = table.schema.get_field_index(DEDUP_KEY)
        return table.set_column(index, DEDUP_KEY, key_digests(table.column(index)))

    narrow = with_source_encoded(pa.schema([CANDIDATE_SCHEMA.field(name) for name in NARROW_COLUMNS]).empty_table())
    tables = [
        # `source` comes out of Parquet's own dictionary pages as a dictionary: no string per row, even briefly.
        narrowed(with_source_encoded(pq.read_table(path, columns=NARROW_COLUMNS, filesystem=output.fs,
                                                   read_dictionary=[schema.SOURCE])).cast(narrow.schema))
        for parts in candidate_dirs(output)
        for path in list_parquet(output, *parts)
    ]
    return pa.concat_tables(tables) if tables else narrowed(narrow)


def with_source_encoded(table: pa.Table) -> pa.Table:
    """`source` as a dictionary with int32 indices (as it is when read from Parquet's dictionary pages)."""
    index = table.schema.get_field_index(schema.SOURCE)
    column = table.column(index)
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return table.set_column(index, schema.SOURCE, column)


def _only_ids(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch.column(schema.ID), value_set=wanted))


@dataclass
class Vectors:
    """The stores holding a vector for every representative, and what this run did to fill them."""

    stores: list[VectorStore]  # this output's, then the references' (--against outputs with the same settings)
    runtime: str
    embedded: int  # texts this run embedded; the rest were already stored
    from_references: int  # representatives' texts read from a reference's store
    lookup: HashLookup  # the representatives' text hashes, built once for the stored check and every index read


def vectors_record(vectors: Vectors) -> dict:
    """What the manifest says of a run's vectors: their store, runtime and precision (anything but fp32 moves
    similarities: fp16 on a GPU, bf16, int8; the card says so), and what this run embedded."""
    return {"checkpoint": "/".join(vectors.stores[0].parts), "runtime": vectors.runtime,
            "precision": vectors.runtime.rsplit("-", 1)[-1], "embedded": vectors.embedded,
            "reused": vectors.embedded == 0, "from_references": vectors.from_references}


def check_prefilter_device(config, cluster: dict) -> None:
    """--embed-prefilter bf16|int8 runs on CPU: refused before any work when this cluster would embed on its GPUs
    (auto, the default, just runs in full precision there)."""
    if not (config.dedup.enabled and config.embed.prefilter in PREFILTER_BACKEND):
        return
    if cluster.get("GPU", 0) > 0:
        raise ValueError(
            f"--embed-prefilter {config.embed.prefilter} is for CPU runs, and this cluster embeds on its "
            f"{cluster['GPU']:g} GPUs (torch fp16, already fast): drop --embed-prefilter"
        )


def resolve_prefilter(config):
    """The config with --embed-prefilter decided for this cluster (`EmbedConfig.resolve_prefilter`), and the
    manifest's record of the choice."""
    device = plan_embed(ray.cluster_resources(), config.resources.embed_actors, config.resources.embed_gpus_per_actor,
                        node_cpus=largest_node_cpus()).device
    embed, why = config.embed.resolve_prefilter(device, every_node_has_bf16)
    if config.embed.prefilter == PREFILTER_AUTO:
        logger.info("--embed-prefilter auto: %s (%s)", embed.prefilter or "none", why)
    record = {"asked": config.embed.prefilter or "none", "used": embed.prefilter or "none", "why": why}
    return dataclasses.replace(config, embed=embed), record


def ensure_vectors(config, output: Output, plan: CandidatePlan, references=(), only: np.ndarray | None = None,
                   stage: str = "embed") -> Vectors:
    """Make sure the stores hold a vector for every representative's text (or those `only` marks), embedding
    only the missing ones (jobs/vectors.py): a rerun after a crash, or after adding rows, embeds only what no
    run finished, and an earlier output given as --against lends its vectors."""
    from jobs.references import reference_stores

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
    key = settings_key(config.embed, runtime)
    store = VectorStore(output, key)
    store.remove_scratch()
    stores = [store, *reference_stores(references, key)]
    lookup = plan.lookup
    wanted = np.ones(len(lookup), bool) if only is None else only
    own = store.stored_in(lookup)
    lent = np.zeros(len(lookup), bool)
    for other in stores[1:]:
        lent |= other.stored_in(lookup)
    lent &= wanted & ~own
    from_references = int(np.sum(lent))
    stored = own | lent | ~wanted  # what is not wanted counts as stored
    to_embed = plan.rep_ids.filter(pa.array(~stored))
    logger.info("vectors (%s): %d of %d texts already stored (%d in references), %d to embed", runtime,
                len(lookup) - len(to_embed), len(lookup), from_references, len(to_embed))
    if not len(to_embed):
        return Vectors(stores, runtime, 0, from_references, lookup)
    store.write_settings(settings_of(config.embed, runtime))
    logger.info("embed: %s, %s", embed_plan, runtime)
    ds = read_candidates(output, [schema.ID, TEXT_SHA1, DEDUP_TEXT])
    ds = ds.map_batches(_only_ids, fn_args=(to_embed,), batch_format="pyarrow", num_cpus=IO_TASK_CPUS)
    embedded = embed_into(store, ds, config, embed_config, embed_plan, len(to_embed), stage)
    still_missing = int(np.sum(~(stored | store.stored_in(lookup))))
    if embedded < len(to_embed) or still_missing:
        raise RuntimeError(
            f"embedding finished with {still_missing} texts missing from {store.output.child_uri(*store.parts)} "
            f"({embedded} embedded of {len(to_embed)})"
        )
    return Vectors(stores, runtime, embedded, from_references, lookup)


def embed_into(store: VectorStore, texts, config, embed_config, embed_plan, total: int, stage: str = "embed") -> int:
    """Ray stage: embed a dataset of (id, text_sha1, dedup_text) into `store` (actor pool); returns the count."""
    ds = texts.map_batches(
        EmbedToStore,
        fn_constructor_args=(embed_config, store.output.fs, store.output.child_path(*store.parts)),
        batch_size=config.resources.embed_block_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=embed_plan.actors),
        num_cpus=embed_plan.cpus_per_actor,
        num_gpus=embed_plan.gpus_per_actor or None,
    )
    embedded = 0
    display = progress.current()
    with display.stage(stage, total=total, unit="texts"):
        for counts in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            block = int(pc.sum(counts.column("embedded")).as_py() or 0)
            embedded += block
            display.advance(block)
    return embedded


class VectorBatches:
    """(ranks, vectors) batches of the representatives' vectors, re-readable (the index reads them twice)."""

    def __init__(self, stores: list[VectorStore], lookup: HashLookup):
        self.stores = stores
        self._lookup = lookup  # built once (ensure_vectors): the index and the recall read the stores four times

    def _tables(self, columns: list[str]):
        seen = np.zeros(len(self._lookup), dtype=bool)
        for store in self.stores:
            yield from store.batches(self._lookup, columns, SEARCH_BATCH, seen)

    def __call__(self):
        for ranks, table in self._tables([VECTOR]):
            vectors = table.column(VECTOR).combine_chunks()
            dim = vectors.type.list_size
            yield ranks, vectors.flatten().to_numpy().reshape(len(ranks), dim)

    def stats(self) -> dict:
        """Rows, word-piece windows and rows cut, over the representatives."""
        rows = windows = cut = 0
        for ranks, table in self._tables([WINDOWS, CUT]):
            rows += len(ranks)
            windows += int(pc.sum(table.column(WINDOWS)).as_py() or 0)
            cut += int(pc.sum(table.column(CUT)).as_py() or 0)
        return {"rows": rows, "windows": windows, "rows_cut": cut}


def exact_pairs_of_sample(batches: VectorBatches, sample: np.ndarray, record_threshold: float):
    """Every pair >= record_threshold with a row of `sample` on one side, by exact search: (sample rank, rank).

    Run as a Ray task (measure_recall): it reads every vector twice, which the driver never does."""
    found_queries = {}
    for ranks, vectors in batches():
        hit = np.isin(ranks, sample)
        for r, v in zip(ranks[hit], vectors[hit]):
            found_queries[int(r)] = v
    queries = np.stack([found_queries[int(r)] for r in sample])
    exact_a, exact_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for ranks, vectors in batches():
        sims = queries @ vectors.T
        qi, vi = np.nonzero(sims >= record_threshold - 1e-4)
        keep = ranks[vi] != sample[qi]
        qi, vi = qi[keep], vi[keep]
        exact = pair_similarity(queries[qi], vectors[vi]) >= np.float32(record_threshold)
        exact_a.append(sample[qi][exact])
        exact_b.append(ranks[vi][exact])
    return np.concatenate(exact_a), np.concatenate(exact_b)


def measure_recall(batches: VectorBatches, neighbors: Neighbors, m: int, record_threshold: float) -> dict:
    """IVF recall of recorded pairs against exact search, on an evenly spaced sample of query rows."""
    sample = np.unique(np.linspace(0, m - 1, num=min(RECALL_SAMPLE, m)).astype(np.int64))
    exact = ray.remote(exact_pairs_of_sample).options(num_cpus=IO_TASK_CPUS)
    a, b = ray.get(exact.remote(batches, sample, record_threshold))
    truth = {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist())}
    # Only the recorded pairs that touch the sample become Python tuples (all pairs at 1M rows: millions).
    touches = np.isin(neighbors.pairs_a, sample) | np.isin(neighbors.pairs_b, sample)
    found = set(zip(neighbors.pairs_a[touches].tolist(), neighbors.pairs_b[touches].tolist()))
    recall = len(truth & found) / len(truth) if truth else 1.0
    return {"sample_rows": len(sample), "exact_pairs": len(truth), "found_pairs": len(truth & found), "recall": recall}


def similarities_of_pairs(batches: VectorBatches, ranks: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`pair_similarity` of the pairs (a, b) from the stored vectors; `ranks`: every rank a and b name, sorted.

    Run as a Ray task (confirm_pairs): it holds the vectors of those ranks, which the driver never does."""
    vectors = None
    for batch_ranks, batch in batches():
        hit = np.isin(batch_ranks, ranks)
        if vectors is None:
            vectors = np.full((len(ranks), batch.shape[1]), np.nan, np.float32)
        vectors[np.searchsorted(ranks, batch_ranks[hit])] = batch[hit]
    if vectors is None or np.isnan(vectors[:, 0]).any():
        raise RuntimeError("the confirmation pass found no stored vector for some texts of the pairs")
    sims = np.empty(len(a), np.float32)
    for start in range(0, len(a), SEARCH_BATCH):
        part = slice(start, start + SEARCH_BATCH)
        sims[part] = pair_similarity(vectors[np.searchsorted(ranks, a[part])], vectors[np.searchsorted(ranks, b[part])])
    return sims


def confirm_pairs(config, output: Output, plan: CandidatePlan, found: Neighbors,
                  references=()) -> tuple[Neighbors, dict, Vectors]:
    """--embed-prefilter's second pass: the texts of every pair the reduced-precision search found are embedded in
    full precision, and the pairs keep their full-precision similarity, down to the record threshold. Returns the
    pairs, the pass's summary, and the full-precision vectors.

    The decisions are those of a full-precision run whenever no pair's similarity moved by more than the margin
    between the two precisions (docs/notes.md, "Embedding in bf16"): the manifest records the largest move seen.
    A row in no pair keeps its prefilter best neighbour (below the prefilter's floor, far from any decision)."""
    embed, recorded = config.embed, config.dedup.recorded
    ranks = np.unique(np.concatenate([found.pairs_a, found.pairs_b]))
    wanted = np.zeros(plan.m, bool)
    wanted[ranks] = True
    vectors = ensure_vectors(config, output, plan, references, only=wanted, stage="confirm")
    sims = np.empty(0, np.float32)
    if len(ranks):
        task = ray.remote(similarities_of_pairs).options(num_cpus=IO_TASK_CPUS)
        sims = ray.get(task.remote(VectorBatches(vectors.stores, vectors.lookup), ranks, found.pairs_a, found.pairs_b))
    moved = np.abs(sims.astype(np.float64) - found.pairs_sim)
    keep = sims >= np.float32(recorded)
    best_rank, best_sim = found.best_rank.copy(), found.best_sim.copy()
    both_ways = np.concatenate([found.pairs_a, found.pairs_b]), np.concatenate([found.pairs_b, found.pairs_a])
    top, top_sim = best_per_row(*both_ways, np.concatenate([sims, sims]), plan.m)
    best_rank[ranks], best_sim[ranks] = top[ranks], top_sim[ranks]
    summary = {
        "margin": embed.margin, "floor": round(recorded - embed.margin, 6), "pairs_found": len(sims),
        "texts": plan.m, "texts_confirmed": len(ranks), "pairs_recorded": int(keep.sum()),
        "max_similarity_moved": float(moved.max()) if len(moved) else 0.0,
    }
    if summary["max_similarity_moved"] > embed.margin / 2:
        logger.warning("the %s prefilter moved a pair's similarity by %.4f, over half its margin %.3f: raise "
                       "--embed-prefilter-margin", embed.prefilter, summary["max_similarity_moved"], embed.margin)
    neighbors = Neighbors(found.pairs_a[keep], found.pairs_b[keep], sims[keep], best_rank, best_sim, found.researched)
    return neighbors, summary, vectors


def search(config, batches: VectorBatches, m: int, dim: int, floor: float) -> tuple[Neighbors, IndexConfig]:
    """The cross-shard search over the representatives for pairs >= `floor`; and the index config it ran with
    (`auto` decided)."""
    cluster = ray.cluster_resources()
    gpu_available = cluster.get("GPU", 0) > 0 and config.index.kind in ("flat", "auto") and _faiss_has_gpu()
    index_config = config.index.resolved(m, gpu_available)
    gpu = gpu_available and index_config.kind == "flat"
    index_config = dataclasses.replace(index_config, gpu=gpu)
    options = {"num_cpus": plan_index_cpus(cluster.get("CPU", 1.0), index_config.shards,
                                           config.resources.index_cpus_per_shard)}
    if gpu:
        options["num_gpus"] = min(1.0, cluster["GPU"] / index_config.shards)
    display = progress.current()
    with display.stage("search", total=m, unit="rows"):
        neighbors = search_with_ray(
            batches, m, dim, index_config, floor, options, on_progress=display.advance
        )
    return neighbors, index_config


def _faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def without_reference_pairs(plan: CandidatePlan, neighbors: Neighbors) -> Neighbors:
    """The pairs minus those between two reference rows: references never remove one another."""
    rep_is_ref = plan.reference[plan.rep_rank] >= 0
    if not rep_is_ref.any():
        return neighbors
    keep = ~(rep_is_ref[neighbors.pairs_a] & rep_is_ref[neighbors.pairs_b])
    return dataclasses.replace(
        neighbors, pairs_a=neighbors.pairs_a[keep], pairs_b=neighbors.pairs_b[keep], pairs_sim=neighbors.pairs_sim[keep]
    )


def decide(plan: CandidatePlan, neighbors: Neighbors, dedup, labels: tuple[str, ...] = ()) -> tuple[pa.Table, dict]:
    """The keep rule over representatives, then exact duplicates follow their representative.

    Decisions are for input rows only. A removed input row with a reference row (--against, `labels`) among
    its duplicates is `in_reference` and names the most similar reference row."""
    m, threshold = plan.m, dedup.threshold
    neighbors = without_reference_pairs(plan, neighbors)
    resolve = resolve_none if dedup.keep == "none" else resolve_greedy
    result = resolve(m, neighbors.pairs_a, neighbors.pairs_b, neighbors.pairs_sim, threshold)
    is_rep, rep_rank = plan.is_rep, plan.rep_rank
    is_ref = plan.reference >= 0
    rep_is_ref = is_ref[rep_rank]
    group_sizes = np.bincount(plan.rep_index, minlength=m)

    # Every decision as (row rank, reason, target rank, similarity, exact?).
    rows, reasons, targets, sims, exact = [], [], [], [], []

    def add(row_ranks, reason, target_ranks, similarity, is_exact):
        rows.append(np.asarray(row_ranks, np.int64))
        reasons.append(np.full(len(row_ranks), reason, dtype=object))
        targets.append(np.asarray(target_ranks, np.int64))
        sims.append(np.asarray(similarity, np.float32))
        exact.append(np.full(len(row_ranks), is_exact))

    # Representatives removed by the keep rule: near duplicates of a (kept, except for --keep none) row.
    removed = np.flatnonzero(~result.kept & ~rep_is_ref)
    if dedup.keep == "none":
        removed = removed[group_sizes[removed] == 1]  # reps with exact copies are reported as exact below
    add(rep_rank[removed], schema.NEAR_DUPLICATE, rep_rank[result.duplicate_of[removed]],
        result.similarity[removed], False)
    # Exact duplicates: the target is the final kept row (the representative, or the row it was removed
    # for). With --keep none, every member of a group of copies is removed.
    copies = np.flatnonzero(~is_rep & ~is_ref)
    rep_of_copy = plan.rep_index[copies]
    if dedup.keep == "none":
        copy_targets = rep_rank[rep_of_copy]
        grouped_reps = np.flatnonzero((group_sizes > 1) & ~rep_is_ref)
        first_copy = {}
        for row, rep in zip(copies.tolist(), rep_of_copy.tolist()):
            first_copy.setdefault(rep, row)
        add(rep_rank[grouped_reps], schema.EXACT_DUPLICATE, [first_copy[r] for r in grouped_reps.tolist()],
            np.ones(len(grouped_reps)), True)
    else:
        final = np.where(result.kept[rep_of_copy], rep_of_copy, result.duplicate_of[rep_of_copy])
        copy_targets = rep_rank[final]
    add(copies, schema.EXACT_DUPLICATE, copy_targets, np.ones(len(copies)), True)

    rows, reasons, targets = np.concatenate(rows), np.concatenate(reasons), np.concatenate(targets)
    sims, exact = np.concatenate(sims), np.concatenate(exact)
    if rep_is_ref.any():
        # The most similar reference row of each representative (pairs have the lower rank first, and every
        # reference ranks before every input row).
        a, b, sim = neighbors.pairs_a, neighbors.pairs_b, neighbors.pairs_sim
        edge = (sim >= np.float32(threshold)) & rep_is_ref[a] & ~rep_is_ref[b]
        best_ref, best_sim = best_per_row(b[edge], a[edge], sim[edge], m)
        rep = plan.rep_index[rows]
        # An exact copy of a reference row names it (similarity 1); any other row whose text is a near
        # duplicate of a reference row names the most similar one.
        via_rep = ~rep_is_ref[rep] & (best_ref[rep] >= 0)
        targets = np.where(via_rep, rep_rank[np.maximum(best_ref[rep], 0)], targets)
        sims = np.where(via_rep, best_sim[rep], sims).astype(np.float32)
        exact = exact & ~via_rep
        reasons = np.where(is_ref[targets], schema.IN_REFERENCE, reasons)

    # Ids stay Arrow (taken by rank): no Python string per candidate on the driver, only per removed row's text.
    same_text = f"same normalized {dedup.dedup_on} text"
    details = [same_text if is_exact else f"cosine {similarity:.6f} >= {threshold}"
               for similarity, is_exact in zip(sims.tolist(), exact.tolist())]
    duplicate_of = plan.ids.take(pa.array(targets))
    where = pa.nulls(len(rows), pa.string())
    to_reference = np.flatnonzero(plan.reference[targets] >= 0)
    if len(to_reference):
        duplicate_of, where = duplicate_of.to_pylist(), where.to_pylist()
        for k in to_reference.tolist():
            target = int(targets[k])
            index, duplicate_of[k] = reference_index(plan.ids[target].as_py())
            label = labels[index] if index < len(labels) else f"reference {index}"
            where[k] = f"{plan.sources[target].as_py()}#{plan.source_rows[target].as_py()} in {label}"
            details[k] = (f"{same_text} as a row of {label}" if exact[k]
                          else f"cosine {float(sims[k]):.6f} >= {threshold} to a row of {label}")
        duplicate_of, where = pa.array(duplicate_of, pa.string()), pa.array(where, pa.string())
    decisions = pa.Table.from_arrays(
        [plan.ids.take(pa.array(rows)), pa.array(reasons.tolist(), pa.string()), pa.array(details, pa.string()),
         duplicate_of, pa.array(sims, pa.float32()), where],
        schema=DECISION_SCHEMA,
    )
    near_threshold = int(np.sum(np.abs(neighbors.pairs_sim.astype(np.float64) - threshold) <= NEAR_THRESHOLD))
    counts = {reason: int(np.sum(reasons == reason)) for reason in (schema.EXACT_DUPLICATE, schema.NEAR_DUPLICATE,
                                                                     schema.IN_REFERENCE)}
    stats = {
        "candidates": int(np.sum(~is_ref)),
        "exact_duplicate_groups": int(np.sum((group_sizes > 1) & ~rep_is_ref)),
        "exact_duplicates_removed": counts[schema.EXACT_DUPLICATE],
        "near_duplicates_removed": counts[schema.NEAR_DUPLICATE],
        "in_reference_removed": counts[schema.IN_REFERENCE],
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
    # Reference rows are not in this output: no best-neighbour row of their own (their pairs stay, for rethreshold).
    best = best.filter(pc.invert(pc.match_substring_regex(best.column(schema.ID), r"^r\d+:")))
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
    rep_ids = plan.rep_ids
    a = pc.index_in(pairs.column("id_a"), value_set=rep_ids).to_numpy(zero_copy_only=False)
    b = pc.index_in(pairs.column("id_b"), value_set=rep_ids).to_numpy(zero_copy_only=False)
    sim = pairs.column(schema.SIMILARITY).to_numpy()
    order = np.lexsort((b, a))
    m = len(rep_ids)
    best_rank = np.full(m, -1, np.int64)
    best_sim = np.full(m, np.nan, np.float32)
    rows = pc.index_in(best.column(schema.ID), value_set=rep_ids)
    valid = pc.is_valid(rows)
    best = best.filter(valid)
    rows = rows.filter(valid).to_numpy()
    target = pc.index_in(best.column("best_id"), value_set=rep_ids)
    best_rank[rows] = pc.fill_null(target, -1).to_numpy()
    best_sim[rows] = best.column("best_similarity").to_numpy(zero_copy_only=False)
    return Neighbors(a[order].astype(np.int64), b[order].astype(np.int64), sim[order], best_rank, best_sim, 0)


@dataclass
class DedupOutcome:
    decisions: pa.Table
    manifest: dict


BOILERPLATE_SHOWN = 50  # paragraphs listed in the manifest and the report


def find_boilerplate(config, rows: tuple[Output, tuple[str, ...]], references) -> tuple[frozenset[int], dict]:
    """The boilerplate paragraphs (operators/boilerplate.py), counted over inputs and references together so
    `--against` decides as one combined run would; and the manifest's summary with the most common ones."""
    from jobs.references import reference_rows
    from operators import boilerplate

    min_rows = config.dedup.boilerplate_min_rows
    summary = {"min_rows": min_rows, "min_chars": boilerplate.MIN_CHARS, "paragraphs": 0}
    if not min_rows:
        return frozenset(), summary
    datasets = [read_checkpoint(*rows, ROW_COLUMNS, empty=schema.WORK_SCHEMA)]
    datasets += [reference_rows(config, reference) for reference in references]
    fn_kwargs = {"dedup_on": config.dedup.dedup_on}
    pairs = [
        table
        for ds in datasets
        for table in ds.map_batches(boilerplate.count_paragraphs, fn_kwargs=fn_kwargs, batch_format="pyarrow",
                                    num_cpus=IO_TASK_CPUS).iter_batches(batch_format="pyarrow", batch_size=None)
    ]
    found = boilerplate.boilerplate_keys(*boilerplate.count_rows(pairs), min_rows)
    summary["paragraphs"] = len(found)
    shown = dict(sorted(found.items(), key=lambda item: (-item[1], item[0]))[:BOILERPLATE_SHOWN])
    excerpts: dict[int, dict] = {}
    if shown:
        wanted = frozenset(shown)
        for ds in datasets:
            for table in ds.map_batches(boilerplate.paragraph_excerpts, fn_kwargs={**fn_kwargs, "wanted": wanted},
                                        batch_format="pyarrow", num_cpus=IO_TASK_CPUS).iter_batches(
                                            batch_format="pyarrow", batch_size=None):
                for row in table.to_pylist():
                    excerpts.setdefault(row[boilerplate.PARAGRAPH_KEY], row)
    summary["top"] = [
        {"rows": count, "chars": excerpts.get(key, {}).get("chars"), "excerpt": excerpts.get(key, {}).get("excerpt")}
        for key, count in shown.items()
    ]
    logger.info("boilerplate: %d paragraphs in more than %d rows are left out of the dedup text", len(found), min_rows)
    return frozenset(found), summary


def run_dedup(config, output: Output, rows: tuple[Output, tuple[str, ...]], timings, references=(),
              excluded: pa.Array | None = None) -> DedupOutcome:
    """Near-duplicate removal over the kept input rows (minus `excluded`, rows already removed by
    decontamination), with the --against references ranked first."""
    from jobs.references import REFERENCE_CANDIDATES_DIR, build_reference_candidates

    with timings.stage("exact_dedup"):
        boilerplate, boilerplate_summary = find_boilerplate(config, rows, references)
        build_candidates(config, output, rows, boilerplate)
        output.delete_dir(WORK_DIR, REFERENCE_CANDIDATES_DIR)  # an earlier run's references never mix in
        if references:
            build_reference_candidates(config, output, references, boilerplate)
        keys = load_candidate_keys(output)
        if excluded is not None and len(excluded):
            keys = keys.filter(pc.invert(pc.is_in(keys.column(schema.ID), value_set=excluded)))
        # One column filtered, not the table (a copy of every key column: ~110 MB at 1M rows).
        left_out = pc.filter(keys.column(BOILERPLATE), pc.is_null(keys.column(REFERENCE))).to_numpy()
        boilerplate_summary.update(rows=int(np.sum(left_out > 0)), paragraphs_left_out=int(np.sum(left_out)))
        release_freed_memory()  # the read's per-file buffers, before the plan's own arrays (about 40 MB at 1M rows)
        plan = plan_candidates(keys, config.dedup.keep)
        del keys  # the plan holds what the rest needs (a copy, in priority order)
    m = plan.m
    logger.info("%d candidates, %d after exact dedup", len(plan.ids), m)
    config, prefilter_choice = resolve_prefilter(config)
    prefilter = config.embed.prefilter
    # With --embed-prefilter the first pass embeds and searches in reduced precision, down to a margin below the
    # record threshold; confirm_pairs then gives every pair found its full-precision similarity.
    first = dataclasses.replace(config, embed=config.embed.prefilter_pass()) if prefilter else config
    floor = config.dedup.recorded - config.embed.margin if prefilter else config.dedup.recorded
    with timings.stage("embed"):
        vectors = ensure_vectors(first, output, plan, references) if m else None
    manifest: dict = {
        "vectors": {"checkpoint": None, "reused": False, "runtime": None, "rows": 0, "embedded": 0},
        "boilerplate": boilerplate_summary,
        "prefilter_choice": prefilter_choice,
    }
    if references:
        manifest["references"] = [
            {"path": r.label, "kind": r.kind, "rows": int(np.sum(plan.reference == i))} for i, r in enumerate(references)
        ]
    if m:
        batches = VectorBatches(vectors.stores, vectors.lookup)
        dim = next(d for d in (store.dimension() for store in vectors.stores) if d is not None)
        with timings.stage("index_search"):
            neighbors, index_used = search(config, batches, m, dim, floor)
        manifest["index"] = {"kind": index_used.kind, "chosen_by_auto": config.index.kind == "auto",
                             "shards": index_used.shards, "gpu": index_used.gpu}
        manifest["vectors"].update(vectors_record(vectors), dim=dim, **batches.stats())
        if index_used.kind == "ivf":
            with timings.stage("ivf_recall"):
                manifest["ivf_recall"] = measure_recall(batches, neighbors, m, floor)
        if prefilter:
            with timings.stage("confirm"):
                neighbors, summary, confirmed = confirm_pairs(config, output, plan, neighbors, references)
            # dedup.vectors: what the recorded similarities come from; dedup.prefilter: the first pass.
            manifest["prefilter"] = {**vectors_record(vectors), **summary}
            manifest["vectors"].update(vectors_record(confirmed))
    else:
        empty = np.empty(0, np.int64)
        neighbors = Neighbors(empty, empty, np.empty(0, np.float32), empty, np.empty(0, np.float32), 0)
    with timings.stage("resolve"):
        neighbors = without_reference_pairs(plan, neighbors)
        decisions, stats = decide(plan, neighbors, config.dedup, tuple(r.label for r in references))
        manifest.update(stats)
        manifest["neighbor_files"] = write_neighbors(output, plan, neighbors)
    return DedupOutcome(decisions, manifest)
