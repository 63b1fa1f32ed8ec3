"""Dedup decisions on synthetic vectors (exact, no Ray): invariance over shards, the keep rule's
guarantees, exact-duplicate chains, and --keep none against the notebook's rule."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pytest

from jobs.config import DedupConfig
from jobs.dedup import decide, plan_candidates, with_source_encoded
from operators import schema
from operators.exact_dedup import DEDUP_KEY, TEXT_SHA1, exact_groups
from operators.index import IndexConfig, search_in_process

DIM = 64


@pytest.fixture(scope="module")
def corpus():
    """2,400 rows in 6 files: planted near-duplicate groups across files, and exact copies."""
    rng = np.random.default_rng(3)
    n_base = 2000
    base = rng.standard_normal((n_base, DIM)).astype(np.float32)
    vectors, keys = [], []
    for i in range(n_base):
        vectors.append(base[i])
        keys.append(f"k{i}")
    # near-duplicate groups: a base row and perturbed copies (some groups bigger than max_neighbors)
    for g, size in enumerate([2] * 150 + [5] * 20 + [40]):
        for _ in range(size - 1):
            vectors.append(base[g] + rng.normal(0, 0.08, DIM).astype(np.float32))
            keys.append(f"near{len(keys)}")
    # exact copies share the key and the vector of their original: 60 of base rows, 30 of
    # near-duplicate members (about half of which lose to their base, so their copies chain)
    for i in rng.choice(n_base, 60, replace=False):
        vectors.append(base[i])
        keys.append(f"k{i}")
    for j in range(n_base, n_base + 30):
        vectors.append(vectors[j])
        keys.append(keys[j])
    vectors = np.stack(vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(keys)
    order = rng.permutation(n)  # spread groups over files and rows
    sources = [f"data/f{j % 6}.jsonl" for j in range(n)]
    table = pa.table(
        {
            schema.ID: [f"id{j:05d}" for j in range(n)],
            schema.SOURCE: [sources[o] for o in order],
            schema.SOURCE_ROW: pa.array(order // 6, pa.int64()),
            schema.RESPONSE_TOKENS: pa.array(rng.integers(5, 500, n), pa.int32()),
            DEDUP_KEY: keys,
            TEXT_SHA1: keys,
        }
    )
    return table, vectors


def rep_vectors(plan, table, vectors):
    position = {i: k for k, i in enumerate(table.column(schema.ID).to_pylist())}
    return np.stack([vectors[position[i]] for i in plan.rep_ids.to_pylist()])


def run(corpus, shards, keep="first", threshold=0.95):
    table, vectors = corpus
    dedup = DedupConfig(keep=keep, threshold=threshold)
    plan = plan_candidates(table, keep)
    reps = rep_vectors(plan, table, vectors)
    config = IndexConfig(shards=shards, max_neighbors=8)
    neighbors = search_in_process(np.arange(len(reps)), reps, config, dedup.recorded)
    decisions, stats = decide(plan, neighbors, dedup)
    return plan, reps, neighbors, decisions.sort_by(schema.ID), stats


def test_decisions_identical_for_1_2_4_shards(corpus):
    _, _, _, one, stats = run(corpus, 1)
    assert stats["rows_researched"] > 0  # the 40-row group is larger than max_neighbors
    for shards in (2, 4):
        assert run(corpus, shards)[3].equals(one)


@pytest.mark.parametrize("keep", ["first", "longest"])
def test_a_dictionary_encoded_source_ranks_and_decides_as_plain_strings(corpus, keep):
    # The driver holds `source` dictionary-encoded, each batch with its own dictionary (jobs/dedup.py,
    # load_candidate_keys): ranks compare the paths' text, not the dictionary codes, so the plan is the same.
    table, _ = corpus
    plain = plan_candidates(table, keep)
    batches = [with_source_encoded(table.slice(start, 700)) for start in range(0, table.num_rows, 700)]
    assert len({b.column(schema.SOURCE).chunk(0).dictionary.to_pylist()[0] for b in batches}) > 1
    encoded = plan_candidates(pa.concat_tables(batches), keep)
    assert encoded.ids.equals(plain.ids)
    assert np.array_equal(encoded.group_rep, plain.group_rep)
    assert encoded.sources.cast(pa.string()).equals(plain.sources)
    assert encoded.source_rows.equals(plain.source_rows)


@pytest.mark.parametrize("keep", ["first", "longest"])
def test_keep_rule_guarantees(corpus, keep):
    table, vectors = corpus
    plan, reps, _, decisions, stats = run(corpus, 2, keep=keep)
    removed = dict(zip(decisions.column(schema.ID).to_pylist(), decisions.to_pylist()))
    all_ids = table.column(schema.ID).to_pylist()
    kept_ids = [i for i in all_ids if i not in removed]
    position = {i: k for k, i in enumerate(all_ids)}
    kept_vectors = vectors[[position[i] for i in kept_ids]]
    # No two kept rows are near-duplicates (brute force over every kept pair).
    sims = kept_vectors @ kept_vectors.T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.95
    # Every removed row names a kept row, at its similarity.
    for row in decisions.to_pylist():
        assert row["duplicate_of"] not in removed
        sim = float(vectors[position[row["id"]]] @ vectors[position[row["duplicate_of"]]])
        if row["reason"] == schema.EXACT_DUPLICATE:
            assert row["similarity"] == 1.0
        else:
            assert row["similarity"] >= 0.95 and abs(row["similarity"] - sim) < 1e-5
    assert stats["exact_duplicates_removed"] == 90
    # the planted groups: 150*1 + 20*4 + 39 near-duplicates
    assert stats["near_duplicates_removed"] == 150 + 80 + 39


def test_keep_first_keeps_the_earliest_row_of_each_group(corpus):
    table, _ = corpus
    plan, _, _, decisions, _ = run(corpus, 1)
    key = {r[schema.ID]: (r[schema.SOURCE], r[schema.SOURCE_ROW]) for r in table.to_pylist()}
    for row in decisions.to_pylist():
        assert key[row["duplicate_of"]] < key[row["id"]]


def test_keep_longest_keeps_the_longest_answer(corpus):
    table, _ = corpus
    tokens = dict(zip(table.column(schema.ID).to_pylist(), table.column(schema.RESPONSE_TOKENS).to_pylist()))
    key = dict(zip(table.column(schema.ID).to_pylist(), table.column(DEDUP_KEY).to_pylist()))
    _, _, _, decisions, _ = run(corpus, 1, keep="longest")
    rows = decisions.to_pylist()
    near = [r for r in rows if r["reason"] == schema.NEAR_DUPLICATE]
    copies_of_kept_rep = [r for r in rows if r["reason"] == schema.EXACT_DUPLICATE and key[r["duplicate_of"]] == key[r["id"]]]
    assert near and copies_of_kept_rep
    assert all(tokens[r["duplicate_of"]] >= tokens[r["id"]] for r in near + copies_of_kept_rep)


def test_keep_none_is_the_notebook_rule(corpus):
    """The tutorial: IndexFlatIP over all rows (copies included), k=2, remove rows whose 2nd score >= t."""
    table, vectors = corpus
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    scores, _ = index.search(vectors, 2)
    notebook_removed = set(np.asarray(table.column(schema.ID).to_pylist())[scores[:, 1] >= 0.95].tolist())
    _, _, _, decisions, _ = run(corpus, 4, keep="none")
    assert set(decisions.column(schema.ID).to_pylist()) == notebook_removed


def test_exact_duplicate_names_the_final_kept_row(corpus):
    """A copy of a row that was itself removed as a near-duplicate points at the row kept instead."""
    table, _ = corpus
    key = dict(zip(table.column(schema.ID).to_pylist(), table.column(DEDUP_KEY).to_pylist()))
    _, _, _, decisions, _ = run(corpus, 1)
    removed = {r["id"]: r for r in decisions.to_pylist()}
    copies = [r for r in removed.values() if r["reason"] == schema.EXACT_DUPLICATE]
    chained = [r for r in copies if key[r["duplicate_of"]] != key[r["id"]]]
    assert chained, "the corpus should hold a copy whose original lost to a near-duplicate"
    assert all(r["duplicate_of"] not in removed for r in copies)


def test_exact_groups_names_each_rows_first_copy_across_chunks():
    rng = np.random.default_rng(0)
    keys = [f"k{v}" for v in rng.integers(0, 300, size=2000)]
    # Reference: for each row, the first row with the same key, found the plain way.
    first_seen: dict[str, int] = {}
    expected = np.array([first_seen.setdefault(key, row) for row, key in enumerate(keys)])
    chunked = pa.chunked_array([keys[:700], [], keys[700:1500], keys[1500:]])
    assert np.array_equal(exact_groups(chunked), expected)
    assert np.array_equal(exact_groups(pa.array(keys)), expected)
    assert len(exact_groups(pa.chunked_array([], pa.string()))) == 0


def test_exact_groups_of_unranked_keys_equal_those_of_the_ranked_copy():
    """Planning hashes the keys where they lie and ranks only their codes: the groups must be those of
    `keys.take(order)`, chunked or not, nulls (one group) included."""
    rng = np.random.default_rng(1)
    keys = [None if v == 0 else f"k{v}" for v in rng.integers(0, 200, size=1500)]
    order = rng.permutation(len(keys))
    ranked = [keys[i] for i in order]
    first_seen: dict = {}
    expected = np.array([first_seen.setdefault(key, rank) for rank, key in enumerate(ranked)])
    chunked = pa.chunked_array([keys[:400], keys[400:]], pa.string())
    assert np.array_equal(exact_groups(chunked, order), expected)
    assert np.array_equal(exact_groups(pa.array(keys), order), expected)
    assert not np.array_equal(exact_groups(pa.array(keys)), expected)  # the order really matters here


def test_key_digests_group_as_the_hex_keys_do_and_refuse_what_is_not_a_digest():
    """The driver groups exact keys as their 20 bytes (load_candidate_keys): the same groups as the hex text, on
    sliced and chunked columns; a key that is not a SHA-1 hex digest is an error, never a silent regrouping."""
    import hashlib

    from operators.exact_dedup import key_digests

    rng = np.random.default_rng(1)
    hexes = [hashlib.sha1(str(v).encode()).hexdigest() for v in rng.integers(0, 300, 2000)]  # many repeats
    column = pa.chunked_array([pa.array(hexes[:700]), pa.array(hexes).slice(700)])
    digests = key_digests(column)
    assert digests.type == pa.binary(20) and digests.to_pylist() == [bytes.fromhex(h) for h in hexes]
    order = rng.permutation(len(hexes))
    assert np.array_equal(exact_groups(digests, order), exact_groups(column, order))
    for bad in (["0" * 39], ["A" * 40], ["g" * 40], [None]):
        with pytest.raises(ValueError, match="SHA-1 hex digests"):
            key_digests(pa.array(bad, pa.string()))
    assert len(key_digests(pa.array([], pa.string()))) == 0


def test_prefilter_is_refused_up_front_where_the_cluster_embeds_on_gpus():
    from jobs.config import PrepareConfig
    from jobs.dedup import check_prefilter_device

    prefiltered = PrepareConfig.from_options({"embed_prefilter": "bf16"})
    check_prefilter_device(prefiltered, {"CPU": 16.0})  # CPU only: runs
    check_prefilter_device(PrepareConfig.from_options({}), {"CPU": 16.0, "GPU": 2.0})  # auto: runs, in fp16
    check_prefilter_device(PrepareConfig.from_options({"embed_prefilter": "bf16", "no_dedup": True}),
                           {"CPU": 16.0, "GPU": 2.0})  # no dedup, nothing embedded
    with pytest.raises(ValueError, match="--embed-prefilter bf16 is for CPU runs.*2 GPUs"):
        check_prefilter_device(prefiltered, {"CPU": 16.0, "GPU": 2.0})
