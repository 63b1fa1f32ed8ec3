"""Acceptance on real conversations: our tokenizer + template give mistral_common's ids, row for row.

Needs ../shared/data (see its README.md); skips cleanly where it is absent. Every row of every file is
compared (no sampling). The messages are made canonical by a small local helper below, not by
operators.normalize (written in parallel; this test must not depend on it): strip, drop empty, merge
consecutive same-role messages with "\\n\\n", drop leading assistant and trailing user turns; rows with
other roles (tools), non-text content parts or special-token text are skipped, and only rows the
template accepts are compared (mistral_common is more lenient, docs/notes.md).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from operators import tokens

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent"),
]

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _read(path: Path) -> list[dict]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as file:
            text = file.read()
    else:
        text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _content(value) -> str | None:
    """Plain text of a content value; None when it holds anything but text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", p.get("value", ""))) for p in value)
    return None


def _turns(messages: list[dict]) -> list[tuple[str, str | None]]:
    return [
        (_ROLES.get(m.get("from", m.get("role")), "?"), _content(m.get("value", m.get("content"))))
        for m in messages
    ]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh(transcript: str) -> list[tuple[str, str]]:
    parts = _HH_TURN.split(transcript)
    return [("user" if who == "Human" else "assistant", text) for who, text in zip(parts[1::2], parts[2::2])]


def _alpaca(record: dict) -> list[tuple[str, str]]:
    prompt = record["instruction"] + ("\n" + record["input"] if record.get("input") else "")
    return [("user", prompt), ("assistant", record.get("output", record.get("response", "")))]


def _conversations(name: str, record: dict) -> list[list[tuple[str, str | None]]]:
    """The raw turn lists one record holds (a preference record holds two)."""
    if "chosen" in record and isinstance(record["chosen"], str):  # HH-RLHF transcripts
        return [_hh(record["chosen"]), _hh(record["rejected"])]
    if "chosen" in record:  # ShareGPT preference pair
        head = _turns(record["conversations"])
        return [head + _turns([record["chosen"]]), head + _turns([record["rejected"]])]
    if "conversation_a" in record:
        return [_turns(record["conversation_a"]), _turns(record["conversation_b"])]
    if "conversations" in record:
        return [_turns(record["conversations"])]
    if "messages" in record:
        return [_turns(record["messages"])]
    if "instruction" in record:
        return [_alpaca(record)]
    raise AssertionError(f"{name}: unknown record {sorted(record)}")


def canonical(turns: list[tuple[str, str | None]], specials) -> list[dict] | None:
    """Alternating messages (optional leading system), or None when the row cannot be one."""
    if any(role == "?" or content is None for role, content in turns):
        return None
    merged: list[list[str]] = []
    for role, content in turns:
        content = content.strip()
        if not content:
            continue
        if any(token in content for token in specials):
            return None
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n\n" + content
        else:
            merged.append([role, content])
    system = merged.pop(0) if merged and merged[0][0] == "system" else None
    while merged and merged[0][0] == "assistant":
        merged.pop(0)
    while merged and merged[-1][0] == "user":
        merged.pop()
    if not merged or any(role == "system" for role, _ in merged):
        return None
    messages = ([system] if system else []) + merged
    return [{"role": role, "content": content} for role, content in messages]


FILES = (
    sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file() and p.name != "README.md")
    if DATA.is_dir()
    else []
)


@pytest.fixture(scope="module")
def tokenizer():
    return tokens.build_default_tokenizer()


@pytest.fixture(scope="module")
def reference():
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(tokens.mistral_v1_model_path()), mode=ValidationMode.finetuning)


@pytest.mark.parametrize("name", FILES)
def test_real_file_matches_mistral_common(name, tokenizer, reference):
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    specials = tokens.special_tokens(tokenizer)
    conversations = []
    for record in _read(DATA / name):
        for turns in _conversations(name, record):
            messages = canonical(turns, specials)
            if messages is not None:
                conversations.append(messages)
    rendered = tokens.render_and_count(tokenizer, conversations)
    accepted = [i for i, error in enumerate(rendered.error) if error is None]
    # (transformers' batched call fails on an empty list)
    ours = tokenizer([rendered.text[i] for i in accepted], add_special_tokens=False).input_ids if accepted else []

    sp = reference.instruct_tokenizer.tokenizer
    mismatched, wrong_response = [], []
    for i, ids in zip(accepted, ours):
        expected = reference.encode_chat_completion(ChatCompletionRequest(messages=conversations[i])).tokens
        if ids != expected:
            mismatched.append(i)
        assert rendered.num_tokens[i] == len(ids)
        answer_tokens = sum(
            len(sp.encode(m["content"], bos=False, eos=True)) for m in conversations[i] if m["role"] == "assistant"
        )
        if rendered.response_tokens[i] != answer_tokens:
            wrong_response.append(i)
    summary = (
        f"{name}: {len(conversations)} canonical conversations, {len(accepted)} accepted by the template, "
        f"{len(accepted) - len(mismatched)} match mistral_common, {len(mismatched)} mismatch, "
        f"{len(wrong_response)} with a response count != assistant tokens"
    )
    print(summary)
    if "alpaca" in name or "conversation" in name or "sharegpt" in name or "harmless" in name:
        assert accepted, summary  # these files are all chat or instruction data: nothing compared is a bug
    assert not mismatched and not wrong_response, summary + f"; first rows {mismatched[:5]} {wrong_response[:5]}"
