"""Tokenize stage: render the chat template once into `text` and count its tokens.

docs/architecture.md, "The flow" and "Canonical row": `text` is exactly what a trainer tokenizes (it holds
BOS/EOS); `num_tokens` counts `text` with `add_special_tokens=False`; `response_tokens` are the tokens the
template's `{% generation %}` blocks mark (assistant content + EOS); `prompt_tokens` are the rest.

The offline default is Mistral-7B-Instruct-v0.1's tokenizer, rebuilt from the sentencepiece model that
mistral-common ships. docs/notes.md ("Offline models") explains why the BPE merges must be ordered by piece
score: transformers' own loader orders them by id, and every run of spaces then tokenizes differently
from sentencepiece / mistral_common.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import schema
from operators.actor_cpus import ray_actor_cpus

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "mistral-7b-v0.1"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
MISTRAL_V01_TEMPLATE = TEMPLATES_DIR / "mistral_v0.1.jinja"
# The Mistral-7B v0.1 sentencepiece model inside the mistral-common package (docs/notes.md, "Offline models").
MISTRAL_V1_MODEL_FILE = "tokenizer.model.v1"

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


# --- the default tokenizer ---------------------------------------------------------------------


def mistral_v1_model_path() -> Path:
    """Path of mistral-common's shipped Mistral-7B v0.1 sentencepiece model."""
    import mistral_common

    return Path(mistral_common.__file__).resolve().parent / "data" / MISTRAL_V1_MODEL_FILE


def build_default_tokenizer():
    """Mistral-7B-Instruct-v0.1's tokenizer as a transformers fast tokenizer, with no network.

    Vocabulary and scores come from the sentencepiece model proto; the BPE merges are generated from
    them ordered by *score*, which is the order sentencepiece applies them in (docs/notes.md: ordering by id
    mis-tokenizes every run of spaces). `legacy=False` keeps a "▁" from being added after special tokens,
    which is why the template's leading spaces matter. It adds no BOS/EOS by itself: `text` already holds
    them, so `tokenizer(text)` and `tokenizer(text, add_special_tokens=False)` give the same ids.
    Building takes about 1 s.
    """
    from sentencepiece import sentencepiece_model_pb2
    from transformers import LlamaTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(mistral_v1_model_path().read_bytes())
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    scores = {piece.piece: piece.score for piece in proto.pieces}
    merges = generate_merges(vocab, scores)
    tokenizer = LlamaTokenizerFast(
        vocab=vocab,
        merges=merges,
        legacy=False,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=False,
        add_eos_token=False,
    )
    tokenizer.chat_template = MISTRAL_V01_TEMPLATE.read_text(encoding="utf-8")
    return tokenizer


# --- config and loading ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer and chat template render `text`.

    `name_or_path`: "mistral-7b-v0.1" (the built-in offline default), a local tokenizer directory
    (loaded with local_files_only=True), or a Hugging Face hub name (downloads: the user's choice).
    `chat_template`: path of a .jinja file that replaces the tokenizer's own template.
    `num_threads`: encoder (Rust/rayon) threads per process; None = the Ray actor's CPU share, rounded up
    (all cores outside Ray).
    """

    name_or_path: str = DEFAULT_TOKENIZER
    chat_template: str | None = None
    num_threads: int | None = None

    def __post_init__(self):
        if not isinstance(self.name_or_path, str) or not self.name_or_path.strip():
            raise ValueError(
                f"tokenizer name_or_path must be a non-empty string, got {self.name_or_path!r}: use "
                f"{DEFAULT_TOKENIZER!r} (built in, offline), a local tokenizer directory or a hub name"
            )
        if _looks_like_path(self.name_or_path) and not Path(self.name_or_path).expanduser().is_dir():
            raise ValueError(
                f"tokenizer directory {self.name_or_path!r} does not exist: give a directory written by "
                f"save_pretrained (tokenizer.json or tokenizer.model inside), or {DEFAULT_TOKENIZER!r}"
            )
        if self.chat_template is not None:
            if not isinstance(self.chat_template, (str, os.PathLike)) or not str(self.chat_template).strip():
                raise ValueError(f"chat_template must be the path of a .jinja file, got {self.chat_template!r}")
            if not Path(self.chat_template).expanduser().is_file():
                raise ValueError(
                    f"chat_template file {str(self.chat_template)!r} not found: give the path of a Jinja "
                    f"chat template file (for example {MISTRAL_V01_TEMPLATE})"
                )
        if self.num_threads is not None and (
            isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1
        ):
            raise ValueError(f"num_threads must be a positive integer or None, got {self.num_threads!r}")


def _looks_like_path(name: str) -> bool:
    # Hub names are "org/name"; these prefixes can only mean the local file system.
    return name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or Path(name).is_dir()


def load_tokenizer(config: TokenizerConfig):
    """The tokenizer `config` names, with its chat template set and checked.

    Raises ValueError when the tokenizer has no chat template and none is given, when the template
    does not compile, or when the tokenizer is not a fast (Rust) one, which prompt/response counting
    needs (character offsets of the tokens).
    """
    if config.name_or_path == DEFAULT_TOKENIZER:
        tokenizer = build_default_tokenizer()
    else:
        from transformers import AutoTokenizer

        path = Path(config.name_or_path).expanduser()
        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        else:
            # A hub name: may download. This is the user's explicit choice (docs/architecture.md, "Defaults that
            # work offline"); with HF_HUB_OFFLINE=1 it only reads the local cache.
            tokenizer = AutoTokenizer.from_pretrained(config.name_or_path)
    if config.chat_template is not None:
        tokenizer.chat_template = Path(config.chat_template).expanduser().read_text(encoding="utf-8")
    if not tokenizer.chat_template:
        raise ValueError(
            f"tokenizer {config.name_or_path!r} has no chat template: pass --chat-template PATH.jinja "
            f"(TokenizerConfig.chat_template), e.g. {MISTRAL_V01_TEMPLATE} for the Mistral v0.1 format"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {config.name_or_path!r} is not a fast (Rust) tokenizer; counting prompt and "
            "response tokens needs token offsets: give a directory with a tokenizer.json"
        )
    template = _template_of(tokenizer)
    _compiled(template)  # a syntax error is a config fault: fail now, not once per row
    if not _GENERATION_TAG.search(template):
        logger.info(
            "chat template of %r has no {%% generation %%} block: response tokens are counted from prompt "
            "prefixes (add_generation_prompt=True renderings)", config.name_or_path,
        )
    return tokenizer


def _template_of(tokenizer) -> str:
    # A tokenizer may carry several named templates (a dict); get_chat_template picks the default one.
    return tokenizer.get_chat_template()


def _compiled(template: str):
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        return _compile_jinja_template(template)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"chat template does not compile: {error} (line {error.lineno})") from error


def special_tokens(tokenizer) -> tuple[str, ...]:
    """Strings a tokenizer parses as special tokens wherever they appear in text."""
    found = set(tokenizer.all_special_tokens)
    found.update(token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    return tuple(sorted(token for token in found if token))


# --- render and count --------------------------------------------------------------------------


@dataclass
class Rendered:
    """Per conversation: `text` and its counts, or the template's error (then text and counts are None).

    `prompt_tokens` / `response_tokens` are None where neither the template's generation blocks nor its
    prompt prefixes (`_render_with_prefix_spans`) locate the assistant turns.
    """

    text: list[str | None] = field(default_factory=list)
    num_tokens: list[int | None] = field(default_factory=list)
    prompt_tokens: list[int | None] = field(default_factory=list)
    response_tokens: list[int | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)  # the template raised: a template_error removal
    # Anything else raised while rendering or encoding this one row (a bug or a pathological value the
    # template or tokenizer cannot take): the row is rejected `row_error`, the batch goes on.
    failure: list[str | None] = field(default_factory=list)


def render_and_count(tokenizer, conversations: Sequence[Sequence[dict[str, Any]]]) -> Rendered:
    """Render each conversation with the tokenizer's chat template and count its tokens in one pass.

    Same text, ids and counts as `apply_chat_template(..., return_dict=True,
    return_assistant_tokens_mask=True)` (tests/test_tokens.py checks this): each conversation is rendered
    by transformers' own compiled template, which records where every `{% generation %}` block lands in the
    text; all texts are then encoded in one batched Rust call with `add_special_tokens=False`, and each
    block counts the tokens from the one holding its first character to the one holding its last (the mask
    rule), without building per-token masks in Python. A conversation whose template raises gets the
    error message instead; the others are unaffected.

    Messages must be plain dicts of str (as Arrow's `to_pylist()` gives them).
    """
    import jinja2

    n = len(conversations)
    result = Rendered(*([None] * n for _ in range(6)))
    if n == 0:
        return result
    template = _template_of(tokenizer)
    compiled = _compiled(template)
    with_spans = bool(_GENERATION_TAG.search(template))
    variables = tokenizer.special_tokens_map
    spans: list[list[tuple[int, int]] | None] = [None] * n
    ok: list[int] = []
    for i, conversation in enumerate(conversations):
        # As apply_chat_template does: a key whose value is None is left out, not rendered as "None".
        messages = [{k: v for k, v in message.items() if v is not None} for message in conversation]
        try:
            if with_spans:
                result.text[i], spans[i] = _render_with_spans(compiled, messages, variables)
            else:
                result.text[i], spans[i] = _render_with_prefix_spans(compiled, messages, variables)
        except jinja2.TemplateError as error:  # raise_exception(...) in the template: this row's data fault
            result.error[i] = str(error) or type(error).__name__
            continue
        except Exception as error:  # noqa: BLE001 - this row alone fails (see Rendered.failure)
            result.text[i] = None
            result.failure[i] = f"template: {type(error).__name__}: {error}"
            continue
        ok.append(i)
    ok, encodings = _encode_each_row_alone_on_failure(_backend(tokenizer), result, ok)
    for i, encoding in zip(ok, encodings):
        result.num_tokens[i] = total = len(encoding)
        if spans[i] is not None:
            result.response_tokens[i] = response = _count_span_tokens(encoding, spans[i], total)
            result.prompt_tokens[i] = total - response
    return result


def _encode_each_row_alone_on_failure(backend, result: Rendered, rows: list[int]) -> tuple[list[int], list]:
    """One batched Rust call for speed; if it raises, each row again alone, so only the culprit fails."""
    try:
        return rows, backend.encode_batch([result.text[i] for i in rows], add_special_tokens=False)
    except Exception:  # noqa: BLE001 - retried row by row just below, where a failure is that row's
        logger.warning("batched encoding of %d rows raised; encoding them one by one", len(rows), exc_info=True)
    encoded_rows, encodings = [], []
    for i in rows:
        try:
            encodings.append(backend.encode(result.text[i], add_special_tokens=False))
        except Exception as error:  # noqa: BLE001
            result.text[i] = None
            result.failure[i] = f"tokenizer: {type(error).__name__}: {error}"
            continue
        encoded_rows.append(i)
    return encoded_rows, encodings


def _render_with_prefix_spans(compiled, messages, variables) -> tuple[str, list[tuple[int, int]] | None]:
    """For templates without a generation block (most real ones: ChatML, Llama 3): each assistant turn's span
    runs from the end of the prompt before it (rendered with add_generation_prompt=True) to the end of the
    conversation rendered up to and including it. Valid only where both renderings are prefixes of the whole
    text; otherwise the spans are None (the counts stay null, and the manifest counts such rows)."""

    def render(part, generation_prompt):
        return compiled.render(
            messages=part, tools=None, documents=None, add_generation_prompt=generation_prompt, **variables
        )

    text = render(messages, False)  # an error here is the row's (template_error)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        try:
            start = len(prompt := render(messages[:index], True))
            end = len(through := render(messages[: index + 1], False))
        except Exception:  # noqa: BLE001 - a template that refuses partial conversations: counts unknown
            return text, None
        if not (text.startswith(prompt) and text.startswith(through) and start <= end):
            return text, None
        if end > start:
            spans.append((start, end))
    return text, spans


def _render_with_spans(compiled, messages, variables) -> tuple[str, list[tuple[int, int]]]:
    # transformers' renderer for return_assistant_tokens_mask; calling it per conversation (rather than
    # through the batched render_jinja_template) skips a defensive deep copy of every message and lets one
    # bad row fail alone.
    from transformers.utils.chat_template_utils import _render_with_assistant_indices

    return _render_with_assistant_indices(
        compiled_template=compiled,
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=False,
        **variables,
    )


def _backend(tokenizer):
    """The Rust tokenizer, set up the way `tokenizer(text, add_special_tokens=False)` sets it up."""
    backend = tokenizer.backend_tokenizer
    # A tokenizer.json may carry truncation or padding; tokenizer(...) without those options turns them
    # off in place before encoding, and so do we: counts must never be silently truncated.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    split_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    if backend.encode_special_tokens != split_special_tokens:
        backend.encode_special_tokens = split_special_tokens
    return backend


def _count_span_tokens(encoding, spans: list[tuple[int, int]], total: int) -> int:
    # transformers' rule (apply_chat_template, return_assistant_tokens_mask): a block covers the tokens
    # from the one holding its first character to the one holding its last; a block whose first character
    # has no token stops the count (truncation), one whose last character has none runs to the end.
    # Blocks come in text order; `covered_until` keeps a token shared by two blocks from counting twice.
    count = covered_until = 0
    for start_char, end_char in spans:
        start = encoding.char_to_token(start_char)
        if start is None:
            break
        end = encoding.char_to_token(end_char - 1)
        stop = end + 1 if end else total
        count += max(0, stop - max(start, covered_until))
        covered_until = max(covered_until, stop)
    return count


# --- the stage ---------------------------------------------------------------------------------


class Tokenize:
    """Ray Data stage (a class: the tokenizer loads once per actor): WORK_SCHEMA table in and out.

    For rows still kept: content holding a special-token string -> removed `special_token_in_content`;
    a template error -> removed `template_error`; otherwise `text` and the three counts are filled.
    Other rows pass through untouched.
    """

    def __init__(self, config: TokenizerConfig):
        # The Rust thread pool is sized once per process, at its first parallel call: size it before that.
        # In a Ray actor, default to the actor's CPU share (rounded up): Ray sizes the pool so actors fill
        # the cores, and an actor whose encoder also used every core would oversubscribe them.
        threads = config.num_threads or ray_actor_cpus()
        if threads:
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        # Ray starts its workers fresh (never forked after the pool started), so batched encoding may run
        # in parallel here; the library would otherwise turn it off after a fork it cannot see.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        self.config = config
        self.tokenizer = load_tokenizer(config)
        self.special_tokens = special_tokens(self.tokenizer)
        logger.info("tokenizer %r loaded; special tokens %s", config.name_or_path, self.special_tokens)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return tokenize_table(batch, self.tokenizer, self.special_tokens)




_DECISION = (schema.STATUS, schema.REASON, schema.DETAIL)


def tokenize_table(batch: pa.Table, tokenizer, specials: Sequence[str] | None = None) -> pa.Table:
    """The stage's work as a plain function (see `Tokenize`)."""
    if specials is None:
        specials = special_tokens(tokenizer)
    batch = batch.select(schema.WORK_SCHEMA.names).cast(schema.WORK_SCHEMA)
    n = batch.num_rows
    if n == 0:
        return batch
    kept = pc.equal(batch.column(schema.STATUS), schema.KEPT).fill_null(False).to_numpy(zero_copy_only=False)
    if not kept.any():
        return batch
    messages = batch.column(schema.MESSAGES).combine_chunks()

    removals: dict[int, tuple[str, str]] = {}  # row -> (reason, detail)
    for row, (token, message_index) in find_special_tokens(messages, specials).items():
        if kept[row]:
            detail = f"message {message_index} contains the special token {token!r}"
            removals[row] = (schema.SPECIAL_TOKEN_IN_CONTENT, detail)
            kept[row] = False
    rows = np.flatnonzero(kept)
    to_render = messages if len(rows) == n else messages.take(pa.array(rows))
    rendered = render_and_count(tokenizer, to_render.to_pylist())
    for j, error in enumerate(rendered.error):
        if error is not None:
            removals[int(rows[j])] = (schema.TEMPLATE_ERROR, error)
    for j, failure in enumerate(rendered.failure):
        if failure is not None:
            removals[int(rows[j])] = (schema.ROW_ERROR, schema.utf8_safe(failure))

    columns = {name: batch.column(name) for name in schema.WORK_SCHEMA.names}
    # Rendered values go to the rendered rows (None where the template raised); other rows keep theirs.
    position = np.full(n, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    take = pa.array(position, mask=position < 0)
    replace = pa.array(position >= 0)
    for name, values in (
        (schema.TEXT, rendered.text),
        (schema.NUM_TOKENS, rendered.num_tokens),
        (schema.PROMPT_TOKENS, rendered.prompt_tokens),
        (schema.RESPONSE_TOKENS, rendered.response_tokens),
    ):
        new = pa.array(values, type=schema.WORK_SCHEMA.field(name).type)
        columns[name] = new if len(rows) == n else pc.if_else(replace, new.take(take), columns[name])
    if removals:
        # Few rows are removed here, so plain lists are cheap.
        status, reason, detail = (batch.column(name).to_pylist() for name in _DECISION)
        for row, (why, text) in removals.items():
            outcome = schema.REJECTED if why in schema.REJECTION_ERRORS else schema.REMOVED
            status[row], reason[row], detail[row] = outcome, why, text
        for name, values in zip(_DECISION, (status, reason, detail)):
            columns[name] = pa.array(values, type=pa.string())
        failed = [row for row, (why, _) in removals.items() if why == schema.ROW_ERROR]
        if failed:  # a rejected row carries an excerpt of what it was
            raw = batch.column(schema.RAW).to_pylist()
            for row in failed:
                raw[row] = schema.raw_excerpt(json.dumps(messages[row].as_py(), ensure_ascii=False))
            columns[schema.RAW] = pa.array(raw, type=pa.string())
    return pa.Table.from_arrays([columns[name] for name in schema.WORK_SCHEMA.names], schema=schema.WORK_SCHEMA)


def _literal(token: str) -> str:
    # Escape for both RE2 (Arrow) and Python's re: ASCII punctuation gets a backslash, all else is literal.
    return "".join("\\" + c if c in string.punctuation else c for c in token)


def find_special_tokens(messages: pa.Array, specials: Sequence[str]) -> dict[int, tuple[str, int]]:
    """Row -> (special token, message index) for rows where a message's content holds a special token.

    Names the first message holding one and the token that starts earliest in it. One vectorized regex
    scan over all contents finds the candidates; only those are looked at in Python.
    """
    if not specials or len(messages) == 0:
        return {}
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    contents = pc.struct_field(pc.list_flatten(messages), "content")
    if len(contents) == 0:
        return {}
    pattern = "|".join(_literal(token) for token in sorted(specials, key=len, reverse=True))
    match = pc.match_substring_regex(contents, pattern).fill_null(False).to_numpy(zero_copy_only=False)
    flat = np.flatnonzero(match)
    if not len(flat):
        return {}
    # A sliced list array keeps its parent's offsets: rebase them so they index `contents`.
    offsets = messages.offsets.to_numpy()
    offsets = offsets - offsets[0]
    owners = np.searchsorted(offsets, flat, side="right") - 1
    search = re.compile(pattern)
    hits: dict[int, tuple[str, int]] = {}
    for position, row in zip(flat.tolist(), owners.tolist()):
        if row not in hits:  # positions ascend, so the first one seen is the row's first message
            token = search.search(contents[position].as_py()).group(0)
            hits[row] = (token, position - int(offsets[row]))
    return hits
