"""Column names, row statuses, reason codes and Arrow schemas shared by every stage.

This module is the code side of docs/architecture.md's "Canonical row" and "Output layout": stages
import names from here instead of spelling strings, so a renamed column breaks loudly.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

# --- identity -----------------------------------------------------------------------------------
ID = "id"
SOURCE = "source"
SOURCE_ROW = "source_row"

# --- the row as it travels through the job --------------------------------------------------------
STATUS = "status"  # one of STATUSES; a row is "kept" until a stage removes or rejects it
REASON = "reason"  # removal reason (REMOVAL_REASONS) or rejection error code (REJECTION_ERRORS)
DETAIL = "detail"  # human-readable detail for the reason: a count, the offending role, the parse error
MESSAGES = "messages"
RAW = "raw"  # excerpt of the raw input, kept only for rejected rows
TEXT = "text"
NUM_TOKENS = "num_tokens"
PROMPT_TOKENS = "prompt_tokens"
RESPONSE_TOKENS = "response_tokens"
DUPLICATE_OF = "duplicate_of"
# Where the row named by duplicate_of lives when it is not in this output: a reference (--against) or a
# benchmark (--decontaminate) row, as "<source>#<source_row> in <PATH>". Null otherwise.
DUPLICATE_OF_SOURCE = "duplicate_of_source"
SIMILARITY = "similarity"

KEPT = "kept"
REMOVED = "removed"
REJECTED = "rejected"
STATUSES = (KEPT, REMOVED, REJECTED)

# --- removal reasons (row was read and understood, but is not a training example) -----------------
EMPTY_CONVERSATION = "empty_conversation"  # nothing left after stripping empty messages
NO_ASSISTANT_TURN = "no_assistant_turn"  # no assistant answer follows a user turn
BAD_ROLE_ORDER = "bad_role_order"  # a system message after the first position
UNSUPPORTED_ROLE = "unsupported_role"  # tool / function / observation turns
UNSUPPORTED_CONTENT = "unsupported_content"  # non-text content parts (reasoning, tool_call, image)
SPECIAL_TOKEN_IN_CONTENT = "special_token_in_content"  # literal <s>, </s>, ... inside content
TEMPLATE_ERROR = "template_error"  # only the chat template knows (a custom template raised)
PREFERENCE_PAIR = "preference_pair"  # --preference skip
NEGATIVE_LABEL = "negative_label"  # KTO row with label == false
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
IN_REFERENCE = "in_reference"  # an exact or near duplicate of a row of --against (jobs/references.py)
CONTAMINATED = "contaminated"  # a user turn matches a --decontaminate benchmark prompt (jobs/decontaminate.py)

REMOVAL_REASONS = (
    EMPTY_CONVERSATION,
    NO_ASSISTANT_TURN,
    BAD_ROLE_ORDER,
    UNSUPPORTED_ROLE,
    UNSUPPORTED_CONTENT,
    SPECIAL_TOKEN_IN_CONTENT,
    TEMPLATE_ERROR,
    PREFERENCE_PAIR,
    NEGATIVE_LABEL,
    TOO_LONG,
    TOO_SHORT,
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    IN_REFERENCE,
    CONTAMINATED,
)

# --- rejection errors (row could not be read or understood at all) --------------------------------
INVALID_JSON = "invalid_json"  # a JSONL line that does not parse
NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not a JSON object
UNKNOWN_FORMAT = "unknown_format"  # an object of no known conversation format
MALFORMED_CONVERSATION = "malformed_conversation"  # known format, wrong types inside (message not an object, ...)
UNREADABLE_FILE = "unreadable_file"  # a file that cannot be parsed at all (source_row = -1)
TRUNCATED_FILE = "truncated_file"  # a damaged .gz: the lines before the damage are kept
TOO_DEEPLY_NESTED = "too_deeply_nested"  # JSON nested deeper than the parser's recursion limit
INVALID_UNICODE = "invalid_unicode"  # a lone surrogate escape ("\ud800"): valid JSON, not encodable as UTF-8
ROW_ERROR = "row_error"  # any other exception while normalizing, templating or tokenizing this one row

REJECTION_ERRORS = (
    INVALID_JSON,
    NOT_AN_OBJECT,
    UNKNOWN_FORMAT,
    MALFORMED_CONVERSATION,
    UNREADABLE_FILE,
    TRUNCATED_FILE,
    TOO_DEEPLY_NESTED,
    INVALID_UNICODE,
    ROW_ERROR,
)

# Canonical roles; anything else is mapped or removed by normalize.
SYSTEM, USER, ASSISTANT = "system", "user", "assistant"

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)

# How much of a rejected row's raw input is kept: enough to recognise it, bounded so one
# 40 MB broken line cannot bloat rejected/.
RAW_EXCERPT_CHARS = 2000

# The row between stages: every column present in every batch, so Ray blocks always unify.
WORK_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(SOURCE_ROW, pa.int64()),
        pa.field(STATUS, pa.string()),
        pa.field(REASON, pa.string()),
        pa.field(DETAIL, pa.string()),
        pa.field(MESSAGES, MESSAGES_TYPE),
        pa.field(RAW, pa.string()),
        pa.field(TEXT, pa.string()),
        pa.field(NUM_TOKENS, pa.int32()),
        pa.field(PROMPT_TOKENS, pa.int32()),
        pa.field(RESPONSE_TOKENS, pa.int32()),
        pa.field(DUPLICATE_OF, pa.string()),
        pa.field(SIMILARITY, pa.float32()),
    ]
)

# --- output files (docs/architecture.md, "Output layout") ----------------------------------------------
DATA_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(SOURCE_ROW, pa.int64()),
        pa.field(MESSAGES, MESSAGES_TYPE),
        pa.field(TEXT, pa.string()),
        pa.field(NUM_TOKENS, pa.int32()),
        pa.field(PROMPT_TOKENS, pa.int32()),
        pa.field(RESPONSE_TOKENS, pa.int32()),
    ]
)
REMOVED_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(SOURCE_ROW, pa.int64()),
        pa.field(REASON, pa.string()),
        pa.field(DETAIL, pa.string()),
        pa.field(DUPLICATE_OF, pa.string()),
        pa.field(SIMILARITY, pa.float32()),
        pa.field(MESSAGES, MESSAGES_TYPE),
        pa.field(NUM_TOKENS, pa.int32()),
        pa.field(DUPLICATE_OF_SOURCE, pa.string()),
    ]
)
# The rows checkpoint as the commit sees it, once the dedup decisions are applied (jobs/runtime.py).
DECIDED_SCHEMA = WORK_SCHEMA.append(pa.field(DUPLICATE_OF_SOURCE, pa.string()))
ERROR = "error"
REJECTED_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(SOURCE_ROW, pa.int64()),
        pa.field(ERROR, pa.string()),  # a REJECTION_ERRORS code
        pa.field(DETAIL, pa.string()),  # the parser's message
        pa.field(RAW, pa.string()),
    ]
)


def row_id(source: str, source_row: int) -> str:
    """First 16 hex digits of sha1(source + "\\0" + source_row) (docs/architecture.md, "Identity")."""
    return hashlib.sha1(f"{source}\0{source_row}".encode()).hexdigest()[:16]


def raw_excerpt(raw: str | bytes | None) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return utf8_safe(raw[:RAW_EXCERPT_CHARS])


def utf8_safe(text: str | None) -> str | None:
    """`text` unchanged, or with lone surrogates written as `\\udXXX` escapes: Arrow strings must be UTF-8,
    and one unencodable detail or excerpt would otherwise fail the whole batch it travels in."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def unencodable_message(messages) -> str | None:
    """Why `messages` cannot be written as UTF-8 (a lone surrogate), or None when every string can."""
    for index, message in enumerate(messages or ()):
        for key, value in message.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    bad = value[exc.start : exc.end].encode("utf-8", "backslashreplace").decode()
                    return f"message {index} {key} holds a lone surrogate {bad} at character {exc.start}, not valid UTF-8"
    return None
