"""--against on synthetic vectors (exact, no Ray): references rank first, are never removed and never remove one
another; an input row that duplicates one is in_reference; and the incremental contract: old kept rows as the
reference give the new rows the decisions of one combined keep-first run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jobs.config import DedupConfig
from jobs.dedup import decide, plan_candidates
from operators import schema
from operators.exact_dedup import DEDUP_KEY, REFERENCE, TEXT_SHA1
from operators.index import IndexConfig, search_in_process

DIM = 32


def make_rows(rng, base, n, source, start_key, near_of=(), copies_of=()):
    """n rows: fresh random vectors, plus near duplicates and exact copies of the given (key, vector) rows."""
    vectors, keys = [], []
    for i in range(n):
        vectors.append(rng.standard_normal(DIM).astype(np.float32))
        keys.append(f"{start_key}{i}")
    for key, vector in near_of:
        vectors.append(vector + rng.normal(0, 0.05, DIM).astype(np.float32))
        keys.append(f"{start_key}near-{key}")
    for key, vector in copies_of:
        vectors.append(vector.copy())
        keys.append(key)
    vectors = np.stack(vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.table(
        {
            schema.ID: [f"{source}-{j}" for j in range(len(keys))],
            schema.SOURCE: [source] * len(keys),
            schema.SOURCE_ROW: pa.array(range(len(keys)), pa.int64()),
            schema.RESPONSE_TOKENS: pa.array(rng.integers(5, 500, len(keys)), pa.int32()),
            DEDUP_KEY: keys,
            TEXT_SHA1: keys,
        }
    )
    return table, vectors


def as_reference(table: pa.Table, index: int) -> pa.Table:
    ids = [f"r{index}:{i}" for i in table.column(schema.ID).to_pylist()]
    return table.set_column(0, schema.ID, pa.array(ids)).append_column(
        REFERENCE, pa.array([index] * table.num_rows, pa.int32())
    )


def run(table, vectors, keep="first", threshold=0.95, labels=()):
    dedup = DedupConfig(keep=keep, threshold=threshold)
    plan = plan_candidates(table, keep)
    position = {i: k for k, i in enumerate(table.column(schema.ID).to_pylist())}
    reps = np.stack([vectors[position[i]] for i in plan.rep_ids.to_pylist()])
    neighbors = search_in_process(np.arange(len(reps)), reps, IndexConfig(shards=2, max_neighbors=4), dedup.recorded)
    decisions, stats = decide(plan, neighbors, dedup, labels)
    return {r[schema.ID]: r for r in decisions.to_pylist()}, stats


@pytest.fixture(scope="module")
def old_and_new():
    rng = np.random.default_rng(11)
    old, old_vectors = make_rows(rng, None, 300, "1-old/a.jsonl", "o")
    # old has its own duplicates (so some old rows are removed and absent from the old output)
    pick = rng.choice(300, 40, replace=False)
    keys = old.column(DEDUP_KEY).to_pylist()
    dups, dup_vectors = make_rows(
        rng, None, 0, "1-old/b.jsonl", "ob", near_of=[(keys[i], old_vectors[i]) for i in pick[:20]],
        copies_of=[(keys[i], old_vectors[i]) for i in pick[20:]],
    )
    old, old_vectors = pa.concat_tables([old, dups]), np.concatenate([old_vectors, dup_vectors])
    keys = old.column(DEDUP_KEY).to_pylist()
    # new: fresh rows, near duplicates and exact copies of old rows (kept and removed ones), and of itself
    pick = rng.choice(len(keys), 60, replace=False)
    new, new_vectors = make_rows(
        rng, None, 200, "2-new/a.jsonl", "n", near_of=[(keys[i], old_vectors[i]) for i in pick[:30]],
        copies_of=[(keys[i], old_vectors[i]) for i in pick[30:]],
    )
    new_keys = new.column(DEDUP_KEY).to_pylist()
    more, more_vectors = make_rows(
        rng, None, 0, "2-new/b.jsonl", "nb", near_of=[(new_keys[i], new_vectors[i]) for i in range(10)],
        copies_of=[(new_keys[i], new_vectors[i]) for i in range(10, 15)],
    )
    new, new_vectors = pa.concat_tables([new, more]), np.concatenate([new_vectors, more_vectors])
    return (old, old_vectors), (new, new_vectors)


def kept_ids(table, decisions):
    return {i for i in table.column(schema.ID).to_pylist() if i not in decisions}


def test_incremental_run_against_old_output_equals_one_combined_run(old_and_new):
    (old, old_vectors), (new, new_vectors) = old_and_new
    # keep-first on old + new together, every old row first (its sources sort first)
    combined, _ = run(pa.concat_tables([old, new]), np.concatenate([old_vectors, new_vectors]))
    # old alone, then new against old's kept rows
    old_decisions, _ = run(old, old_vectors)
    old_kept = [i for i, row_id in enumerate(old.column(schema.ID).to_pylist()) if row_id not in old_decisions]
    reference = as_reference(old.take(old_kept), 0)
    incremental, stats = run(
        pa.concat_tables([reference, new.append_column(REFERENCE, pa.nulls(new.num_rows, pa.int32()))]),
        np.concatenate([old_vectors[old_kept], new_vectors]), labels=("out-old",),
    )
    assert kept_ids(old, old_decisions) == kept_ids(old, combined)
    assert kept_ids(new, incremental) == kept_ids(new, combined)
    # references are never decided, and every removal naming one says so
    assert not any(i.startswith("r0:") for i in incremental)
    in_reference = [r for r in incremental.values() if r[schema.REASON] == schema.IN_REFERENCE]
    assert stats["in_reference_removed"] == len(in_reference) >= 40
    old_ids = set(old.column(schema.ID).to_pylist())
    for row in in_reference:
        assert row[schema.DUPLICATE_OF] in old_ids  # the reference row's own id, no prefix
        assert row[schema.DUPLICATE_OF_SOURCE].endswith(" in out-old")
        assert row[schema.DUPLICATE_OF_SOURCE].startswith("1-old/")
    assert all(r[schema.DUPLICATE_OF] not in old_ids for r in incremental.values() if r[schema.REASON] != schema.IN_REFERENCE)


def test_references_are_never_removed_and_never_remove_one_another():
    rng = np.random.default_rng(5)
    ref, ref_vectors = make_rows(rng, None, 50, "ref/a.jsonl", "r")
    keys = ref.column(DEDUP_KEY).to_pylist()
    twins, twin_vectors = make_rows(rng, None, 0, "ref/b.jsonl", "rb", near_of=[(keys[0], ref_vectors[0])],
                                    copies_of=[(keys[1], ref_vectors[1])])
    ref, ref_vectors = pa.concat_tables([ref, twins]), np.concatenate([ref_vectors, twin_vectors])
    # an input that duplicates only the reference row's near twin, and one that copies the copied row
    inputs, input_vectors = make_rows(rng, None, 5, "in/a.jsonl", "i", near_of=[("x", twin_vectors[0])],
                                      copies_of=[(keys[1], ref_vectors[1])])
    table = pa.concat_tables([as_reference(ref, 0), inputs.append_column(REFERENCE, pa.nulls(inputs.num_rows, pa.int32()))])
    decisions, stats = run(table, np.concatenate([ref_vectors, input_vectors]), labels=("refs",))
    assert set(decisions) == {"in/a.jsonl-5", "in/a.jsonl-6"}
    assert {r[schema.REASON] for r in decisions.values()} == {schema.IN_REFERENCE}
    assert decisions["in/a.jsonl-6"][schema.SIMILARITY] == 1.0
    assert decisions["in/a.jsonl-6"][schema.DETAIL].startswith("same normalized")
    assert decisions["in/a.jsonl-5"][schema.DETAIL].startswith("cosine")
    assert stats["candidates"] == 7 and stats["exact_duplicate_groups"] == 0


def test_keep_none_removes_every_input_with_a_reference_duplicate():
    rng = np.random.default_rng(9)
    ref, ref_vectors = make_rows(rng, None, 20, "ref/a.jsonl", "r")
    keys = ref.column(DEDUP_KEY).to_pylist()
    inputs, input_vectors = make_rows(rng, None, 20, "in/a.jsonl", "i", near_of=[(keys[3], ref_vectors[3])],
                                      copies_of=[(keys[4], ref_vectors[4])])
    in_keys = inputs.column(DEDUP_KEY).to_pylist()
    more, more_vectors = make_rows(rng, None, 0, "in/b.jsonl", "ib", near_of=[(in_keys[0], input_vectors[0])])
    inputs, input_vectors = pa.concat_tables([inputs, more]), np.concatenate([input_vectors, more_vectors])
    table = pa.concat_tables([as_reference(ref, 0), inputs.append_column(REFERENCE, pa.nulls(inputs.num_rows, pa.int32()))])
    decisions, _ = run(table, np.concatenate([ref_vectors, input_vectors]), keep="none")
    reasons = {i: r[schema.REASON] for i, r in decisions.items()}
    assert reasons == {
        "in/a.jsonl-20": schema.IN_REFERENCE, "in/a.jsonl-21": schema.IN_REFERENCE,
        "in/a.jsonl-0": schema.NEAR_DUPLICATE, "in/b.jsonl-0": schema.NEAR_DUPLICATE,
    }


def test_a_row_near_a_kept_input_and_a_reference_names_the_reference():
    """Y (input) is 0.93 from reference R: kept. X lies between them, 0.992 from Y and 0.969 from R: greedy alone
    would name Y, but a duplicate of a reference row is in_reference, whatever else it duplicates."""
    rng = np.random.default_rng(2)
    r = rng.standard_normal(DIM)
    r /= np.linalg.norm(r)
    u = rng.standard_normal(DIM)
    u -= (u @ r) * r
    u /= np.linalg.norm(u)
    y = 0.93 * r + np.sqrt(1 - 0.93**2) * u
    x = (r + 2 * y) / np.linalg.norm(r + 2 * y)
    ref, _ = make_rows(rng, None, 1, "ref/a.jsonl", "r")
    inputs, _ = make_rows(rng, None, 2, "in/a.jsonl", "i")
    table = pa.concat_tables([as_reference(ref, 0), inputs.append_column(REFERENCE, pa.nulls(2, pa.int32()))])
    decisions, _ = run(table, np.stack([r, y, x]).astype(np.float32), labels=("refs",))
    assert list(decisions) == ["in/a.jsonl-1"]
    row = decisions["in/a.jsonl-1"]
    assert row[schema.REASON] == schema.IN_REFERENCE and row[schema.DUPLICATE_OF] == "ref/a.jsonl-0"
    assert row[schema.SIMILARITY] == pytest.approx((1 + 2 * 0.93) / np.sqrt(5 + 4 * 0.93), abs=1e-5)
