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
REFERENCE = "reference"  # index of the --against path a reference row comes from; null for input rows
BOILERPLATE = "boilerplate"  # paragraphs left out of the embedded text (operators/boilerplate.py)
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
        pa.field(REFERENCE, pa.int32()),
        pa.field(BOILERPLATE, pa.int32()),
    ]
)


def dedup_text(messages: list[dict], dedup_on: str) -> str:
    """`conversation`: every kept turn as `role: content` lines; `user` / `assistant`: those turns only."""
    if dedup_on == "conversation":
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return "\n".join(m["content"] for m in messages if m["role"] == dedup_on)


_HEX_VALUE = np.full(256, 255, np.uint8)  # ASCII byte -> its hex digit's value; 255: not a lowercase hex digit
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
KEY_DIGEST = pa.binary(20)


def equal_width_bytes(strings: pa.Array, width: int) -> np.ndarray:
    """The bytes of a string array whose values are all `width` bytes long: back to back in its data buffer, read
    as a [n, width] uint8 view without a copy (a slice's values start at its first offset)."""
    first = np.frombuffer(strings.buffers()[1], np.int32, count=1, offset=4 * strings.offset)[0]
    return np.frombuffer(strings.buffers()[2], np.uint8, count=width * len(strings), offset=first).reshape(-1, width)


def key_digests(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Exact keys (`exact_key`'s 40-character SHA-1 hex digests) as their 20 bytes.

    The driver groups a million keys (jobs/dedup.py `plan_candidates`): as bytes they hold half the memory, and
    so does the hash table that groups them. Raises ValueError for a key that is not such a digest."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    n = len(keys)
    if not n:
        return pa.array([], KEY_DIGEST)
    widths = pc.min_max(pc.binary_length(keys))
    if keys.null_count or widths["min"].as_py() != 40 or widths["max"].as_py() != 40:
        raise ValueError("exact keys must be 40-character SHA-1 hex digests (a candidate checkpoint not written "
                         "by this version?)")
    digits = _HEX_VALUE[equal_width_bytes(keys, 40).reshape(n, 20, 2)]
    if (digits == 255).any():
        raise ValueError("exact keys must be 40-character SHA-1 hex digests (lowercase)")
    digest = np.ascontiguousarray((digits[..., 0] << 4) | digits[..., 1])
    return pa.Array.from_buffers(KEY_DIGEST, n, [None, pa.py_buffer(digest)])


def exact_key(text: str) -> str:
    normalized = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.sha1(normalized.encode()).hexdigest()


def candidates(
    batch: pa.Table, dedup_on: str, boilerplate: frozenset[int] = frozenset(), reference: int | None = None
) -> pa.Table:
    """Ray stage: the kept rows of a WORK_SCHEMA batch, with their dedup text and exact key.

    The exact key is of the whole dedup text; the text embedded (DEDUP_TEXT, TEXT_SHA1) leaves out the
    `boilerplate` paragraphs (operators/boilerplate.py). Rows of a reference (--against) get ids prefixed
    `r<reference>:` so they never collide with input ids (the same file given as input and reference)."""
    from operators.boilerplate import strip_boilerplate

    if schema.STATUS in batch.column_names:
        batch = batch.filter(pc.equal(batch.column(schema.STATUS), schema.KEPT))
    keys, texts, left_out = [], [], []
    for messages in batch.column(schema.MESSAGES).to_pylist():
        whole = dedup_text(messages, dedup_on)
        keys.append(exact_key(whole))
        if boilerplate:
            stripped, count = strip_boilerplate(messages, dedup_on, boilerplate)
            texts.append(dedup_text(stripped, dedup_on) if count else whole)
            left_out.append(count)
        else:
            texts.append(whole)
            left_out.append(0)
    ids = batch.column(schema.ID)
    if reference is not None:
        ids = pc.binary_join_element_wise(f"r{reference}", ids, ":")
    return pa.Table.from_pydict(
        {
            schema.ID: ids,
            schema.SOURCE: batch.column(schema.SOURCE),
            schema.SOURCE_ROW: batch.column(schema.SOURCE_ROW),
            schema.RESPONSE_TOKENS: batch.column(schema.RESPONSE_TOKENS),
            DEDUP_KEY: keys,
            TEXT_SHA1: [hashlib.sha1(t.encode()).hexdigest() for t in texts],
            DEDUP_TEXT: texts,
            REFERENCE: pa.array([reference] * batch.num_rows, pa.int32()),
            BOILERPLATE: pa.array(left_out, pa.int32()),
        },
        schema=CANDIDATE_SCHEMA,
    )


def reference_index(candidate_id: str) -> tuple[int, str] | None:
    """(reference, original id) of a reference candidate's id, None for an input row's id."""
    if not candidate_id.startswith("r") or ":" not in candidate_id:
        return None
    prefix, original = candidate_id.split(":", 1)
    return int(prefix[1:]), original


def priority_order(table: pa.Table, keep: str) -> np.ndarray:
    """Indices of `table` in priority order (docs/architecture.md, "Priority").

    `first` and `none`: (source, source_row); `longest`: (-response_tokens, source, source_row). Reference rows
    (--against) come before every input row, by (reference, source, source_row).
    """
    if pa.types.is_dictionary(table.schema.field(schema.SOURCE).type):
        table = table.set_column(table.schema.get_field_index(schema.SOURCE), schema.SOURCE,
                                 dictionary_ranks(table.column(schema.SOURCE)))
    keys = [(schema.SOURCE, "ascending"), (schema.SOURCE_ROW, "ascending")]
    if keep == "longest":
        table = table.append_column("_neg", pc.negate(table.column(schema.RESPONSE_TOKENS)))
        keys = [("_neg", "ascending"), *keys]
    if REFERENCE in table.column_names and table.column(REFERENCE).null_count < table.num_rows:
        # Inputs (null) sort after every reference: fill with a value above any reference index.
        table = table.append_column("_ref", pc.fill_null(table.column(REFERENCE), 2**31 - 1))
        keys = [("_ref", "ascending"), *keys]
    return pc.sort_indices(table, sort_keys=keys).to_numpy()


def dictionary_ranks(column: pa.ChunkedArray) -> pa.Array:
    """The sort rank of each value of a dictionary-encoded string column, as integers: Arrow sorts no
    dictionary column, and a driver holding a million `source` paths holds them once as a dictionary."""
    unified = pa.table({"c": column}).unify_dictionaries().column("c")
    if not unified.num_chunks:
        return pa.array([], pa.int64())
    dictionary = unified.chunk(0).dictionary
    rank = np.empty(len(dictionary), np.int64)
    rank[pc.sort_indices(dictionary).to_numpy()] = np.arange(len(dictionary))
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in unified.chunks])
    return pa.array(rank[codes])


def exact_groups(keys: pa.Array | pa.ChunkedArray, order: np.ndarray | None = None) -> np.ndarray:
    """For rows in priority order, the rank of each row's group representative (its first row).

    `keys` are in that order, or in any order with `order` the priority order (`keys.take(order)` is ranked):
    the keys are hashed where they are and only their integer codes are put in rank order, so a driver planning
    a million rows never copies the key strings. Arrow hashes the keys (dictionary codes); numpy only sees
    integers. (np.unique over the keys as Python strings cost about 100 bytes a row and sorted a million
    objects.)"""
    encoded = pc.dictionary_encode(keys, null_encoding="encode")
    # One hash table across chunks: every chunk's codes index the same dictionary.
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    codes = np.concatenate([np.empty(0, np.int64), *(c.indices.to_numpy(zero_copy_only=False) for c in chunks)])
    if order is not None:
        codes = codes[np.asarray(order)]
    distinct = len(chunks[0].dictionary) if chunks else 0
    first = np.full(distinct, len(codes), np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))  # first[code]: the rank where the key first appears
    return first[codes]
