"""Benchmark prompts and the n-gram test (operators/contamination.py), and reading benchmarks (jobs/decontaminate.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from jobs.decontaminate import load_benchmarks
from operators import schema
from operators.contamination import NGRAM, NGRAM_PROMPT, NgramIndex, prompts_of, user_turns, words

GSM = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
       "How many clips did Natalia sell altogether in April and May?")


def test_prompts_of_each_benchmark_layout():
    assert prompts_of({"question_id": 81, "turns": ["Compose a blog post.", "Rewrite it as a limerick."]}) == [
        "Compose a blog post.", "Rewrite it as a limerick."]
    assert prompts_of({"question": GSM, "answer": "72"}) == [GSM]
    assert prompts_of({"task_id": "HumanEval/0", "prompt": "def f(x):\n", "canonical_solution": "..."}) == ["def f(x):"]
    assert prompts_of({"instruction": "Translate", "input": "bonjour", "output": "hello"}) == ["Translate\n\nbonjour"]
    assert prompts_of({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                                    {"role": "user", "content": "And?"}, {"role": "assistant", "content": "So."}]}) == [
        "Hi", "And?"]
    assert prompts_of({"input": "only an input"}) == ["only an input"]
    assert prompts_of({"id": 3, "label": 1}) == [] and prompts_of(["a"]) == [] and prompts_of("  ") == []


def test_ngrams_match_after_lowercasing_and_punctuation():
    index = NgramIndex([GSM], 13)
    assert words("Hello,   WORLD!! it's") == ["hello", "world", "it", "s"]
    # 13 consecutive words of the prompt, with other case, spacing and punctuation, inside a longer turn
    found = index.match("Please solve: natalia SOLD clips to 48 of her friends -- in April; and then she sold half...")
    assert found == (0, "natalia sold clips to 48 of her friends in april and then she")
    # 12 shared words are not enough
    assert index.match("natalia sold clips to 48 of her friends in april and then, elsewhere") is None
    assert index.match("") is None


def test_short_prompts_match_whole_or_not_at_all():
    index = NgramIndex(["What is the capital city of France today please?", "What is love?"], 13)
    assert index.match("Tell me: what is the capital city of France today, please?") == (
        0, "what is the capital city of france today please")
    assert index.match("what is the capital city of France") is None  # part of a short prompt is not a match
    assert index.match("What is love? Baby don't hurt me") is None  # 3 words: only the embedding test sees it
    assert index.unmatched_short == 1


def test_user_turns_are_listed_with_their_match():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": GSM},
        {"role": "assistant", "content": "72"},
    ]
    batch = pa.table(
        {
            schema.ID: ["row1", "row2"],
            schema.STATUS: [schema.KEPT, schema.REMOVED],
            schema.MESSAGES: pa.array([messages, messages], schema.MESSAGES_TYPE),
        }
    )
    turns = user_turns(batch, NgramIndex([GSM], 13)).to_pylist()
    assert [t[schema.ID] for t in turns] == ["row1/0", "row1/1"]  # removed rows are not checked
    assert turns[0][NGRAM_PROMPT] is None and turns[1][NGRAM_PROMPT] == 0
    assert turns[1][NGRAM].startswith("natalia sold clips")
    assert turns[1]["dedup_text"] == GSM


def test_benchmarks_are_read_before_ray_and_a_prompt_less_one_is_refused(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "mt_bench.jsonl").write_text(
        json.dumps({"question_id": 1, "turns": ["First turn prompt.", "Second turn prompt."]}) + "\n"
        + json.dumps({"category": "writing"}) + "\n" + "not json\n"
    )
    (bench / "gsm.json").write_text(json.dumps([{"question": GSM, "answer": "72"}]))
    loaded = load_benchmarks((str(bench),))
    prompts = loaded.prompts.to_pylist()
    assert [p["dedup_text"] for p in prompts] == [GSM, "First turn prompt.", "Second turn prompt."]
    assert [p[schema.SOURCE] for p in prompts] == ["bench/gsm.json", "bench/mt_bench.jsonl", "bench/mt_bench.jsonl"]
    assert prompts[1]["row_id"] == prompts[2]["row_id"] == schema.row_id("bench/mt_bench.jsonl", 0)
    assert [p["turn"] for p in prompts] == [0, 0, 1]
    assert loaded.summary == [{"path": str(bench), "files": 2, "rows": 4, "prompts": 3, "rows_without_prompt": 2}]
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"category": "x"}) + "\n")
    with pytest.raises(ValueError, match="no prompt found in 1 rows"):
        load_benchmarks((str(empty),))
    with pytest.raises(ValueError):
        load_benchmarks((str(tmp_path / "missing.jsonl"),))
