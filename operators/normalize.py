"""Normalize one parsed record into canonical chat messages (docs/architecture.md, "Normalization rules").

Input: one parsed JSON object (a JSONL line, a JSON array element, a Parquet row). Output: a
`Normalized` that is KEPT with `[{"role", "content"}]` messages (roles system/user/assistant only),
REMOVED with a schema.REMOVAL_REASONS code, or REJECTED with a schema.REJECTION_ERRORS code.
Data faults never raise; only a bad `NormalizeConfig` does.

Formats, detected per row (`detect_format`) unless `NormalizeConfig.format` forces one:
- sharegpt: `conversations: [{from, value}]`, also spelled `{role|user, content|text}`.
- openai:   `messages: [{role, content}]`; content a string or typed parts. Also the preference /
            completion shapes `prompt` (+ `chosen` | `completion`) and `chosen` as a message list.
- alpaca:   `instruction`, `input`, `output` (or `response`, or `chosen`), optional `system`, `history`.
- hh:       Anthropic HH: `chosen` is a `\\n\\nHuman: ...\\n\\nAssistant: ...` transcript string.
ShareGPT and OpenAI lists share one message parser that accepts both spellings of keys and roles,
because real files mix them (e.g. ShareGPT files with role/content keys).

Decisions where the rules are silent:
- Typed text parts are stripped, empty ones skipped, and joined with "\\n\\n": mistral_common's
  normalizer joins text chunks of one message the same way (`_DEFAULT_JOIN_STR`).
- Alpaca user turn = instruction + "\\n\\n" + input (input only when non-empty), the Alpaca convention.
- Content None is an empty message (dropped); a number, object or boolean is malformed.
- Rejections beat row-level removals (negative_label, preference_pair), which beat removals found
  inside the conversation, so "how many preference rows were skipped" counts every readable one.
- empty_conversation: no non-empty message at all. no_assistant_turn: something is left, but no
  user turn answered by an assistant (an assistant-only or system-only row included).
- A system message that is not first after empty messages are dropped and same-role neighbours
  merged -> bad_role_order, even with system="drop" (only the leading one is droppable).
- messages_field: the messages are exactly that column (after a `system` column, if any); no
  chosen/completion is appended. label=false and preference="skip" still apply to the row.
- Message indexes in details are 0-based positions in the record's own list.
Special tokens (`<s>` ...) are not checked here: the tokenize stage knows the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from operators import schema
from operators.schema import ASSISTANT, SYSTEM, USER

FORMATS = ("auto", "sharegpt", "openai", "alpaca", "hh")
_LIST_FORMATS = ("auto", "sharegpt", "openai")  # formats whose messages are a list (messages_field)

# Role spellings seen in ShareGPT (human/gpt), OpenAI, FastChat (chatgpt/bot), Gemini (model) and
# OpenAssistant (prompter). Matched case-insensitively.
_ROLES = {
    "human": USER, "user": USER, "prompter": USER,
    "gpt": ASSISTANT, "assistant": ASSISTANT, "chatgpt": ASSISTANT, "bot": ASSISTANT, "model": ASSISTANT,
    "system": SYSTEM,
}  # fmt: skip
_ROLE_KEYS = ("from", "role", "user")
_CONTENT_KEYS = ("value", "content", "text")
_TEXT_PART_TYPES = ("text", "input_text", "output_text")  # output_text: OpenAI Responses API
_JOINER = "\n\n"  # merged turns and joined text parts, as mistral_common does
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class NormalizeConfig:
    format: str = "auto"  # "auto" | "sharegpt" | "openai" | "alpaca" | "hh"
    messages_field: str | None = None  # read the message list from this column (e.g. "conversation_a")
    preference: str = "chosen"  # "chosen": prompt + chosen is the example | "skip": remove preference rows
    turns: str = "all"  # "all" | "first": leading system + first user turn + its answer
    system: str = "keep"  # "keep" | "drop" the leading system message

    def __post_init__(self):
        for name, allowed in (
            ("format", FORMATS),
            ("preference", ("chosen", "skip")),
            ("turns", ("all", "first")),
            ("system", ("keep", "drop")),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.messages_field is not None:
            if not isinstance(self.messages_field, str) or not self.messages_field:
                raise ValueError(f"--messages-field must name a column, got {self.messages_field!r}")
            if self.format not in _LIST_FORMATS:
                raise ValueError(
                    f"--messages-field reads a message list, which --format {self.format} does not have; "
                    f"use --format auto, sharegpt or openai, or drop --messages-field"
                )


@dataclass(frozen=True)
class Normalized:
    status: str  # schema.KEPT / schema.REMOVED / schema.REJECTED
    messages: list[dict] | None  # canonical when KEPT; best effort when REMOVED; None when REJECTED
    reason: str | None  # REMOVAL_REASONS code (REMOVED) or REJECTION_ERRORS code (REJECTED)
    detail: str | None


class _Fault(Exception):
    """A data fault found while reading the row; `normalize_record` turns it into a Normalized."""

    def __init__(self, status: str, reason: str, detail: str, messages: list[dict] | None = None):
        super().__init__(detail)
        self.result = Normalized(status, messages, reason, detail[:_DETAIL_CHARS])


def _malformed(detail: str) -> _Fault:
    return _Fault(schema.REJECTED, schema.MALFORMED_CONVERSATION, detail)


def _unknown(record: dict, why: str = "no known conversation format") -> _Fault:
    keys = ", ".join(repr(key) for key in list(record)[:12]) + (", ..." if len(record) > 12 else "")
    fields = conversation_like_fields(record)
    # What to do comes before the list of keys, so the detail's length bound never cuts it.
    hint = (f"; field {fields[0]!r} looks like a conversation: pass --messages-field {fields[0]}"
            + (f" (or {', '.join(fields[1:3])})" if len(fields) > 1 else "")) if fields else ""
    return _Fault(schema.REJECTED, schema.UNKNOWN_FORMAT, f"{why}{hint}; keys: {keys}")


def conversation_like_fields(record: dict) -> list[str]:
    """Fields holding what looks like a conversation (a list of role/content or from/value objects, or a
    list of strings), in the record's order: what --messages-field could name."""
    found = []
    for key, value in record.items():
        if not isinstance(key, str) or not isinstance(value, list) or not value:
            continue
        if all(isinstance(v, str) for v in value) and len(value) >= 2:
            found.append(key)
        elif all(isinstance(v, dict) and any(k in v for k in _ROLE_KEYS) and any(k in v for k in _CONTENT_KEYS)
                 for v in value):
            found.append(key)
    return found


def _json_type(value: object) -> str:
    names = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- entry points ---------------------------------------------------------------------------------


def detect_format(record: object) -> str | None:
    """The format of one record ("sharegpt", "openai", "alpaca", "hh"), or None if none fits."""
    if not isinstance(record, dict):
        return None
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record and any(key in record for key in ("output", "response", "chosen")):
        return "alpaca"
    if "prompt" in record and ("chosen" in record or "completion" in record):
        return "openai"  # TRL's preference / prompt-completion shapes: strings or OpenAI message lists
    chosen = record.get("chosen")
    if isinstance(chosen, str) and _HH_TURN.search(chosen):
        return "hh"
    if isinstance(chosen, list):
        return "openai"  # TRL's implicit-prompt preference: chosen is the whole conversation
    return None


def normalize_record(record: object, config: NormalizeConfig) -> Normalized:
    """Canonical messages for one record, or the reason it is removed or rejected. Never raises on data."""
    if not isinstance(record, dict):
        detail = f"expected a JSON object, got {_json_type(record)}"
        return Normalized(schema.REJECTED, None, schema.NOT_AN_OBJECT, detail)
    try:
        outcome = Normalized(schema.KEPT, _clean(_extract(record, config), config), None, None)
    except _Fault as fault:
        outcome = fault.result
    if outcome.status == schema.REJECTED:
        return outcome
    best_effort = outcome.messages if outcome.status == schema.KEPT else None
    # KTO data marks unwanted completions with label=false; they must not be trained on.
    if isinstance(record.get("label"), bool) and not record["label"]:
        return Normalized(schema.REMOVED, best_effort, schema.NEGATIVE_LABEL, "label is false")
    if config.preference == "skip" and "chosen" in record and "rejected" in record:
        return Normalized(schema.REMOVED, best_effort, schema.PREFERENCE_PAIR, "chosen/rejected pair")
    return outcome


# --- per format: record -> [(role, raw content)] --------------------------------------------------


def _extract(record: dict, config: NormalizeConfig) -> list[tuple[str, str]]:
    if config.messages_field is not None:
        if config.messages_field not in record:
            raise _unknown(record, f"no column {config.messages_field!r} (--messages-field)")
        return _system_column(record) + _message_list(
            record[config.messages_field], config.messages_field, strings_alternate=True
        )
    fmt = detect_format(record) if config.format == "auto" else config.format
    if fmt is None:
        raise _unknown(record)
    if fmt == "hh":
        return _hh_messages(record)
    if fmt == "alpaca":
        return _alpaca_messages(record)
    return _system_column(record) + _list_messages(record, fmt)


def _list_messages(record: dict, fmt: str) -> list[tuple[str, str]]:
    column = "conversations" if fmt == "sharegpt" else "messages"
    if column in record:
        prompt = _message_list(record[column], column)
    elif fmt == "openai" and "prompt" in record:
        prompt = _as_messages(record["prompt"], USER, "prompt")
    elif fmt == "openai" and isinstance(record.get("chosen"), list):
        prompt = []  # the chosen list holds the whole conversation
    else:
        raise _unknown(record, f"format {fmt} needs a {column!r} column")
    # Preference rows (e.g. LLaMA-Factory dpo: conversations + chosen/rejected) and prompt-completion
    # rows: the answer follows the prompt. `rejected` is never trained on.
    answer = next((key for key in ("chosen", "completion") if key in record), None)
    return prompt + (_as_messages(record[answer], ASSISTANT, answer) if answer else [])


def _alpaca_messages(record: dict) -> list[tuple[str, str]]:
    answer = next((key for key in ("output", "response", "chosen") if key in record), None)
    if "instruction" not in record or answer is None:
        raise _unknown(record, "format alpaca needs 'instruction' and 'output' (or 'response')")
    instruction, extra = _string(record, "instruction").strip(), _string(record, "input").strip()
    user = _JOINER.join(part for part in (instruction, extra) if part)
    return _system_column(record) + _alpaca_history(record) + [(USER, user)] + _as_messages(
        record[answer], ASSISTANT, answer
    )


def _alpaca_history(record: dict) -> list[tuple[str, str]]:
    # LLaMA-Factory's alpaca format: earlier turns as [[instruction, response], ...].
    history = record.get("history")
    if history is None:
        return []
    if not isinstance(history, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(text, str) for text in pair) for pair in history
    ):
        raise _malformed("'history' must be a list of [user, assistant] string pairs")
    return [message for user, assistant in history for message in ((USER, user), (ASSISTANT, assistant))]


def _hh_messages(record: dict) -> list[tuple[str, str]]:
    if "chosen" not in record:
        raise _unknown(record, "format hh needs a 'chosen' transcript")
    transcript = record["chosen"]
    if not isinstance(transcript, str):
        raise _malformed(f"'chosen' is a {_json_type(transcript)}, not a transcript string")
    pieces = _HH_TURN.split(transcript)  # [preamble, speaker, text, speaker, text, ...]
    if len(pieces) == 1:
        raise _malformed("no '\\n\\nHuman:' or '\\n\\nAssistant:' turn in the transcript")
    if pieces[0].strip():
        raise _malformed("text before the first 'Human:' turn of the transcript")
    return [(USER if who == "Human" else ASSISTANT, text) for who, text in zip(pieces[1::2], pieces[2::2])]


# --- messages and content ------------------------------------------------------------------------


def _system_column(record: dict) -> list[tuple[str, str]]:
    # LLaMA-Factory's sharegpt and alpaca formats carry the system prompt in a `system` column.
    system = _string(record, "system")
    return [(SYSTEM, system)] if system else []


def _string(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _malformed(f"{key!r} is a {_json_type(value)}, not a string")
    return value


def _as_messages(value: object, role: str, column: str) -> list[tuple[str, str]]:
    """A column that is a bare string (one `role` message), one message object, or a message list."""
    if isinstance(value, str) or value is None:
        return [(role, value or "")]
    if isinstance(value, dict):
        return [_message(value, column, 0)]
    return _message_list(value, column)


def _message_list(value: object, column: str, strings_alternate: bool = False) -> list[tuple[str, str]]:
    """The messages of a list column. `strings_alternate` (a column the user named with --messages-field):
    a list of plain strings is read as alternating user / assistant turns."""
    if not isinstance(value, (list, tuple)):
        raise _malformed(f"{column!r} is a {_json_type(value)}, not a list of messages")
    if strings_alternate and value and all(isinstance(v, str) for v in value):
        return [(USER if index % 2 == 0 else ASSISTANT, text) for index, text in enumerate(value)]
    try:
        return [_message(message, column, index) for index, message in enumerate(value)]
    except _Fault as fault:
        if fault.result.status == schema.REMOVED and fault.result.messages is None:
            # Removed whole (a tool turn, an image part): the audit still shows what the row held.
            fault.result = dataclasses.replace(fault.result, messages=_as_found(value))
        raise


def _as_found(value: list) -> list[dict]:
    """A removed row's messages as they were: roles unmapped, non-text parts and tool calls shown as text."""
    found = []
    for message in value:
        if not isinstance(message, dict):
            continue
        role = next((message[k] for k in _ROLE_KEYS if k in message), "")
        content = next((message[k] for k in _CONTENT_KEYS if k in message), None)
        if isinstance(content, list):
            content = _JOINER.join(
                part.get("text") or part.get("value") or f"[{part.get('type', 'unknown')} part]"
                if isinstance(part, dict) else str(part)
                for part in content
            )
        calls = message.get("tool_calls") or message.get("function_call")
        if calls:
            content = (content or "") + ("\n" if content else "") + f"[tool call: {json.dumps(calls, default=str)[:500]}]"
        found.append({"role": str(role)[:40], "content": content if isinstance(content, str) else str(content or "")})
    return found


def _message(message: object, column: str, index: int) -> tuple[str, str]:
    where = f"{column} message {index}"
    if not isinstance(message, dict):
        raise _malformed(f"{where} is a {_json_type(message)}, not an object")
    role_key = next((key for key in _ROLE_KEYS if key in message), None)
    content_key = next((key for key in _CONTENT_KEYS if key in message), None)
    if role_key is None or content_key is None:
        raise _malformed(f"{where} lacks a role ({'/'.join(_ROLE_KEYS)}) or content ({'/'.join(_CONTENT_KEYS)})")
    role = message[role_key]
    if not isinstance(role, str):
        raise _malformed(f"{where} has a {_json_type(role)} role")
    if role.strip().lower() not in _ROLES:
        # Tool / function / observation turns (and anything unknown): the row is removed whole,
        # because dropping them would leave answers that refer to results the model never saw.
        raise _Fault(schema.REMOVED, schema.UNSUPPORTED_ROLE, f"role {role[:40]!r} at {where}")
    if message.get("tool_calls") or message.get("function_call"):
        raise _Fault(schema.REMOVED, schema.UNSUPPORTED_CONTENT, f"tool call at {where}")
    return _ROLES[role.strip().lower()], _content(message[content_key], where)


def _content(content: object, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _malformed(f"{where} has {_json_type(content)} content")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise _malformed(f"{where} has a content part without a type")
        if kind not in _TEXT_PART_TYPES:
            raise _Fault(schema.REMOVED, schema.UNSUPPORTED_CONTENT, f"{kind[:40]!r} part at {where}")
        # OpenAI spells the text `text`; LLaMA-Factory's v1 format spells it `value`.
        text = part.get("text", part.get("value"))
        if not isinstance(text, str) and text is not None:
            raise _malformed(f"{where} has a text part with {_json_type(text)} text")
        texts.append((text or "").strip())
    return _JOINER.join(text for text in texts if text)


# --- the normalization rules ---------------------------------------------------------------------


def _clean(raw: list[tuple[str, str]], config: NormalizeConfig) -> list[dict]:
    """Strip, drop empties, merge same-role neighbours, trim to user...assistant, select turns."""
    merged: list[dict] = []
    for role, content in raw:
        content = content.strip()
        if not content:
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += _JOINER + content  # mistral_common merges the same way
        else:
            merged.append({"role": role, "content": content})
    if not merged:
        raise _Fault(schema.REMOVED, schema.EMPTY_CONVERSATION, "every message is empty", [])
    for position, message in enumerate(merged[1:], start=1):
        if message["role"] == SYSTEM:
            detail = f"system message at position {position} (after dropping empties and merging)"
            raise _Fault(schema.REMOVED, schema.BAD_ROLE_ORDER, detail, merged)
    system = merged[:1] if merged[0]["role"] == SYSTEM else []
    body = merged[len(system) :]
    # After merging, roles alternate, so at most one leading assistant and one trailing user remain.
    if body and body[0]["role"] == ASSISTANT:
        body = body[1:]  # an answer to nothing: no prompt to train it against
    if body and body[-1]["role"] == USER:
        body = body[:-1]  # a question never answered teaches nothing
    if not body:
        roles = " ".join(message["role"] for message in merged)
        raise _Fault(schema.REMOVED, schema.NO_ASSISTANT_TURN, f"no user turn is answered; roles: {roles}", merged)
    if config.turns == "first":
        body = body[:2]
    return (system if config.system == "keep" else []) + body
