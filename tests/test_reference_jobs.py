"""End to end on real rows (../shared/data) and planted cases: `--against` an earlier output (the incremental
contract), `--decontaminate`, a plain input as reference, and `rethreshold --target-rows`."""

from __future__ import annotations

import glob
import json
import os

import pyarrow.parquet as pq
import pytest

from jobs import prepare, rethreshold
from jobs.config import PrepareConfig
from operators import schema
from operators.contamination import MIN_WHOLE_PROMPT_WORDS, words

OLD_ROWS, NEW_ROWS = 120, 100


def run_job(output, inputs, **options):
    config = PrepareConfig.from_options(
        # Every text in fp32 on any CPU: these tests follow how one full-precision store is filled and lent.
        {"input": [str(i) for i in inputs], "output": str(output), "embed_actors": 1, "embed_prefilter": "none",
         **options}
    )
    return prepare.run(config)


def rows_of(output, subdir):
    return [r for f in sorted(glob.glob(os.path.join(output, subdir, "*.parquet"))) for r in pq.read_table(f).to_pylist()]


def user_text(row):
    return "\n\n".join(part for part in (row["instruction"], row["input"]) if part)


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """1-old/: 120 real Alpaca rows. 2-new/: the next 100, plus exact copies and near duplicates (one sentence
    added to a long answer) of old rows, and near duplicates among the new rows. A benchmark whose prompts are
    three new rows' instructions: one long (caught by 13-grams, written differently), one short (only the
    embedding test can catch it)."""
    real = json.loads((shared_data / "llamafactory" / "alpaca_en_demo.json").read_text())
    root = tmp_path_factory.mktemp("incremental")
    old, fresh = real[:OLD_ROWS], real[OLD_ROWS : OLD_ROWS + NEW_ROWS]
    long_answers = [r for r in old if len(r["output"]) > 600]
    assert len(long_answers) >= 16
    planted = {
        "exact_of_old": [dict(r) for r in long_answers[:8]],
        "near_of_old": [{**r, "output": r["output"] + " I hope this helps."} for r in long_answers[8:16]],
        "near_of_new": [{**r, "output": r["output"] + " I hope this helps."}
                        for r in [r for r in fresh if len(r["output"]) > 600][:4]],
    }
    (root / "1-old").mkdir()
    (root / "1-old" / "alpaca.json").write_text(json.dumps(old))
    (root / "2-new").mkdir()
    new_rows = fresh + [r for rows in planted.values() for r in rows]
    (root / "2-new" / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new_rows))
    long_prompt = next(r for r in fresh[40:] if len(r["instruction"].split()) >= 16 and not r["input"])
    short_prompt = next(r for r in fresh if 4 <= len(words(r["instruction"])) < MIN_WHOLE_PROMPT_WORDS and not r["input"])
    reworded = long_prompt["instruction"].upper().replace(",", " ;").replace(" ", "  ")
    (root / "bench.jsonl").write_text(
        json.dumps({"question_id": 1, "turns": ["An unrelated first prompt about knitting socks.", reworded]}) + "\n"
        + json.dumps({"question": short_prompt["instruction"], "answer": "x"}) + "\n"
    )
    return {"root": root, "planted": planted, "new_rows": new_rows, "long": long_prompt, "short": short_prompt,
            "reworded": reworded}


@pytest.fixture(scope="module")
def runs(ray_local, corpus):
    root = corpus["root"]
    bench = str(root / "bench.jsonl")
    old = run_job(root / "out-old", [root / "1-old"])
    incremental = run_job(root / "out-inc", [root / "2-new"], against=[str(root / "out-old")], decontaminate=[bench])
    combined = run_job(root / "out-all", [root / "1-old", root / "2-new"], decontaminate=[bench])
    return {"old": old, "incremental": incremental, "combined": combined}


def content(rows):
    return sorted((r["source"], r["source_row"], json.dumps(r["messages"]), r["text"]) for r in rows)


def test_new_against_old_output_keeps_what_one_combined_run_keeps(runs, corpus):
    root = corpus["root"]
    combined_kept = rows_of(root / "out-all", "data")
    assert content(rows_of(root / "out-inc", "data")) == content(
        [r for r in combined_kept if r["source"].startswith("2-new/")])
    assert content(rows_of(root / "out-old", "data")) == content(
        [r for r in combined_kept if r["source"].startswith("1-old/")])
    removed = {r["id"]: r for r in rows_of(root / "out-inc", "removed")}
    in_reference = [r for r in removed.values() if r["reason"] == schema.IN_REFERENCE]
    old_ids = {r["id"] for r in rows_of(root / "out-old", "data")}
    assert len(in_reference) >= 16  # the 8 exact copies and the 8 near duplicates of old rows
    for row in in_reference:
        assert row["duplicate_of"] in old_ids
        assert row["duplicate_of_source"].startswith("1-old/alpaca.json#")
        assert row["duplicate_of_source"].endswith(" in " + str(root / "out-old"))
    exact = [r for r in in_reference if r["detail"].startswith("same normalized")]
    assert len(exact) >= 8 and all(r["similarity"] == 1.0 for r in exact)
    # the planted near duplicates among the new rows are plain near duplicates
    assert sum(r["reason"] == schema.NEAR_DUPLICATE for r in removed.values()) >= 4
    # reference rows are never written
    written = rows_of(root / "out-inc", "data") + list(removed.values()) + rows_of(root / "out-inc", "rejected")
    assert all(r["source"].startswith("2-new/") for r in written)
    assert runs["incremental"]["rows"]["read"] == len(corpus["new_rows"])


def test_the_incremental_run_embeds_only_the_new_rows(runs):
    vectors = runs["incremental"]["dedup"]["vectors"]
    old_kept = runs["old"]["rows"]["kept"]
    assert runs["incremental"]["dedup"]["references"] == [
        {"path": runs["incremental"]["config"]["dedup"]["against"][0], "kind": "chatsieve output", "rows": old_kept}]
    assert vectors["from_references"] == old_kept  # every old kept row's vector read from the old store
    assert vectors["embedded"] == vectors["rows"] - old_kept
    # exact copies of old rows and contaminated rows are not embedded for dedup
    candidates = runs["incremental"]["dedup"]["candidates"]
    assert vectors["embedded"] <= candidates - 8


def test_benchmark_prompts_remove_the_rows_that_contain_them(runs, corpus):
    root = corpus["root"]
    contaminated = {r["id"]: r for r in rows_of(root / "out-inc", "removed") if r["reason"] == schema.CONTAMINATED}
    new_source = "2-new/new.jsonl"
    index = {json.dumps(r, sort_keys=True): i for i, r in enumerate(corpus["new_rows"])}
    long_id = schema.row_id(new_source, index[json.dumps(corpus["long"], sort_keys=True)])
    short_id = schema.row_id(new_source, index[json.dumps(corpus["short"], sort_keys=True)])
    assert set(contaminated) == {long_id, short_id}
    long_row, short_row = contaminated[long_id], contaminated[short_id]
    assert "shares the 13-word sequence" in long_row["detail"] and "(turn 1)" in long_row["detail"]
    assert long_row["similarity"] is None
    assert long_row["duplicate_of"] == schema.row_id("bench.jsonl", 0)
    assert long_row["duplicate_of_source"] == f"bench.jsonl#0 in {root / 'bench.jsonl'}"
    assert "cosine" in short_row["detail"] and short_row["similarity"] >= 0.999
    assert short_row["duplicate_of"] == schema.row_id("bench.jsonl", 1)
    manifest = runs["incremental"]["decontaminate"]
    assert manifest["contaminated"] == 2 and manifest["rows_by_ngram"] == 1 and manifest["rows_by_embedding"] == 1
    assert manifest["benchmarks"][0]["prompts"] == 3 and manifest["benchmarks"][0]["contaminated"] == 2
    stages = [s["stage"] for s in runs["incremental"]["rows"]["stages"]]
    assert stages.index("decontaminate") < stages.index("reference") < stages.index("exact_dedup")
    assert json.loads((root / "out-inc" / "manifest.json").read_text())["rows"]["by_reason"][schema.CONTAMINATED] == 2
    # the report shows each contaminated row beside the prompt it matched; the card names the benchmark
    import html

    page = html.unescape((root / "out-inc" / "report" / "report.html").read_text())
    section = page[page.index("Benchmark contamination"):]
    assert "bench.jsonl: 2 contaminated rows" in section
    long_tr = section[section.index(long_id):]
    long_tr = long_tr[: long_tr.index("</tr>")]
    assert corpus["reworded"] in long_tr and corpus["long"]["instruction"] in long_tr
    short_tr = section[section.index(short_id):]
    assert short_tr[: short_tr.index("</tr>")].count(corpus["short"]["instruction"]) == 2  # the row, the prompt
    assert 'id="references"' in page and "chatsieve output" in page
    card = (root / "out-inc" / "README.md").read_text()
    assert "## Benchmark decontamination" in card and "removed as `in_reference`" in card


def test_rethreshold_target_rows_picks_the_threshold_and_refuses_out_of_reach(runs, corpus, tmp_path):
    root = corpus["root"]
    source = str(root / "out-all")
    at_098 = rethreshold.run(source, 0.98, str(tmp_path / "t098"))["rows"]["kept"]
    chosen = rethreshold.run(source, None, str(tmp_path / "target"), target_rows=at_098)
    assert chosen["rows"]["kept"] == at_098 == chosen["dedup"]["target_rows"]["kept"]
    threshold = chosen["dedup"]["target_rows"]["threshold"]
    assert chosen["config"]["dedup"]["threshold"] == threshold
    # the threshold it names gives the same rows when asked for directly
    again = rethreshold.run(source, threshold, str(tmp_path / "again"))
    assert content(rows_of(tmp_path / "again", "data")) == content(rows_of(tmp_path / "target", "data"))
    assert again["rows"]["by_reason"] == chosen["rows"]["by_reason"]
    # contaminated rows stay removed
    assert chosen["rows"]["by_reason"][schema.CONTAMINATED] == 2
    for target, advice in ((1, "lower --record-threshold"), (10**6, "no near-duplicate removed")):
        with pytest.raises(ValueError, match=advice):
            rethreshold.run(source, None, str(tmp_path / f"out-{target}"), target_rows=target)
        assert not os.path.exists(tmp_path / f"out-{target}")


def test_a_plain_input_is_a_reference_too(ray_local, corpus, tmp_path):
    """--against a directory of raw files: read and normalized, never tokenized, ids prefixed."""
    from jobs.references import build_reference_candidates, open_references
    from operators.write import Output

    references = open_references((str(corpus["root"] / "1-old"), str(corpus["root"] / "out-old")))
    assert [r.kind for r in references] == ["input", "chatsieve output"]
    output = Output(str(tmp_path / "out"))
    os.makedirs(output.path)
    config = PrepareConfig.from_options({"input": ["x"], "output": output.path})
    build_reference_candidates(config, output, references, frozenset())
    pa_table = pq.read_table(os.path.join(output.path, "_work", "reference_candidates"))
    by_reference = pa_table.group_by("reference").aggregate([("id", "count")]).to_pylist()
    assert sorted((r["reference"], r["id_count"]) for r in by_reference) == [(0, OLD_ROWS), (1, len(rows_of(corpus["root"] / "out-old", "data")))]
    ids = pa_table.column("id").to_pylist()
    assert all(i.startswith(("r0:", "r1:")) for i in ids)
    assert f"r0:{schema.row_id('1-old/alpaca.json', 0)}" in ids
    with pytest.raises(ValueError, match="incomplete chatsieve output"):
        os.makedirs(tmp_path / "half" / "_work")
        open_references((str(tmp_path / "half"),))
