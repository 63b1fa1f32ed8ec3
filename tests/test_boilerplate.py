"""Boilerplate-aware dedup text (operators/boilerplate.py): which paragraphs count, what is left out, and that a
shared preamble no longer makes two different tasks near duplicates with the real embedder."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from operators import boilerplate, schema
from operators.exact_dedup import DEDUP_KEY, DEDUP_TEXT, candidates, dedup_text, exact_key


def rows_table(conversations):
    return pa.table(
        {
            schema.ID: [f"id{i}" for i in range(len(conversations))],
            schema.SOURCE: ["a.jsonl"] * len(conversations),
            schema.SOURCE_ROW: pa.array(range(len(conversations)), pa.int64()),
            schema.STATUS: [schema.KEPT] * len(conversations),
            schema.MESSAGES: pa.array(conversations, schema.MESSAGES_TYPE),
            schema.RESPONSE_TOKENS: pa.array([10] * len(conversations), pa.int32()),
        }
    )


def chat(system, user, answer="Sure."):
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


PREAMBLE = "You can call these tools. " + json.dumps(
    [{"name": f"tool_{i}", "description": f"Does task number {i} on the text it is given, carefully."} for i in range(25)]
)


def test_paragraphs_split_on_blank_lines_and_compare_normalized():
    assert boilerplate.split_paragraphs("a\n\n  b \n \t\nc\nd\n\n\n") == ["a", "b", "c\nd"]
    assert boilerplate.paragraph_key("Hello   World") == boilerplate.paragraph_key("hello world")
    assert boilerplate.paragraph_key("hello world") != boilerplate.paragraph_key("hello worlds")


def test_rows_are_counted_by_distinct_text_and_short_paragraphs_never_count():
    long_a = "A" * 80
    conversations = [
        chat(PREAMBLE, f"Task {i}: do something different, number {i}.") for i in range(6)
    ] + [chat(None, f"{long_a}\n\nshort shared line\n\nquestion {i}") for i in range(3)]
    # three exact copies of one row: they must count once
    conversations += [chat(None, "copied " + "B" * 80)] * 3
    keys, rows = boilerplate.count_rows([boilerplate.count_paragraphs(rows_table(conversations), "conversation")])
    counts = dict(zip(keys.tolist(), rows.tolist()))
    assert counts[boilerplate.paragraph_key(PREAMBLE)] == 6
    assert counts[boilerplate.paragraph_key(long_a)] == 3
    assert counts[boilerplate.paragraph_key("copied " + "B" * 80)] == 1
    assert boilerplate.paragraph_key("short shared line") not in counts  # under MIN_CHARS
    found = boilerplate.boilerplate_keys(keys, rows, 5)
    assert found == {boilerplate.paragraph_key(PREAMBLE): 6}
    # the same counts however the rows are split into blocks
    table = rows_table(conversations)
    split = [boilerplate.count_paragraphs(table.slice(i, 4), "conversation") for i in range(0, table.num_rows, 4)]
    assert dict(zip(*[a.tolist() for a in boilerplate.count_rows(split)])) == counts


def test_candidates_leave_boilerplate_out_of_the_embedded_text_only():
    table = rows_table([chat(PREAMBLE, "Count the characters of 'banana'."), chat(PREAMBLE, PREAMBLE, PREAMBLE)])
    found = frozenset([boilerplate.paragraph_key(PREAMBLE)])
    out = candidates(table, "conversation", boilerplate=found).to_pylist()
    assert out[0][DEDUP_TEXT] == "user: Count the characters of 'banana'.\nassistant: Sure."
    assert out[0]["boilerplate"] == 1
    # the exact key is still of the whole text
    assert out[0][DEDUP_KEY] == exact_key(dedup_text(table.column(schema.MESSAGES)[0].as_py(), "conversation"))
    # a row left with nothing but boilerplate keeps its whole text, not an empty one
    assert out[1][DEDUP_TEXT].startswith("system: " + PREAMBLE) and out[1]["boilerplate"] == 0
    plain = candidates(table, "conversation").to_pylist()
    assert plain[0][DEDUP_TEXT].startswith("system: ") and plain[0]["boilerplate"] == 0
    assert out[0]["text_sha1"] != plain[0]["text_sha1"]


def test_a_shared_preamble_no_longer_makes_two_tasks_near_duplicates():
    """The issue's case with the real offline embedder: two different tasks under one long tool description."""
    from operators.embed import Embed, EmbedConfig

    tasks = ["Count the characters of the word 'strawberry'.", "Count the words of the sentence 'strawberry fields'."]
    table = rows_table([chat(PREAMBLE, t, "I will call the right tool.") for t in tasks])
    found = frozenset([boilerplate.paragraph_key(PREAMBLE)])
    embed = Embed(EmbedConfig(device="cpu", threads=2))

    def cosine(rows):
        vectors = embed(rows.select([schema.ID, DEDUP_TEXT])).column("vector").to_pylist()
        return float(np.dot(vectors[0], vectors[1]))

    with_preamble = cosine(candidates(table, "conversation"))
    without = cosine(candidates(table, "conversation", boilerplate=found))
    assert with_preamble >= 0.95 > without
