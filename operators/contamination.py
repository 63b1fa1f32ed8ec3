"""Benchmark contamination tests on user turns: shared word n-grams, and the prompts of a benchmark row.

docs/architecture.md, "Near-duplicate semantics": a training row is contaminated when one of its user turns
(a) shares a run of `n` words (default 13, after lower-casing and collapsing whitespace and punctuation, as the
GPT-3 and Llama 2 reports did) with a benchmark prompt, or (b) embeds within the cosine threshold of one (the
embedding side is in jobs/decontaminate.py). A prompt shorter than `n` words is matched whole, as a run of all its
words, when it has at least MIN_WHOLE_PROMPT_WORDS words; shorter prompts ("What is love?") would match ordinary
rows by chance, so only the embedding test sees them.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc

from operators import schema

MIN_WHOLE_PROMPT_WORDS = 8
PROMPT_FIELDS = ("prompt", "question", "instruction", "input")
_WORD = re.compile(r"[^\W_]+")

TURN_ID = "turn_id"  # "<row id>/<turn>": one user turn of a kept row
ROW_ID = "row_id"
TURN = "turn"
NGRAM_PROMPT = "ngram_prompt"  # index of the benchmark prompt sharing an n-gram with the turn, null if none
NGRAM = "ngram"  # the shared words
TURNS_SCHEMA = pa.schema(
    [
        pa.field(schema.ID, pa.string()),  # TURN_ID: the key the embedding stage filters on
        pa.field(ROW_ID, pa.string()),
        pa.field(TURN, pa.int32()),
        pa.field("text_sha1", pa.string()),
        pa.field("dedup_text", pa.string()),
        pa.field(NGRAM_PROMPT, pa.int32()),
        pa.field(NGRAM, pa.string()),
    ]
)


def words(text: str) -> list[str]:
    """Lower-cased words, whitespace and punctuation collapsed away."""
    return _WORD.findall(text.lower())


def _key(gram: list[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "little")


def prompts_of(record: object) -> list[str]:
    """The prompts of one benchmark row: every string of `turns` (MT-Bench), else the user turns of a row in any
    supported conversation format, else the first of prompt / question / instruction / input."""
    from operators.normalize import NormalizeConfig, normalize_record

    if isinstance(record, str):
        return [record.strip()] if record.strip() else []
    if not isinstance(record, dict):
        return []
    turns = record.get("turns")
    if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns):
        return [t.strip() for t in turns if t.strip()]
    try:
        normalized = normalize_record(record, NormalizeConfig())
        users = [m["content"] for m in normalized.messages or () if m["role"] == schema.USER]
    except Exception:  # noqa: BLE001 - not a conversation: try the prompt fields
        users = []
    if users:
        return users
    for field in PROMPT_FIELDS:
        value = record.get(field)
        if isinstance(value, str) and value.strip():
            return [value.strip()]
    return []


class NgramIndex:
    """Which benchmark prompt a text shares an n-gram with: a dict of 64-bit n-gram keys per length."""

    def __init__(self, prompts: list[str], n: int):
        self.n = n
        self.by_length: dict[int, dict[int, int]] = {}
        self.unmatched_short = 0  # prompts too short for either test here
        for index, prompt in enumerate(prompts):
            tokens = words(prompt)
            if len(tokens) >= n:
                grams = self.by_length.setdefault(n, {})
                for start in range(len(tokens) - n + 1):
                    grams.setdefault(_key(tokens[start : start + n]), index)
            elif len(tokens) >= min(n, MIN_WHOLE_PROMPT_WORDS):
                self.by_length.setdefault(len(tokens), {}).setdefault(_key(tokens), index)
            else:
                self.unmatched_short += 1

    def match(self, text: str) -> tuple[int, str] | None:
        """(prompt index, the shared words) of the first n-gram of `text` found in a prompt, or None."""
        tokens = words(text)
        for length, grams in self.by_length.items():
            for start in range(len(tokens) - length + 1):
                gram = tokens[start : start + length]
                found = grams.get(_key(gram))
                if found is not None:
                    return found, " ".join(gram)
        return None


def user_turns(batch: pa.Table, index: NgramIndex) -> pa.Table:
    """Ray stage over a WORK_SCHEMA block: one row per user turn of every kept row, with its n-gram match."""
    kept = batch.filter(pc.equal(batch.column(schema.STATUS), schema.KEPT))
    columns: dict[str, list] = {field.name: [] for field in TURNS_SCHEMA}
    for row_id, messages in zip(kept.column(schema.ID).to_pylist(), kept.column(schema.MESSAGES).to_pylist()):
        turn = 0
        for message in messages:
            if message["role"] != schema.USER:
                continue
            text = message["content"]
            found = index.match(text)
            columns[schema.ID].append(f"{row_id}/{turn}")
            columns[ROW_ID].append(row_id)
            columns[TURN].append(turn)
            columns["text_sha1"].append(hashlib.sha1(text.encode()).hexdigest())
            columns["dedup_text"].append(text)
            columns[NGRAM_PROMPT].append(None if found is None else found[0])
            columns[NGRAM].append(None if found is None else found[1])
            turn += 1
    return pa.Table.from_pydict(columns, schema=TURNS_SCHEMA)
