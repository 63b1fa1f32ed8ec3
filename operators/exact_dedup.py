"""Exact dedup: the dedup text of a row, its normalized key, and the exact-duplicate groups.

Runs before embedding: it is cheap, it shrinks what the GPU/CPU must embed, and ANN indexes degrade
on many identical vectors (docs/notes.md). The key is NFKC + casefold + collapsed whitespace
(docs/architecture.md), so copies that differ only in case, spacing or Unicode form are caught here.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import schema

DEDUP_ON = ("conversation", "user", "assistant")
DEDUP_TEXT = "dedup_text"
DEDUP_KEY = "dedup_key"
TEXT_SHA1 = "text_sha1"  # of the exact text embedded: the vectors checkpoint is keyed by content
_WHITESPACE = re.compile(r"\s+")

CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field(schema.ID, pa.string()),
        pa.field(schema.SOURCE, pa.string()),
        pa.field(schema.SOURCE_ROW, pa.int64()),
        pa.field(schema.RESPONSE_TOKENS, pa.int32()),
        pa.field(DEDUP_KEY, pa.string()),
        pa.field(TEXT_SHA1, pa.string()),
        pa.field(DEDUP_TEXT, pa.string()),
    ]
)


def dedup_text(messages: list[dict], dedup_on: str) -> str:
    """`conversation`: every kept turn as `role: content` lines; `user` / `assistant`: those turns only."""
    if dedup_on == "conversation":
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return "\n".join(m["content"] for m in messages if m["role"] == dedup_on)


def exact_key(text: str) -> str:
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.sha1(normalized.encode()).hexdigest()


def candidates(batch: pa.Table, dedup_on: str) -> pa.Table:
    """Ray stage: the kept rows of a WORK_SCHEMA batch, with their dedup text and exact key."""
    kept = batch.filter(pc.equal(batch.column(schema.STATUS), schema.KEPT))
    texts = [dedup_text(messages, dedup_on) for messages in kept.column(schema.MESSAGES).to_pylist()]
    return pa.Table.from_pydict(
        {
            schema.ID: kept.column(schema.ID),
            schema.SOURCE: kept.column(schema.SOURCE),
            schema.SOURCE_ROW: kept.column(schema.SOURCE_ROW),
            schema.RESPONSE_TOKENS: kept.column(schema.RESPONSE_TOKENS),
            DEDUP_KEY: [exact_key(t) for t in texts],
            TEXT_SHA1: [hashlib.sha1(t.encode()).hexdigest() for t in texts],
            DEDUP_TEXT: texts,
        },
        schema=CANDIDATE_SCHEMA,
    )


def priority_order(table: pa.Table, keep: str) -> np.ndarray:
    """Indices of `table` in priority order (docs/architecture.md, "Priority").

    `first` and `none`: (source, source_row); `longest`: (-response_tokens, source, source_row).
    """
    keys = [(schema.SOURCE, "ascending"), (schema.SOURCE_ROW, "ascending")]
    if keep == "longest":
        table = table.append_column("_neg", pc.negate(table.column(schema.RESPONSE_TOKENS)))
        keys = [("_neg", "ascending"), *keys]
    return pc.sort_indices(table, sort_keys=keys).to_numpy()


def exact_groups(keys_in_rank_order: np.ndarray) -> np.ndarray:
    """For rows already in priority order, the rank of each row's group representative (its first row)."""
    _, first, inverse = np.unique(keys_in_rank_order, return_index=True, return_inverse=True)
    return first[inverse]
