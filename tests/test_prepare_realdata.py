"""The whole job on ../shared/data (skips where absent): the issue's expected outcome per file."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq
import pytest

from jobs import prepare
from jobs.config import PrepareConfig
from operators import schema

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real_run(ray_local, shared_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("real")
    # Parsing outcomes only: embedding 16k long real conversations on 2 CPU cores takes many minutes.
    options = {"input": [str(shared_data)], "output": str(output), "no_dedup": True}
    manifest = prepare.run(PrepareConfig.from_options(options))
    return output, manifest


def rows_of(output, subdir):
    return [r for f in sorted(glob.glob(os.path.join(output, subdir, "*.parquet"))) for r in pq.read_table(f).to_pylist()]


def test_every_file_has_its_expected_outcome(real_run):
    output, manifest = real_run
    by_source = manifest["rows"]["by_source"]
    rows = manifest["rows"]
    assert rows["read"] == rows["kept"] + rows["removed"] + rows["rejected"]
    removed = rows_of(output, "removed")
    reasons = {}
    for r in removed:
        reasons.setdefault(r["source"], {}).setdefault(r["reason"], 0)
        reasons[r["source"]][r["reason"]] += 1

    def src(name):
        [match] = [s for s in by_source if s.endswith(name)]
        return match

    for name in (
        "alpaca_en_demo.json", "alpaca_zh_demo.json", "identity.json", "Codegen_codegen-instruct.json",
        "Roleplay_roleplay-simple-deduped-roleplay-instruct.json", "finetune_Belle_open_source_1k.json",
        "dummy_conversation.json", "v1_sft_demo.jsonl", "dpo_en_demo.json", "finetune_numina_cot_sharegpt_data_1k.jsonl",
    ):
        counts = by_source[src(name)]
        assert counts["rejected"] == 0 and counts["kept"] > 0.9 * sum(counts.values()), name
    # 153 rows have function_call/observation turns; the rest are kept unless over-long.
    assert reasons[src("glaive_toolcall_en_demo.json")][schema.UNSUPPORTED_ROLE] == 153
    assert set(reasons[src("glaive_toolcall_en_demo.json")]) <= {schema.UNSUPPORTED_ROLE, schema.TOO_LONG}
    assert reasons[src("kto_en_demo.json")][schema.NEGATIVE_LABEL] == 150
    assert set(reasons[src("reason_tool_use_demo_50.jsonl")]) == {schema.UNSUPPORTED_CONTENT}
    assert by_source[src("harmless-base_test.jsonl.gz")]["kept"] >= 2300
    arena = by_source[src("arena_conversations_labeled.jsonl")]
    assert arena == {"kept": 0, "removed": 0, "rejected": 100}
    assert manifest["rows"]["rejected"] == 100
    # No kept row carries a literal special token inside its content (the template adds the only ones).
    for r in rows_of(output, "data"):
        assert not any(tok in m["content"] for m in r["messages"] for tok in ("<s>", "</s>", "<unk>"))


def test_sources_are_relative_to_the_parent_of_the_input_root(real_run):
    _, manifest = real_run
    assert all(s.startswith("data/") for s in manifest["rows"]["by_source"])
