"""normalize on the real files of ../shared/data (README.md there). Skips where that folder is absent.

The counts are the observed outcomes, each explained: a change in any of them means the rules changed.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from operators import schema
from operators.normalize import NormalizeConfig, detect_format, normalize_record

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not present at {DATA}"),
]

KEPT = (schema.KEPT, None)


def load(relative: str) -> list:
    """A JSON array or JSON lines (whatever the extension says: BELLE's .json holds lines); .gz unpacked."""
    path = DATA / relative
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def outcomes(rows: list, config: NormalizeConfig | None = None) -> list:
    return [normalize_record(row, config or NormalizeConfig()) for row in rows]


def counts(results) -> Counter:
    return Counter((result.status, result.reason) for result in results)


@pytest.mark.parametrize(
    ("relative", "rows", "fmt"),
    [
        ("llamafactory/alpaca_en_demo.json", 999, "alpaca"),
        ("llamafactory/alpaca_zh_demo.json", 1000, "alpaca"),
        ("llamafactory/identity.json", 91, "alpaca"),
        ("gpteacher/Codegen_codegen-instruct.json", 4535, "alpaca"),  # `response`, not `output`
        ("gpteacher/Roleplay_roleplay-simple-deduped-roleplay-instruct.json", 1923, "alpaca"),
        ("medicalgpt/finetune_Belle_open_source_1k.json", 1000, "alpaca"),  # JSON lines named .json
        ("medicalgpt/finetune_numina_cot_sharegpt_data_1k.jsonl", 1000, "sharegpt"),
        ("fastchat/dummy_conversation.json", 500, "sharegpt"),
        ("llamafactory/v1_sft_demo.jsonl", 500, "openai"),
    ],
)
def test_clean_files_are_all_kept(relative, rows, fmt):
    records = load(relative)
    assert len(records) == rows
    assert {detect_format(record) for record in records} == {fmt}
    results = outcomes(records)
    assert counts(results) == {KEPT: rows}
    assert all(result.messages[-1]["role"] == schema.ASSISTANT for result in results)


def test_alpaca_user_turn_joins_instruction_and_input():
    records = load("gpteacher/Codegen_codegen-instruct.json")
    record = records[0]
    assert record["input"]  # this row has an input
    messages = normalize_record(record, NormalizeConfig()).messages
    assert messages == [
        {"role": "user", "content": record["instruction"].strip() + "\n\n" + record["input"].strip()},
        {"role": "assistant", "content": record["response"].strip()},
    ]


def test_medicalgpt_sharegpt():
    records = load("medicalgpt/sft_sharegpt_zh_1K_format.jsonl")
    results = outcomes(records)
    # README: 7 rows end on a human turn. 6 of them keep their earlier turns (the unanswered turn is
    # dropped); row 780 is a single human message, so nothing is answered.
    assert counts(results) == {KEPT: 999, (schema.REMOVED, schema.NO_ASSISTANT_TURN): 1}
    assert results[780].reason == schema.NO_ASSISTANT_TURN
    ends_on_human = [i for i, r in enumerate(records) if r["conversations"][-1]["from"] == "human"]
    assert len(ends_on_human) == 7
    for i in set(ends_on_human) - {780}:
        assert len(results[i].messages) == len(records[i]["conversations"]) - 1
    # README: one row with 17 empty messages (all human turns). Dropping them leaves runs of gpt
    # turns, merged with "\n\n": 58 messages become 24 alternating ones.
    row = records[58]["conversations"]
    assert len(row) == 58 and sum(not m["value"].strip() for m in row) == 17
    messages = results[58].messages
    assert len(messages) == 24
    assert all(m["role"] == ("user" if k % 2 == 0 else "assistant") for k, m in enumerate(messages))
    assert messages[1]["content"] == row[1]["value"].strip() + "\n\n" + row[3]["value"].strip()


def test_glaive_tool_rows_removed_whole():
    records = load("llamafactory/glaive_toolcall_en_demo.json")
    results = outcomes(records)
    has_tool_turn = [
        any(m["from"] in ("function_call", "observation") for m in r["conversations"]) for r in records
    ]
    assert sum(has_tool_turn) == 153
    assert counts(results) == {KEPT: 147, (schema.REMOVED, schema.UNSUPPORTED_ROLE): 153}
    for tool, result in zip(has_tool_turn, results):
        assert (result.reason == schema.UNSUPPORTED_ROLE) == tool
        if tool:
            assert "'function_call'" in result.detail  # the call always precedes its observation


def test_dpo_prompt_plus_chosen():
    records = load("llamafactory/dpo_en_demo.json")
    results = outcomes(records)
    assert counts(results) == {KEPT: 300}
    for record, result in zip(records, results):
        assert result.messages[-1] == {"role": "assistant", "content": record["chosen"]["value"].strip()}
    # 80 rows open with a system turn; it stays the leading message
    assert sum(result.messages[0]["role"] == schema.SYSTEM for result in results) == 80
    skipped = outcomes(records, NormalizeConfig(preference="skip"))
    assert counts(skipped) == {(schema.REMOVED, schema.PREFERENCE_PAIR): 300}


def test_kto_negative_labels_removed():
    records = load("llamafactory/kto_en_demo.json")
    results = outcomes(records)
    assert sum(record["label"] is False for record in records) == 150
    assert counts(results) == {KEPT: 150, (schema.REMOVED, schema.NEGATIVE_LABEL): 150}
    for record, result in zip(records, results):
        assert (result.status == schema.KEPT) == record["label"]


def test_v1_sft_text_parts_joined():
    records = load("llamafactory/v1_sft_demo.jsonl")
    result = normalize_record(records[0], NormalizeConfig())
    parts = [message["content"] for message in records[0]["messages"]]
    assert result.messages == [
        {"role": "user", "content": "\n\n".join(p["value"].strip() for p in parts[0])},
        {"role": "assistant", "content": "\n\n".join(p["value"].strip() for p in parts[1])},
    ]


def test_reason_tool_use_removed_for_non_text_parts():
    records = load("llamafactory/reason_tool_use_demo_50.jsonl")
    # every row has a reasoning or tool_call part, and each such part comes before any `tool` turn
    assert all(
        any(isinstance(m["content"], list) and any(p["type"] != "text" for p in m["content"]) for m in r["messages"])
        for r in records
    )
    results = outcomes(records)
    assert counts(results) == {(schema.REMOVED, schema.UNSUPPORTED_CONTENT): 50}
    assert {result.detail.split("'")[1] for result in results} <= {"reasoning", "tool_call"}


def test_hh_rlhf_transcripts():
    records = load("hh-rlhf/harmless-base_test.jsonl.gz")
    assert len(records) == 2312 and {detect_format(record) for record in records} == {"hh"}
    results = outcomes(records)
    # README: 4 empty messages, all final Assistant turns. Rows 516, 925, 1103 are one Human turn and
    # an empty answer: nothing is answered. Row 86 keeps its first exchange.
    assert counts(results) == {KEPT: 2309, (schema.REMOVED, schema.NO_ASSISTANT_TURN): 3}
    assert [i for i, result in enumerate(results) if result.status != schema.KEPT] == [516, 925, 1103]
    assert len(results[86].messages) == 2
    # README: 8 rows break alternation, each with two Assistant turns in a row; they are merged.
    breaks = [667, 763, 1254, 1319, 1688, 1849, 1952, 2036]
    for i in breaks:
        assert results[i].status == schema.KEPT
        roles = [message["role"] for message in results[i].messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert records[i]["chosen"].count("\n\nAssistant:") == roles.count("assistant") + 1
    first = results[0].messages
    assert first[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    skipped = outcomes(records, NormalizeConfig(preference="skip"))
    assert counts(skipped) == {(schema.REMOVED, schema.PREFERENCE_PAIR): 2312}


def test_arena_needs_messages_field():
    records = load("fastchat/arena_conversations_labeled.jsonl")
    results = outcomes(records)
    assert counts(results) == {(schema.REJECTED, schema.UNKNOWN_FORMAT): 100}
    assert "'conversation_a'" in results[0].detail
    for field in ("conversation_a", "conversation_b"):
        parsed = outcomes(records, NormalizeConfig(messages_field=field))
        assert counts(parsed) == {KEPT: 100}
        for record, result in zip(records, parsed):
            assert len(result.messages) == len(record[field])  # clean alternating turns, nothing dropped
