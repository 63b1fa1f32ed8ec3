"""The built-in sample generator (jobs/sample.py): layout, determinism, and every planted kind.

Kinds are recognised here from the files alone (structure, duplicates by text), never by asking
the generator, so a generator that plants the wrong thing fails. No Ray, no models: pure logic.
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import itertools
import json
import random
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from jobs.sample import (
    CLEAN,
    EXPECTED_OUTCOME,
    HH_TRANSCRIPT,
    KINDS,
    MIN_ROWS,
    SampleConfig,
    add_sample_arguments,
    run_sample,
    shard_names,
    write_sample,
)
from operators import schema

ROWS = 500
CHAT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read().split("\n")[:-1]  # every file ends with a newline


def dedup_key(text: str) -> str:
    """docs/architecture.md's exact-dedup key: NFKC, casefold, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def messages_of(record: dict) -> list[tuple[str, str]] | None:
    """(role, content) of a well-formed chat record in one of the sample's formats, else None."""
    if "conversations" in record or "messages" in record:
        raw = record.get("conversations", record.get("messages"))
        if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
            return None
        out = []
        for message in raw:
            role = message.get("from", message.get("role"))
            content = message.get("value", message.get("content"))
            if isinstance(content, list):
                content = "\n\n".join(part.get("text", "") for part in content)
            out.append((role, content))
        if "chosen" in record:
            out.append((record["chosen"]["from"], record["chosen"]["value"]))
        return out
    if "instruction" in record:
        user = "\n\n".join(p for p in (record["instruction"], record["input"]) if p.strip())
        return [("user", user), ("assistant", record["output"])]
    return None


def classify(line: str) -> str:
    """The planted kind of one line, judged from its structure (duplicates come out as CLEAN)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return schema.INVALID_JSON
    if not isinstance(record, dict):
        return schema.NOT_AN_OBJECT
    if isinstance(record.get("chosen"), str):
        assert record["chosen"].startswith("\n\nHuman: ") and "\n\nAssistant: " in record["chosen"]
        return HH_TRANSCRIPT
    if not {"conversations", "messages", "instruction"} & record.keys():
        return schema.UNKNOWN_FORMAT
    raw = record.get("conversations", record.get("messages"))
    if raw is not None and (not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw)):
        return schema.MALFORMED_CONVERSATION
    for message in raw or []:
        if message.get("from", message.get("role")) not in CHAT_ROLES:
            return schema.UNSUPPORTED_ROLE
        content = message.get("value", message.get("content"))
        if isinstance(content, list) and any(part["type"] != "text" for part in content):
            return schema.UNSUPPORTED_CONTENT
    if record.get("label") is False:
        return schema.NEGATIVE_LABEL
    if "chosen" in record and "rejected" in record:
        return schema.PREFERENCE_PAIR
    messages = [(CHAT_ROLES[role], content.strip()) for role, content in messages_of(record)]
    messages = [(role, content) for role, content in messages if content]
    if not messages:
        return schema.EMPTY_CONVERSATION
    if any(role == "system" for role, _ in messages[1:]):
        return schema.BAD_ROLE_ORDER
    if "assistant" not in (role for role, _ in messages):
        return schema.NO_ASSISTANT_TURN
    if any(token in content for _, content in messages for token in SPECIAL_TOKENS):
        return schema.SPECIAL_TOKEN_IN_CONTENT
    if len(line) > 10_000:
        return schema.TOO_LONG
    return CLEAN


def word_ratio(a: str, b: str) -> float:
    # Word level and no autojunk: difflib's character-level autojunk scores a one-word edit of a
    # 500-character text as low as 0.66.
    return difflib.SequenceMatcher(None, a.split(" "), b.split(" "), autojunk=False).ratio()


def chat_text(line: str) -> str:
    record = json.loads(line)
    return "\n".join(f"{CHAT_ROLES[role]}: {content.strip()}" for role, content in messages_of(record))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(summary, rows): rows are (shard index, line number, line, structural kind) in file order."""
    output = tmp_path_factory.mktemp("sample")
    summary = write_sample(output, SampleConfig(rows=ROWS, shards=4, seed=0))
    rows = []
    for shard, name in enumerate(shard_names(4)):
        for number, line in enumerate(read_lines(output / name)):
            if line.strip():
                rows.append((shard, number, line, classify(line)))
    return summary, rows


@pytest.fixture(scope="module")
def duplicates(sample):
    """Clean-looking rows split into exact and near duplicates of an earlier row, with that row."""
    _, rows = sample
    chats = [(shard, chat_text(line)) for shard, _, line, kind in rows if kind == CLEAN]
    seen: dict[str, int] = {}
    exact, near = [], []
    shingles: dict[tuple, list[int]] = defaultdict(list)  # 4-word shingles narrow the difflib search
    for index, (shard, text) in enumerate(chats):
        key = dedup_key(text)
        if key in seen:
            exact.append((index, seen[key]))
            continue
        seen[key] = index
        words = key.split()
        grams = {tuple(words[i : i + 4]) for i in range(len(words) - 3)}
        candidates = Counter(j for gram in grams for j in shingles[gram])
        best = max(
            ((word_ratio(chats[j][1], text), j) for j, n in candidates.items() if n >= len(grams) // 2),
            default=(0.0, None),
        )
        if best[0] > 0.9:
            near.append((index, best[1], best[0]))
        for gram in grams:
            shingles[gram].append(index)
    return chats, exact, near


# --- layout and determinism ------------------------------------------------------------------------


def test_row_count_is_exact_and_blank_lines_are_extra(tmp_path):
    summary = write_sample(tmp_path, SampleConfig(rows=1234, shards=3, seed=5))
    names = ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert (tmp_path / names[-1]).read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    lines = [line for name in names for line in read_lines(tmp_path / name)]
    assert sum(1 for line in lines if line.strip()) == 1234 == summary["rows"]
    assert sum(1 for line in lines if not line.strip()) == summary["blank_lines"] >= 2
    assert [f["rows"] for f in summary["files"]] == [411, 411, 412]
    assert sum(summary["kinds"].values()) == 1234
    assert list(summary["kinds"]) == list(KINDS)


def test_same_config_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    config = SampleConfig(rows=300, shards=2, seed=3)
    first, second = write_sample(tmp_path / "a", config), write_sample(tmp_path / "b", config)
    assert {k: v for k, v in first.items() if k != "output_dir"} == {
        k: v for k, v in second.items() if k != "output_dir"
    }
    for name in shard_names(2):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    write_sample(tmp_path / "c", SampleConfig(rows=300, shards=2, seed=4))
    for name in shard_names(2):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_rewriting_the_same_directory_is_idempotent_but_foreign_files_are_refused(tmp_path):
    config = SampleConfig(rows=200, shards=2)
    write_sample(tmp_path, config)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_sample(tmp_path, config)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(FileExistsError, match="notes.json"):
        write_sample(tmp_path, config)
    with pytest.raises(FileExistsError, match="is a file"):
        write_sample(tmp_path / "notes.json", config)


def test_one_shard_is_plain_jsonl(tmp_path):
    summary = write_sample(tmp_path, SampleConfig(rows=150, shards=1))
    assert [f["name"] for f in summary["files"]] == ["shard-00000.jsonl"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rows": MIN_ROWS - 1}, "--rows must be at least"),
        ({"rows": 2.5}, "--rows must be an integer"),
        ({"shards": 0}, "--shards"),
        ({"rows": 100, "shards": 11}, "--shards"),
        ({"shards": True}, "--shards must be an integer"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SampleConfig(**kwargs)


def test_cli_arguments_reach_the_writer(tmp_path):
    parser = argparse.ArgumentParser()
    add_sample_arguments(parser)
    args = parser.parse_args(["--rows", "120", "--shards", "2", "--seed", "9", "--output", str(tmp_path / "s")])
    summary = run_sample(args)
    assert (summary["rows"], summary["shards"], summary["seed"]) == (120, 2, 9)
    assert (tmp_path / "s" / "shard-00001.jsonl.gz").exists()
    with pytest.raises(SystemExit):
        parser.parse_args(["--rows", "120"])  # --output is required


def test_writing_is_fast(tmp_path):
    # 20k rows take ~0.6 s on one free core (1M rows ~30 s of CPU); the bound leaves room for a busy CI box.
    start = time.perf_counter()
    write_sample(tmp_path, SampleConfig(rows=20_000))
    assert time.perf_counter() - start < 15


# --- content ---------------------------------------------------------------------------------------


def test_formats_are_mixed_within_and_across_shards(sample):
    _, rows = sample
    per_shard = defaultdict(Counter)
    for shard, _, line, kind in rows:
        if kind != CLEAN:
            continue
        record = json.loads(line)
        if "conversations" in record:
            fmt = "sharegpt"
        elif "instruction" in record:
            fmt = "alpaca"
        else:
            fmt = "openai_parts" if isinstance(record["messages"][0]["content"], list) else "openai"
        per_shard[shard][fmt] += 1
    assert sorted(per_shard) == [0, 1, 2, 3]
    for shard, formats in per_shard.items():
        assert len(formats) >= 3, (shard, formats)
    favourites = [formats.most_common(1)[0][0] for _, formats in sorted(per_shard.items())]
    assert len(set(favourites)) >= 2  # shards differ in their dominant format
    texts = [line for _, _, line, _ in rows]
    assert any("\\u00" in line for line in texts) and any("é" in line or "ü" in line for line in texts)


def test_every_planted_kind_is_present_and_counted(sample, duplicates):
    summary, rows = sample
    _, exact, near = duplicates
    found = Counter(kind for *_, kind in rows)
    found[schema.EXACT_DUPLICATE], found[schema.NEAR_DUPLICATE] = len(exact), len(near)
    found[CLEAN] -= len(exact) + len(near)
    assert dict(found) == summary["kinds"]
    assert all(count >= 1 for count in summary["kinds"].values())
    assert summary["kinds"][CLEAN] >= 0.85 * ROWS
    # Planted kinds are spread over the shards, not bunched in one.
    shards = {shard for shard, *_, kind in rows if kind not in (CLEAN, schema.TOO_LONG)}
    assert shards == {0, 1, 2, 3}


def test_expected_outcomes_name_real_codes():
    assert set(EXPECTED_OUTCOME) == set(KINDS)
    for status, reason in EXPECTED_OUTCOME.values():
        assert status in schema.STATUSES
        assert reason is None or reason in schema.REMOVAL_REASONS + schema.REJECTION_ERRORS


def test_invalid_lines_are_single_non_blank_lines(sample):
    _, rows = sample
    bad = [line for *_, line, kind in rows if kind == schema.INVALID_JSON]
    assert bad and all(line.strip() and "\n" not in line for line in bad)


def test_exact_duplicates_match_after_normalization_some_only_after_it(sample, duplicates):
    chats, exact, _ = duplicates
    assert exact
    variants = Counter()
    for index, base in exact:
        (shard, text), (base_shard, base_text) = chats[index], chats[base]
        assert dedup_key(text) == dedup_key(base_text)
        variants["identical" if text == base_text else "normalized-only"] += 1
        variants["cross-shard"] += shard != base_shard
    assert variants["identical"] and variants["normalized-only"] and variants["cross-shard"], variants


def test_exact_duplicates_appear_in_other_formats(sample):
    _, rows = sample
    formats_by_key = defaultdict(set)
    for *_, line, kind in rows:
        if kind == CLEAN:
            formats_by_key[dedup_key(chat_text(line))].add(tuple(sorted(json.loads(line))))
    assert any(len(formats) > 1 for formats in formats_by_key.values())


def test_near_duplicates_are_small_edits_of_long_rows_some_across_shards(duplicates):
    chats, _, near = duplicates
    assert near
    cross = 0
    for index, base, ratio in near:
        (shard, text), (base_shard, base_text) = chats[index], chats[base]
        assert dedup_key(text) != dedup_key(base_text)  # exact dedup must not catch them
        assert ratio > 0.95, (text, base_text)
        assert len(base_text.split()) >= 30
        words = difflib.SequenceMatcher(None, text.split(" "), base_text.split(" "), autojunk=False)
        edits = [op for op in words.get_opcodes() if op[0] != "equal"]
        assert len(edits) == 1 and edits[0][2] - edits[0][1] <= 2, edits  # one word changed or added
        cross += shard != base_shard
    assert cross >= 1


def test_over_long_rows_exceed_the_default_token_limit(sample):
    _, rows = sample
    long_rows = [line for *_, line, kind in rows if kind == schema.TOO_LONG]
    assert long_rows
    # Count with the Mistral v0.1 sentencepiece model that mistral-common ships (docs/notes.md).
    sentencepiece = pytest.importorskip("sentencepiece")
    mistral_common = pytest.importorskip("mistral_common")
    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(model))
    for line in long_rows:
        assert len(line) > 10_000
        assert len(tokenizer.encode(chat_text(line))) > 4096 + 500


def test_clean_rows_are_diverse(duplicates):
    chats, exact, near = duplicates
    planted = {index for index, *_ in exact + near}
    texts = [text for index, (_, text) in enumerate(chats) if index not in planted]
    assert len({dedup_key(text) for text in texts}) == len(texts)
    words = [set(dedup_key(text).split()) for text in texts]
    pairs = random.Random(0).sample(list(itertools.combinations(range(len(words)), 2)), 3000)
    jaccard = [len(words[a] & words[b]) / len(words[a] | words[b]) for a, b in pairs]
    assert sum(jaccard) / len(jaccard) < 0.2  # ~0.13: shared glue words ("the", "user:") only
    assert max(jaccard) < 0.6
    # Short answers by default: tens of tokens, so CPU embedding of the quickstart stays fast.
    lengths = sorted(len(text.split()) for text in texts)
    assert 30 <= lengths[len(lengths) // 2] <= 150
