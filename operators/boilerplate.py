"""Boilerplate-aware dedup text: paragraphs that many rows share are left out of the text that is embedded.

Rows that carry the same long paragraph (a tool description, a system prompt, a fixed instruction) and differ
in a short task embed close together because the shared paragraph dominates the vector: "count the characters
of X" and "count the words of X" under one 2,000-character preamble are near-duplicates at 0.95. A paragraph
found in more than `--boilerplate-min-rows` distinct dedup texts is boilerplate here and is left out of the
embedded text (docs/architecture.md, "Near-duplicate semantics"); `text`, the exact-duplicate key and
everything written are unchanged.

A paragraph is a run of a message's content between blank lines, compared after NFKC, casefolding and
collapsing whitespace (as the exact key is). Rows are counted by distinct dedup text (each exact-duplicate group
once), so a conversation copied a thousand times does not make its own paragraphs boilerplate. A row whose every
paragraph is boilerplate keeps its whole text: an empty text would make all such rows one another's duplicates.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import schema
from operators.exact_dedup import dedup_text, exact_key

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_WHITESPACE = re.compile(r"\s+")
PARAGRAPH_KEY = "paragraph_key"
EXCERPT = "excerpt"
EXCERPT_CHARS = 300
# Paragraphs shorter than this are never boilerplate: a shared "5" or "#include <iostream>" does not dominate a
# vector, and leaving it out would make rows that differ only there identical (measured: benchmarks/boilerplate.py).
MIN_CHARS = 64
TEXT_KEY = "text_key"
PAIRS_SCHEMA = pa.schema([pa.field(PARAGRAPH_KEY, pa.uint64()), pa.field(TEXT_KEY, pa.uint64())])
EXCERPTS_SCHEMA = pa.schema(
    [pa.field(PARAGRAPH_KEY, pa.uint64()), pa.field(EXCERPT, pa.string()), pa.field("chars", pa.int64())]
)


def split_paragraphs(content: str) -> list[str]:
    """The non-empty paragraphs of one message's content, stripped, in order."""
    return [p.strip() for p in _BLANK_LINE.split(content) if p.strip()]


def paragraph_key(paragraph: str) -> int:
    """64-bit key of a paragraph after NFKC, casefold and whitespace collapsing."""
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", paragraph).casefold()).strip()
    return int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest(), "little")


def dedup_messages(messages: list[dict], dedup_on: str) -> list[dict]:
    """The messages the dedup text is made of (operators/exact_dedup.dedup_text)."""
    return messages if dedup_on == "conversation" else [m for m in messages if m["role"] == dedup_on]


def row_keys(messages: list[dict], dedup_on: str, min_chars: int = MIN_CHARS) -> set[int]:
    """The distinct keys of one row's dedup-message paragraphs of at least `min_chars` characters."""
    return {
        paragraph_key(p)
        for m in dedup_messages(messages, dedup_on)
        for p in split_paragraphs(m["content"])
        if len(p) >= min_chars
    }


def strip_boilerplate(messages: list[dict], dedup_on: str, boilerplate: frozenset[int] | set[int]) -> tuple[list[dict], int]:
    """The dedup messages without boilerplate paragraphs, and how many paragraphs were left out.

    A message left empty is dropped; if every message is, the messages are returned whole (0 left out)."""
    kept_messages, left_out = [], 0
    for message in dedup_messages(messages, dedup_on):
        paragraphs = split_paragraphs(message["content"])
        kept = [p for p in paragraphs if paragraph_key(p) not in boilerplate]
        left_out += len(paragraphs) - len(kept)
        if kept:
            kept_messages.append({"role": message["role"], "content": "\n\n".join(kept)})
    if not kept_messages or not left_out:
        return dedup_messages(messages, dedup_on), 0
    return kept_messages, left_out


def count_paragraphs(batch: pa.Table, dedup_on: str, min_chars: int = MIN_CHARS) -> pa.Table:
    """Ray stage over a WORK_SCHEMA block: the distinct (paragraph, dedup text) pairs of its kept rows.

    The driver counts distinct texts per paragraph over every block (`count_rows`), so exact copies of a text,
    in one block or many, count once."""
    kept = batch.filter(pc.equal(batch.column(schema.STATUS), schema.KEPT))
    paragraphs: list[int] = []
    texts: list[int] = []
    for messages in kept.column(schema.MESSAGES).to_pylist():
        keys = row_keys(messages, dedup_on, min_chars)
        if keys:
            text = int(exact_key(dedup_text(messages, dedup_on))[:16], 16)
            paragraphs.extend(keys)
            texts.extend([text] * len(keys))
    pairs = np.unique(np.array([paragraphs, texts], dtype=np.uint64).reshape(2, -1), axis=1)
    return pa.table({PARAGRAPH_KEY: pairs[0], TEXT_KEY: pairs[1]}, schema=PAIRS_SCHEMA)


def count_rows(tables: list[pa.Table]) -> tuple[np.ndarray, np.ndarray]:
    """(paragraph keys, distinct dedup texts carrying each) over the blocks' pair tables."""
    if not tables:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    table = pa.concat_tables(tables)
    pairs = np.stack([table.column(PARAGRAPH_KEY).to_numpy(), table.column(TEXT_KEY).to_numpy()])
    paragraphs = np.unique(pairs, axis=1)[0]  # a text seen in two blocks counts once
    keys, rows = np.unique(paragraphs, return_counts=True)
    return keys, rows.astype(np.int64)


def boilerplate_keys(keys: np.ndarray, rows: np.ndarray, min_rows: int) -> dict[int, int]:
    """{paragraph key: rows carrying it} for the paragraphs in more than `min_rows` rows."""
    hit = rows > min_rows
    return dict(zip(keys[hit].tolist(), rows[hit].tolist()))


def paragraph_excerpts(batch: pa.Table, dedup_on: str, wanted: frozenset[int]) -> pa.Table:
    """Ray stage: the first occurrence in this block of each wanted paragraph, as an excerpt (for the report)."""
    found: dict[int, str] = {}
    kept = batch.filter(pc.equal(batch.column(schema.STATUS), schema.KEPT))
    for messages in kept.column(schema.MESSAGES).to_pylist():
        for message in dedup_messages(messages, dedup_on):
            for paragraph in split_paragraphs(message["content"]):
                key = paragraph_key(paragraph)
                if key in wanted and key not in found:
                    found[key] = paragraph
        if len(found) == len(wanted):
            break
    return pa.table(
        {
            PARAGRAPH_KEY: pa.array(list(found), pa.uint64()),
            EXCERPT: [p[:EXCERPT_CHARS] for p in found.values()],
            "chars": [len(p) for p in found.values()],
        },
        schema=EXCERPTS_SCHEMA,
    )
