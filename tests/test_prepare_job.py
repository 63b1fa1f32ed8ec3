"""End to end on a local Ray: the sample through the whole prepare job, accounting, determinism, commit."""

from __future__ import annotations

import glob
import json
import os

import pyarrow.parquet as pq
import pytest

from jobs import prepare
from jobs.config import PrepareConfig
from jobs.sample import SampleConfig, write_sample
from operators import schema
from operators.write import OutputExistsError



@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("in") / "sample"
    summary = write_sample(directory, SampleConfig(rows=600, shards=3, seed=7))
    return directory, summary


def run_job(output, inputs, **options):
    config = PrepareConfig.from_options({"input": [str(i) for i in inputs], "output": str(output), **options})
    return prepare.run(config)


def read_dir(output, subdir):
    return [pq.read_table(f) for f in sorted(glob.glob(os.path.join(output, subdir, "*.parquet")))]


def assert_same_rows_and_removals(output, other_dir):
    """Byte-equal data/ and rejected/; the same removals (id, reason, duplicate_of), similarities within 1e-6
    (a text's vector moves by ~1e-7 with the texts sharing its embedding batch)."""
    for subdir in ("data", "rejected"):
        ours, theirs = read_dir(output, subdir), read_dir(other_dir, subdir)
        assert len(ours) == len(theirs) and all(a.equals(b) for a, b in zip(ours, theirs)), subdir
    ours = [r for t in read_dir(output, "removed") for r in t.to_pylist()]
    theirs = [r for t in read_dir(other_dir, "removed") for r in t.to_pylist()]
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in ours] == [
        (r["id"], r["reason"], r["duplicate_of"]) for r in theirs
    ]
    for a, b in zip(ours, theirs):
        assert (a["similarity"] is None) == (b["similarity"] is None)
        if a["similarity"] is not None:
            assert abs(a["similarity"] - b["similarity"]) <= 1e-6


@pytest.fixture(scope="module")
def one_actor_run(ray_local, sample, tmp_path_factory):
    output = tmp_path_factory.mktemp("out1")
    # One read task per file (read_group_mb=0): the rows checkpoint has several files to order. Every text in
    # full precision (--embed-prefilter none): the reference the prefilter runs are compared with, on any CPU.
    manifest = run_job(output, [sample[0]], tokenize_actors=1, embed_actors=1, index_shards=1, rows_per_shard=200,
                       read_group_mb=0, embed_prefilter="none")
    return output, manifest


def test_every_row_is_accounted_for_with_its_planted_reason(one_actor_run, sample):
    output, manifest = one_actor_run
    _, summary = sample
    rows = manifest["rows"]
    assert rows["read"] == summary["rows"] == 600
    assert rows["read"] == rows["kept"] + rows["removed"] + rows["rejected"]
    planted = {k: n for k, n in summary["kinds"].items() if k in schema.REMOVAL_REASONS + schema.REJECTION_ERRORS}
    expected = {k: n for k, n in planted.items() if k != schema.PREFERENCE_PAIR and n}
    assert rows["by_reason"] == expected  # planted exact and near duplicates included
    # The files say the same as the manifest.
    kept = sum(t.num_rows for t in read_dir(output, "data"))
    removed = [r for t in read_dir(output, "removed") for r in t.to_pylist()]
    rejected = [r for t in read_dir(output, "rejected") for r in t.to_pylist()]
    assert (kept, len(removed), len(rejected)) == (rows["kept"], rows["removed"], rows["rejected"])
    assert all(r["reason"] in schema.REMOVAL_REASONS and r["detail"] for r in removed)
    assert all(r["error"] in schema.REJECTION_ERRORS and r["raw"] for r in rejected)
    too_long = [r for r in removed if r["reason"] == schema.TOO_LONG]
    assert too_long and all(r["num_tokens"] > 4096 for r in too_long)
    assert os.path.exists(os.path.join(output, "_SUCCESS"))


def test_kept_rows_are_sorted_sharded_and_templated(one_actor_run):
    output, manifest = one_actor_run
    tables = read_dir(output, "data")
    names = sorted(os.path.basename(f) for f in glob.glob(os.path.join(output, "data", "*.parquet")))
    count = len(names)
    assert names == [f"part-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    assert [t.num_rows for t in tables[:-1]] == [200] * (count - 1) and 0 < tables[-1].num_rows <= 200
    rows = [r for t in tables for r in t.to_pylist()]
    keys = [(r["source"], r["source_row"]) for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # Read tasks take whole files in source order: the checkpoint's files are ordered without a shuffle.
    assert manifest["ordering"]["checkpoint_files"] >= 2 and not manifest["ordering"]["distributed_sort"]
    for r in rows:
        assert r["id"] == schema.row_id(r["source"], r["source_row"])
        assert r["source"].startswith("sample/shard-")
        assert r["text"].startswith("<s> [INST] ") and r["text"].endswith("</s>")
        assert r["prompt_tokens"] + r["response_tokens"] == r["num_tokens"] <= 4096
        assert {m["role"] for m in r["messages"]} <= {"system", "user", "assistant"}
    assert tables[0].schema.remove_metadata() == schema.DATA_SCHEMA
    assert manifest["tokens"]["kept"]["num_tokens"]["rows"] == len(rows)
    assert manifest["tokens"]["kept"]["num_tokens"]["max"] == max(r["num_tokens"] for r in rows)


def test_output_loads_with_datasets(one_actor_run):
    datasets = pytest.importorskip("datasets")
    output, manifest = one_actor_run
    ds = datasets.load_dataset("parquet", data_files=os.path.join(output, "data", "*.parquet"), split="train")
    assert ds.num_rows == manifest["rows"]["kept"]
    assert set(ds.column_names) == set(schema.DATA_SCHEMA.names)


def test_same_output_with_more_actors_and_index_shards(one_actor_run, sample, tmp_path):
    """4 tokenizer actors, 2 embedding actors, 4 index shards: the same rows; similarities within 1e-6."""
    output, manifest = one_actor_run
    other_dir = tmp_path / "out4"
    # Small blocks: 600 rows become many blocks, so every actor of each pool really shares the work.
    other = run_job(
        other_dir, [sample[0]], tokenize_actors=4, embed_actors=2, index_shards=4, rows_per_shard=200,
        tokenize_batch_size=16, block_size_mb=0.02,
    )
    assert other["rows"] == manifest["rows"] and other["tokens"] == manifest["tokens"]
    assert_same_rows_and_removals(output, other_dir)


def test_near_duplicates_across_files_are_found_and_explained(one_actor_run):
    output, manifest = one_actor_run
    removed = [r for t in read_dir(output, "removed") for r in t.to_pylist()]
    kept = {r["id"]: r for t in read_dir(output, "data") for r in t.to_pylist()}
    near = [r for r in removed if r["reason"] == schema.NEAR_DUPLICATE]
    exact = [r for r in removed if r["reason"] == schema.EXACT_DUPLICATE]
    assert near and exact
    for r in near + exact:
        assert r["duplicate_of"] in kept  # always a kept row
        assert (kept[r["duplicate_of"]]["source"], kept[r["duplicate_of"]]["source_row"]) < (r["source"], r["source_row"])
    assert all(r["similarity"] >= 0.95 for r in near) and all(r["similarity"] == 1.0 for r in exact)
    assert any(kept[r["duplicate_of"]]["source"] != r["source"] for r in near)  # across input files
    pairs = pq.read_table(os.path.join(output, "neighbors", "pairs")).to_pylist()
    assert all(p["similarity"] >= 0.90 for p in pairs)
    assert {(r["duplicate_of"], r["id"]) for r in near} <= {(p["id_a"], p["id_b"]) for p in pairs} | {
        (p["id_b"], p["id_a"]) for p in pairs
    }
    best = pq.read_table(os.path.join(output, "neighbors", "best"))
    assert best.num_rows == manifest["dedup"]["candidates"]


def test_rethreshold_equals_a_fresh_run_on_the_same_vectors(one_actor_run, sample, tmp_path):
    import shutil

    from jobs import rethreshold

    output, manifest = one_actor_run
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    # The planted near-duplicates sit at 0.99-0.9999: 0.996 really changes decisions.
    moved = rethreshold.run(str(output), 0.996, str(tmp_path / "re"))
    near = schema.NEAR_DUPLICATE
    assert 0 < moved["rows"]["by_reason"][near] < manifest["rows"]["by_reason"][near]
    fresh = run_job(copy, [sample[0]], tokenize_actors=1, rows_per_shard=200, threshold=0.996, overwrite=True)
    assert fresh["dedup"]["vectors"]["reused"]  # the same vectors, not embedded again
    # The CPU default runtime embedded them, and a reuse still says which one did.
    assert fresh["dedup"]["vectors"]["runtime"] == manifest["dedup"]["vectors"]["runtime"] == "openvino-fp32"
    assert moved["rows"] == fresh["rows"]
    for subdir in ("data", "removed", "rejected"):
        ours, theirs = read_dir(tmp_path / "re", subdir), read_dir(copy, subdir)
        assert len(ours) == len(theirs) and all(a.equals(b) for a, b in zip(ours, theirs)), subdir
    with pytest.raises(ValueError, match="record threshold"):
        rethreshold.run(str(output), 0.5, str(tmp_path / "low"))


def test_complete_output_is_not_overwritten_without_flag(one_actor_run, sample):
    output, _ = one_actor_run
    before = sorted(glob.glob(os.path.join(output, "**"), recursive=True))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_job(output, [sample[0]])
    assert sorted(glob.glob(os.path.join(output, "**"), recursive=True)) == before


def test_failed_attempt_leaves_no_stale_files(ray_local, sample, tmp_path):
    output = tmp_path / "out"
    # An earlier attempt that died mid-write: more shards than this run makes, no _SUCCESS.
    (output / "data").mkdir(parents=True)
    (output / "data" / "part-00007-of-00009.parquet").write_bytes(b"stale")
    (output / "manifest.json").write_text("{}")
    manifest = run_job(output, [sample[0]], max_tokens=100, min_tokens=5, no_dedup=True)
    assert not (output / "data" / "part-00007-of-00009.parquet").exists()
    assert json.loads((output / "manifest.json").read_text())["rows"] == manifest["rows"]
    # max/min tokens reach the length filter
    assert manifest["rows"]["by_reason"].get(schema.TOO_LONG, 0) > manifest["rows"]["by_reason"].get(
        schema.SPECIAL_TOKEN_IN_CONTENT, 0
    )
    assert all(r["num_tokens"] <= 100 for t in read_dir(output, "data") for r in t.to_pylist())
    # --overwrite replaces a complete output
    again = run_job(output, [sample[0]], max_tokens=4096, overwrite=True, no_dedup=True)
    assert again["rows"]["by_reason"].get(schema.TOO_LONG) == sum(
        1 for r in read_dir(output, "removed")[0].to_pylist() if r["reason"] == schema.TOO_LONG
    )


def test_ivf_index_records_its_recall_and_finds_the_same_duplicates(one_actor_run, sample, tmp_path):
    import shutil

    output, manifest = one_actor_run
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    # --index auto above --index-flat-max-rows is IVF (the default run, far below it, was flat)
    assert manifest["dedup"]["index"] == {"kind": "flat", "chosen_by_auto": True, "shards": 1, "gpu": False}
    ivf = run_job(copy, [sample[0]], tokenize_actors=1, rows_per_shard=200, index="auto", index_flat_max_rows=100,
                  index_shards=2, overwrite=True)
    assert ivf["dedup"]["index"] == {"kind": "ivf", "chosen_by_auto": True, "shards": 2, "gpu": False}
    assert ivf["dedup"]["vectors"]["reused"]
    recall = ivf["dedup"]["ivf_recall"]
    assert recall["sample_rows"] > 0 and recall["recall"] >= 0.99
    assert ivf["rows"]["by_reason"] == manifest["rows"]["by_reason"]


def test_int8_prefilter_confirmed_in_fp32_decides_as_the_fp32_run(one_actor_run, sample, tmp_path):
    """--embed-prefilter int8 (any CPU; bf16 works alike on CPUs with bf16 units): only the texts of the pairs the
    int8 search finds are embedded in fp32, and the pairs, similarities and decisions are the fp32 run's."""
    output, manifest = one_actor_run
    other_dir = tmp_path / "prefiltered"
    other = run_job(other_dir, [sample[0]], tokenize_actors=1, rows_per_shard=200, embed_prefilter="int8")
    assert other["rows"] == manifest["rows"]
    assert_same_rows_and_removals(output, other_dir)  # fp32 similarities, not int8 ones
    pairs = {(p["id_a"], p["id_b"]): p["similarity"]
             for p in pq.read_table(os.path.join(output, "neighbors", "pairs")).to_pylist()}
    confirmed = {(p["id_a"], p["id_b"]): p["similarity"]
                 for p in pq.read_table(os.path.join(other_dir, "neighbors", "pairs")).to_pylist()}
    assert confirmed.keys() == pairs.keys() and pairs
    assert max(abs(pairs[k] - confirmed[k]) for k in pairs) <= 1e-6
    prefilter = other["dedup"]["prefilter"]
    assert prefilter["runtime"] == "onnx-int8" and other["dedup"]["vectors"]["runtime"] == "openvino-fp32"
    # Each store holds what its runtime embedded: every text in int8, the confirmed ones in fp32.
    stores = {name: sum(pq.read_metadata(f).num_rows
                        for f in glob.glob(os.path.join(other_dir, other["dedup"][name]["checkpoint"], "*.parquet")))
              for name in ("prefilter", "vectors")}
    assert stores == {"prefilter": prefilter["texts"], "vectors": prefilter["texts_confirmed"]}
    assert 0 < prefilter["texts_confirmed"] < prefilter["texts"] == manifest["dedup"]["vectors"]["rows"]
    # A fresh output: every text embedded once in int8, each confirmed one once in fp32.
    assert (prefilter["embedded"], other["dedup"]["vectors"]["embedded"]) == (
        prefilter["texts"], prefilter["texts_confirmed"])
    assert prefilter["from_references"] == other["dedup"]["vectors"]["from_references"] == 0  # no --against
    assert prefilter["pairs_found"] > prefilter["pairs_recorded"] == len(pairs)
    assert 1e-4 < prefilter["max_similarity_moved"] < prefilter["margin"]  # really int8, within its margin
    from jobs.runtime import summary_table

    assert (f"prefilter: int8 search down to 0.7; {prefilter['texts_confirmed']:,} of {prefilter['texts']:,} texts "
            "embedded again in fp32") in summary_table(other, str(other_dir))
    card = (other_dir / "README.md").read_text()
    assert "Pairs found by the int8 prefilter" in card and "Embedding runtime: `openvino-fp32`." in card


def cpu_flags() -> set[str]:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_default_prefilter_follows_the_cpu_and_decides_as_full_precision(one_actor_run, sample, tmp_path):
    """--embed-prefilter auto, the default: the bf16 prefilter where the CPU has bf16 units (the kernel's flags
    say), every text in full precision elsewhere; either way the rows and removals are the full-precision run's."""
    output, manifest = one_actor_run
    assert manifest["dedup"]["prefilter_choice"] == {"asked": "none", "used": "none",
                                                     "why": "off (--embed-prefilter none)"}
    other_dir = tmp_path / "auto"
    other = run_job(other_dir, [sample[0]], tokenize_actors=1, rows_per_shard=200)
    assert_same_rows_and_removals(output, other_dir)
    choice, card = other["dedup"]["prefilter_choice"], (other_dir / "README.md").read_text()
    if cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        assert choice == {"asked": "auto", "used": "bf16", "why": "the built-in embedder on CPUs with bf16 units"}
        assert other["dedup"]["prefilter"]["runtime"] == "openvino-bf16"
        assert other["dedup"]["vectors"]["runtime"] == "openvino-fp32"
        assert "chosen by `--embed-prefilter auto`" in card
    else:
        assert choice == {"asked": "auto", "used": "none", "why": "the CPUs have no bf16 units (AMX or AVX512_BF16)"}
        assert "prefilter" not in other["dedup"] and "prefilter" not in card


def test_input_where_nothing_survives_gives_a_complete_empty_output(ray_local, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "bad.jsonl").write_text('{"bad json\n[1, 2]\n{"messages": [{"role": "user", "content": "only a question"}]}\n')
    (inputs / "empty.jsonl").write_text("\n\n")  # blank lines are not rows
    output = tmp_path / "out"
    manifest = run_job(output, [inputs])  # dedup on: the zero-candidate path
    assert manifest["rows"]["read"] == 3 and manifest["rows"]["kept"] == 0
    assert manifest["rows"]["by_reason"] == {
        schema.INVALID_JSON: 1, schema.NOT_AN_OBJECT: 1, schema.NO_ASSISTANT_TURN: 1
    }
    [data] = read_dir(output, "data")
    assert data.num_rows == 0 and data.schema.remove_metadata() == schema.DATA_SCHEMA
    assert (output / "_SUCCESS").exists()


def test_own_tokenizer_without_generation_block_end_to_end(ray_local, data_context, sample, tmp_path,
                                                            chatml_tokenizer_dir):
    directory = chatml_tokenizer_dir
    manifest = run_job(tmp_path / "out_chatml", [sample[0]], tokenizer=str(directory), no_dedup=True, tokenize_actors=1)
    kept = [r for t in read_dir(tmp_path / "out_chatml", "data") for r in t.to_pylist()]
    assert kept and all(r["text"].startswith("<|im_start|>") for r in kept)
    assert all(r["prompt_tokens"] + r["response_tokens"] == r["num_tokens"] for r in kept)
    assert manifest["tokens"]["rows_without_prompt_response_split"] == 0
    # A template whose prompts are not prefixes of the conversation: counts stay null, the job finishes.
    template = tmp_path / "counted.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] + ' ' }}{% endfor %}{{ messages | length }}")
    manifest = run_job(tmp_path / "counted", [sample[0]], chat_template=str(template), no_dedup=True,
                       tokenize_actors=1)
    assert manifest["tokens"]["rows_without_prompt_response_split"] == manifest["rows"]["read"] - sum(
        n for reason, n in manifest["rows"]["by_reason"].items() if reason in schema.REJECTION_ERRORS
        or reason in ("empty_conversation", "no_assistant_turn", "bad_role_order", "unsupported_role",
                      "unsupported_content", "negative_label", "preference_pair", "special_token_in_content"))
    assert manifest["tokens"]["kept"]["num_tokens"]["rows"] == manifest["rows"]["kept"]
    assert (tmp_path / "counted" / "_SUCCESS").exists()


def test_many_small_files_read_in_groups_give_the_same_output(ray_local, data_context, tmp_path):
    inputs = tmp_path / "many"
    inputs.mkdir()
    lines = [json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                      {"role": "assistant", "content": f"answer {i}"}]}) for i in range(60)]
    for i, line in enumerate(lines):
        (inputs / f"part-{i:04d}.jsonl").write_text(line + ("\n{broken\n" if i % 50 == 0 else "\n"))
    grouped = run_job(tmp_path / "grouped", [inputs], no_dedup=True, tokenize_actors=1)
    one_per_file = run_job(tmp_path / "single", [inputs], no_dedup=True, tokenize_actors=1, read_group_mb=0)
    assert grouped["rows"] == one_per_file["rows"] and grouped["rows"]["read"] == 62
    assert grouped["rows"]["rejected"] == 2
    for subdir in ("data", "removed", "rejected"):
        ours, theirs = read_dir(tmp_path / "grouped", subdir), read_dir(tmp_path / "single", subdir)
        assert len(ours) == len(theirs) and all(a.equals(b) for a, b in zip(ours, theirs)), subdir
