"""operators.tokens: the offline Mistral v0.1 tokenizer, the chat template and the tokenize stage.

The reference for ids is mistral_common in finetuning mode (docs/notes.md, "Offline models"). No network, no Ray.
"""

from __future__ import annotations

import json
import pickle
import random

import pyarrow as pa
import pytest

from operators import schema, tokens
from operators.tokens import Tokenize, TokenizerConfig, load_tokenizer, render_and_count, tokenize_table


@pytest.fixture(scope="module")
def tokenizer():
    return tokens.build_default_tokenizer()


@pytest.fixture(scope="module")
def reference():
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(tokens.mistral_v1_model_path()), mode=ValidationMode.finetuning)


def reference_ids(reference, messages) -> list[int]:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    return reference.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens


def msgs(*turns: str, system: str | None = None) -> list[dict]:
    """Alternating user/assistant messages from plain strings."""
    out = [{"role": "system", "content": system}] if system is not None else []
    roles = ("user", "assistant")
    return out + [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def work_table(conversations, status=None, reason=None, detail=None) -> pa.Table:
    n = len(conversations)
    columns = {name: [None] * n for name in schema.WORK_SCHEMA.names}
    columns[schema.ID] = [schema.row_id("data/x.jsonl", i) for i in range(n)]
    columns[schema.SOURCE] = ["data/x.jsonl"] * n
    columns[schema.SOURCE_ROW] = list(range(n))
    columns[schema.STATUS] = status or [schema.KEPT] * n
    columns[schema.REASON] = reason or [None] * n
    columns[schema.DETAIL] = detail or [None] * n
    columns[schema.MESSAGES] = conversations
    return pa.Table.from_pydict(columns, schema=schema.WORK_SCHEMA)


# --- the Mistral v0.1 format -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "text"),
    [
        (msgs("Hi", "Hello!"), "<s> [INST] Hi [/INST] Hello!</s>"),
        (msgs("Hi", "Hello!", "2+2?", "4."), "<s> [INST] Hi [/INST] Hello!</s> [INST] 2+2? [/INST] 4.</s>"),
        (msgs("Hi", "Hello!", system="Be brief."), "<s> [INST] Be brief.\n\nHi [/INST] Hello!</s>"),
        (
            msgs("a", "b", "c", "d", system="S"),
            "<s> [INST] S\n\na [/INST] b</s> [INST] c [/INST] d</s>",
        ),
    ],
    ids=["single", "multi-turn", "system", "system-multi-turn"],
)
def test_text_is_the_exact_mistral_v01_string(tokenizer, reference, messages, text):
    rendered = render_and_count(tokenizer, [messages])
    assert rendered.text == [text]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids == reference_ids(reference, messages)
    assert rendered.num_tokens == [len(ids)]


def test_tokenizer_adds_no_bos_by_itself(tokenizer):
    text = "<s> [INST] Hi [/INST] Hello!</s>"
    assert tokenizer(text).input_ids == tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer("Hi", add_special_tokens=False).input_ids[0] != tokenizer.bos_token_id
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<s>", "</s>", "<unk>")
    assert tokens.special_tokens(tokenizer) == ("</s>", "<s>", "<unk>")


WHITESPACE_CASES = [
    msgs(
        "Fix this:\n\ndef f(x):\n    if x:\n        return  x\n    return None",
        "```python\ndef f(x):\n    return x\n```",
    ),
    msgs("two  spaces  here", "and   three    four     five"),
    msgs("tabs\tand\t\ttabs", "mixed \t  \n   lines\n\n\n\nend"),
    msgs("x" + " " * 17 + "y", "a" + " " * 64 + "b"),
    msgs("class A:\n  def m(self):\n      pass", "ok", "    leading spaces kept inside?\n        yes", "fine"),
]


@pytest.mark.parametrize("messages", WHITESPACE_CASES, ids=["code", "double-spaces", "tabs", "long-runs", "indent"])
def test_whitespace_trap_ids_equal_mistral_common(tokenizer, reference, messages):
    text = render_and_count(tokenizer, [messages]).text[0]
    assert tokenizer(text, add_special_tokens=False).input_ids == reference_ids(reference, messages)


def test_id_ordered_merges_would_fail_the_whitespace_cases(reference):
    """The trap is real: merges in vocabulary-id order (what a bare tokenizer.model loader does) differ."""
    from sentencepiece import sentencepiece_model_pb2
    from transformers import LlamaTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokens.mistral_v1_model_path().read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    naive = LlamaTokenizerFast(vocab=vocab, merges=generate_merges(vocab), legacy=False, add_bos_token=False)
    naive.chat_template = tokens.MISTRAL_V01_TEMPLATE.read_text()
    differ = sum(
        naive(naive.apply_chat_template(m, tokenize=False), add_special_tokens=False).input_ids
        != reference_ids(reference, m)
        for m in WHITESPACE_CASES
    )
    assert differ >= 3


# --- counts ------------------------------------------------------------------------------------


def test_prompt_plus_response_is_num_and_response_is_answers_plus_eos(tokenizer):
    conversations = [
        msgs("Hi", "Hello!"),
        msgs("Q1", "A  one\n    indented", "Q2", "答案二。", system="sys"),
        msgs("only one", "  x  ".strip()),
    ]
    rendered = render_and_count(tokenizer, conversations)
    for i, messages in enumerate(conversations):
        assert rendered.prompt_tokens[i] + rendered.response_tokens[i] == rendered.num_tokens[i]
        answers = sum(
            len(tokenizer(m["content"], add_special_tokens=False).input_ids) + 1  # + EOS
            for m in messages
            if m["role"] == "assistant"
        )
        assert rendered.response_tokens[i] == answers


def test_render_and_count_equals_public_apply_chat_template(tokenizer):
    """Same text, ids and mask as transformers' public path (guards the internals render_and_count uses)."""
    conversations = synthetic_conversations(60, seed=7)
    rendered = render_and_count(tokenizer, conversations)
    public = tokenizer.apply_chat_template(conversations, return_dict=True, return_assistant_tokens_mask=True)
    assert rendered.text == tokenizer.apply_chat_template(conversations, tokenize=False)
    assert rendered.num_tokens == [len(ids) for ids in public["input_ids"]]
    assert rendered.response_tokens == [sum(mask) for mask in public["assistant_masks"]]
    assert tokenizer(rendered.text, add_special_tokens=False).input_ids == public["input_ids"]


def test_counts_are_never_truncated_by_a_tokenizer_json_setting(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    truncating = load_tokenizer(TokenizerConfig(name_or_path=str(tmp_path)))
    truncating.backend_tokenizer.enable_truncation(max_length=8)
    messages = msgs("a question with quite a few words in it", "and an answer with some more words")
    assert render_and_count(truncating, [messages]).num_tokens == render_and_count(tokenizer, [messages]).num_tokens


def test_template_without_generation_block_counts_from_prompt_prefixes(tokenizer, tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text("{{ bos_token }}{% for m in messages %}{{ ' ' + m['content'] }}{% endfor %}")
    custom = load_tokenizer(TokenizerConfig(chat_template=str(path)))
    rendered = render_and_count(custom, [msgs("Hi", "Hello"), msgs("a b c", "d e f g")])
    assert rendered.text == ["<s> Hi Hello", "<s> a b c d e f g"]
    for i, (prompt, text) in enumerate((("<s> Hi", "<s> Hi Hello"), ("<s> a b c", "<s> a b c d e f g"))):
        total = len(tokenizer(text, add_special_tokens=False).input_ids)
        assert rendered.num_tokens[i] == total
        assert rendered.prompt_tokens[i] == len(tokenizer(prompt, add_special_tokens=False).input_ids)
        assert rendered.prompt_tokens[i] + rendered.response_tokens[i] == total and rendered.response_tokens[i] > 0


def test_template_whose_prompts_are_not_prefixes_leaves_the_split_unknown(tokenizer, tmp_path):
    # The number of messages at the end: a prompt is never a prefix of the whole conversation.
    path = tmp_path / "counted.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] + ' ' }}{% endfor %}{{ messages | length }}")
    custom = load_tokenizer(TokenizerConfig(chat_template=str(path)))
    rendered = render_and_count(custom, [msgs("Hi", "Hello")])
    assert rendered.text == ["Hi Hello 2"] and rendered.num_tokens[0] > 0
    assert rendered.prompt_tokens == [None] and rendered.response_tokens == [None]


def test_a_chatml_tokenizer_directory_counts_as_apply_chat_template_does(chatml_tokenizer_dir):
    directory = chatml_tokenizer_dir
    chatml = load_tokenizer(TokenizerConfig(name_or_path=str(directory)))
    conversations = [msgs("Hi there", "Hello! How can I help?"),
                     [{"role": "system", "content": "Be brief."}, *msgs("2+2?", "4."), *msgs("and 3+3?", "6.")]]
    rendered = render_and_count(chatml, conversations)
    for i, messages in enumerate(conversations):
        assert rendered.text[i] == chatml.apply_chat_template(messages, tokenize=False)
        ids = chatml(rendered.text[i], add_special_tokens=False).input_ids
        assert rendered.num_tokens[i] == len(ids)
        # Response: every assistant turn's content and its <|im_end|>\n, located by the prompt renderings.
        answers = [m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant"]
        expected = sum(len(chatml(a, add_special_tokens=False).input_ids) for a in answers)
        assert abs(rendered.response_tokens[i] - expected) <= len(answers)  # a boundary token may merge
        assert rendered.prompt_tokens[i] + rendered.response_tokens[i] == rendered.num_tokens[i]


# --- the stage ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage():
    return Tokenize(TokenizerConfig())


def test_stage_fills_text_and_counts_with_work_schema(stage):
    table = work_table([msgs("Hi", "Hello!"), msgs("2+2?", "4.", system="Math.")])
    out = stage(table)
    assert out.schema == schema.WORK_SCHEMA
    assert out.column(schema.STATUS).to_pylist() == [schema.KEPT, schema.KEPT]
    assert out.column(schema.TEXT).to_pylist() == [
        "<s> [INST] Hi [/INST] Hello!</s>",
        "<s> [INST] Math.\n\n2+2? [/INST] 4.</s>",
    ]
    num = out.column(schema.NUM_TOKENS).to_pylist()
    prompt = out.column(schema.PROMPT_TOKENS).to_pylist()
    response = out.column(schema.RESPONSE_TOKENS).to_pylist()
    assert [p + r for p, r in zip(prompt, response)] == num
    assert response == [3, 4]  # "▁Hello" "!" "</s>" and "▁" "4" "." "</s>": answer tokens + EOS
    for name in (schema.ID, schema.SOURCE, schema.SOURCE_ROW, schema.MESSAGES, schema.DUPLICATE_OF):
        assert out.column(name).equals(table.column(name))


def test_stage_output_schema_keeps_types_of_all_null_columns(stage):
    out = stage(work_table([msgs("Hi", "Hello!")]))
    assert out.schema == schema.WORK_SCHEMA
    assert out.column(schema.SIMILARITY).type == pa.float32() and out.column(schema.SIMILARITY).null_count == 1
    empty = stage(work_table([]))
    assert empty.schema == schema.WORK_SCHEMA and empty.num_rows == 0


@pytest.mark.parametrize(
    ("messages", "token", "index"),
    [
        (msgs("what does </s> mean in HTML?", "It is not HTML."), "</s>", 0),
        (msgs("Hi", "Strike: <s>old</s>"), "<s>", 1),
        (msgs("Hi", "ok", "print('<unk>')", "done", system="sys"), "<unk>", 3),
    ],
)
def test_special_token_text_in_content_is_removed_with_reason(stage, messages, token, index):
    out = stage(work_table([msgs("fine", "row"), messages]))
    row = out.slice(1).to_pylist()[0]
    assert row[schema.STATUS] == schema.REMOVED
    assert row[schema.REASON] == schema.SPECIAL_TOKEN_IN_CONTENT
    assert row[schema.DETAIL] == f"message {index} contains the special token {token!r}"
    assert row[schema.TEXT] is None and row[schema.NUM_TOKENS] is None
    assert out.column(schema.STATUS)[0].as_py() == schema.KEPT


def test_conversations_the_template_refuses_are_a_template_error(stage):
    def turns(*roles):
        return [{"role": role, "content": f"m{i}"} for i, role in enumerate(roles)]

    bad = [
        turns("user", "user", "assistant"),
        turns("user", "tool"),
        turns("user", "assistant", "system"),
        turns("assistant", "user"),
        turns("system"),
        [],
    ]
    out = stage(work_table([msgs("ok", "fine"), *bad]))
    assert out.column(schema.REASON).to_pylist() == [None] + [schema.TEMPLATE_ERROR] * len(bad)
    assert out.column(schema.STATUS).to_pylist() == [schema.KEPT] + [schema.REMOVED] * len(bad)
    details = out.column(schema.DETAIL).to_pylist()
    assert "alternate" in details[1] and "tool" in details[2] and "alternate" in details[4]
    assert "needs a user message" in details[5] and "needs a user message" in details[6]
    assert out.column(schema.TEXT).to_pylist()[1:] == [None] * len(bad)
    assert out.column(schema.NUM_TOKENS).to_pylist()[1:] == [None] * len(bad)


def test_batch_where_no_row_is_left_to_render(stage):
    out = stage(work_table([msgs("a </s>", "b"), msgs("c", "<s>")], status=[schema.KEPT, schema.KEPT]))
    assert out.column(schema.REASON).to_pylist() == [schema.SPECIAL_TOKEN_IN_CONTENT] * 2
    assert out.column(schema.TEXT).null_count == 2 and out.schema == schema.WORK_SCHEMA


CUSTOM_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['content'] == 'boom' -%}{{ raise_exception('boom row: ' + m['role']) }}{%- endif -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{%- generation -%}{{ 'A: ' + m['content'] + eos_token }}{%- endgeneration -%}"
    "{%- else -%}{{ m['role'] | upper + ': ' + m['content'] + '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
)


def test_custom_template_file_is_used_and_its_errors_isolate_rows(tmp_path):
    path = tmp_path / "custom.jinja"
    path.write_text(CUSTOM_TEMPLATE)
    stage = Tokenize(TokenizerConfig(chat_template=str(path)))
    out = stage(work_table([msgs("Hi", "Hello!"), msgs("boom", "x"), msgs("again", "fine")]))
    assert out.column(schema.TEXT).to_pylist() == ["USER: Hi\nA: Hello!</s>", None, "USER: again\nA: fine</s>"]
    assert out.column(schema.STATUS).to_pylist() == [schema.KEPT, schema.REMOVED, schema.KEPT]
    assert out.column(schema.REASON).to_pylist() == [None, schema.TEMPLATE_ERROR, None]
    assert out.column(schema.DETAIL).to_pylist() == [None, "boom row: user", None]
    answer = stage.tokenizer("A: Hello!</s>", add_special_tokens=False).input_ids
    assert out.column(schema.RESPONSE_TOKENS)[0].as_py() == len(answer)


def test_rows_not_kept_pass_through_untouched(stage):
    table = work_table(
        [msgs("Hi", "Hello"), msgs("has </s> inside", "x"), msgs("Hi", "Hello")],
        status=[schema.REMOVED, schema.REJECTED, schema.KEPT],
        reason=[schema.EXACT_DUPLICATE, schema.INVALID_JSON, None],
        detail=["same as abc", "line 3", None],
    )
    out = stage(table)
    assert out.slice(0, 2).equals(table.slice(0, 2))
    assert out.column(schema.TEXT)[2].as_py() == "<s> [INST] Hi [/INST] Hello</s>"


def test_stage_works_on_sliced_and_chunked_batches(stage):
    whole = work_table([msgs("a", "b"), msgs("c </s>", "d"), msgs("e", "f <unk>"), msgs("g", "h")])
    chunked = pa.concat_tables([whole.slice(0, 1), whole.slice(1, 3)])
    out = stage(chunked.slice(1))
    assert out.column(schema.REASON).to_pylist() == [schema.SPECIAL_TOKEN_IN_CONTENT] * 2 + [None]
    assert out.column(schema.DETAIL).to_pylist()[:2] == [
        "message 0 contains the special token '</s>'",
        "message 1 contains the special token '<unk>'",
    ]


# --- loading, config, pickling -----------------------------------------------------------------


def test_load_from_a_local_directory(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(TokenizerConfig(name_or_path=str(tmp_path / "tok")))
    messages = WHITESPACE_CASES[0]
    assert loaded.get_chat_template() == tokenizer.get_chat_template()
    assert render_and_count(loaded, [messages]) == render_and_count(tokenizer, [messages])
    text = render_and_count(loaded, [messages]).text[0]
    assert loaded(text).input_ids == tokenizer(text, add_special_tokens=False).input_ids  # still no added BOS


def test_directory_without_chat_template_needs_the_option(tokenizer, tmp_path):
    directory = tmp_path / "bare"
    tokenizer.save_pretrained(directory)
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="--chat-template"):
        load_tokenizer(TokenizerConfig(name_or_path=str(directory)))
    config = TokenizerConfig(name_or_path=str(directory), chat_template=str(tokens.MISTRAL_V01_TEMPLATE))
    loaded = load_tokenizer(config)
    assert render_and_count(loaded, [msgs("Hi", "Yo")]).text == ["<s> [INST] Hi [/INST] Yo</s>"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name_or_path": ""}, "non-empty"),
        ({"name_or_path": "./no/such/dir"}, "does not exist"),
        ({"chat_template": "/no/such/template.jinja"}, "not found"),
        ({"num_threads": 0}, "positive integer"),
    ],
)
def test_config_validation_says_how_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenizerConfig(**kwargs)


def test_broken_template_fails_at_load(tmp_path):
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ValueError, match="does not compile"):
        load_tokenizer(TokenizerConfig(chat_template=str(path)))


def test_pickling_round_trip(tokenizer, stage):
    conversations = synthetic_conversations(20, seed=3)
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert render_and_count(clone, conversations) == render_and_count(tokenizer, conversations)
    config = pickle.loads(pickle.dumps(TokenizerConfig()))
    assert config == TokenizerConfig()
    stage_clone = pickle.loads(pickle.dumps(stage))
    table = work_table(conversations)
    assert stage_clone(table).equals(stage(table))


# --- acceptance on generated conversations -----------------------------------------------------

_FRAGMENTS = [
    "Hello there", "How do I sort a list in Python?", "Use `sorted(xs)`.", "café naïve résumé", "Straße",
    "你好，世界。", "请解释一下量子计算的基本原理。", "机器学习是人工智能的一个分支。", "日本語のテキスト",
    "한국어 문장", "Привет, как дела?", "مرحبا بالعالم", "emoji 🚀🔥 ok", "math: $x^2 + y^2 = z^2$",
    "1234567890", "3.14159", "https://example.com/a?b=c&d=e", "**bold** and _italic_", "- item one\n- item two",
    "> quoted", "#include <stdio.h>", "<div class=\"x\">html</div>", "a\\nb", "C:\\Users\\x", "tab\there",
    "end.", "¿Qué tal?", "naïve—dash – en", "<s", "s>", "</", "<un k>",
]
_CODE = [
    "def f(x):\n    if x > 0:\n        return x\n    return -x",
    "for i in range(10):\n\tprint(i)",
    "{\n  \"a\": 1,\n  \"b\": [1, 2]\n}",
    "SELECT *\n  FROM t\n WHERE  a = 1;",
    "int main() {\n    return 0;\n}",
    "```python\nclass A:\n    pass\n```",
]


def _content(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.55:
            parts.append(rng.choice(_FRAGMENTS))
        elif kind < 0.75:
            parts.append(rng.choice(_CODE))
        else:
            parts.append(rng.choice(["word", "x", "。", "?", "数据"]))
        parts.append(rng.choice([" ", " ", "  ", "   ", " " * rng.randint(4, 20), "\n", "\n\n", "\n    ", "\t", ""]))
    text = "".join(parts).strip()
    return text or "empty"


def synthetic_conversations(count: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    conversations = []
    for _ in range(count):
        turns = [_content(rng) for _ in range(2 * rng.randint(1, 5))]
        system = _content(rng) if rng.random() < 0.3 else None
        conversations.append(msgs(*turns, system=system))
    return conversations


def test_generated_conversations_match_mistral_common(tokenizer, reference):
    conversations = synthetic_conversations(400, seed=2024)
    out = tokenize_table(work_table(conversations), tokenizer)
    # Fragments like "</" + "s>" can meet: those rows must be the removed ones, and only those.
    special = [any(t in m["content"] for m in c for t in ("<s>", "</s>", "<unk>")) for c in conversations]
    assert out.column(schema.STATUS).to_pylist() == [schema.REMOVED if s else schema.KEPT for s in special]
    kept = [i for i, s in enumerate(special) if not s]
    assert len(kept) >= 350
    texts = out.column(schema.TEXT).to_pylist()
    ids = tokenizer([texts[i] for i in kept], add_special_tokens=False).input_ids
    mismatched = [i for i, got in zip(kept, ids) if got != reference_ids(reference, conversations[i])]
    assert not mismatched, f"{len(mismatched)} of {len(kept)} differ from mistral_common: {mismatched[:5]}"
    assert [out.column(schema.NUM_TOKENS)[i].as_py() for i in kept] == [len(x) for x in ids]


def test_an_exception_that_is_not_the_templates_own_rejects_only_its_row(tmp_path):
    # ZeroDivisionError is no jinja2.TemplateError: a pathological value the template cannot take.
    path = tmp_path / "fragile.jinja"
    path.write_text(CUSTOM_TEMPLATE.replace(
        "{%- if m['content'] == 'boom' -%}", "{%- if m['content'] == 'crash' -%}{{ (m['content'] | length) // 0 }}"
        "{%- endif -%}{%- if m['content'] == 'boom' -%}"))
    stage = Tokenize(TokenizerConfig(chat_template=str(path)))
    out = stage(work_table([msgs("Hi", "Hello!"), msgs("crash", "x"), msgs("boom", "x"), msgs("again", "fine")]))
    assert out.column(schema.STATUS).to_pylist() == [schema.KEPT, schema.REJECTED, schema.REMOVED, schema.KEPT]
    assert out.column(schema.REASON).to_pylist() == [None, schema.ROW_ERROR, schema.TEMPLATE_ERROR, None]
    assert out.column(schema.DETAIL)[1].as_py().startswith("template: ZeroDivisionError")
    assert '"content": "crash"' in out.column(schema.RAW)[1].as_py()
    assert out.column(schema.TEXT).to_pylist()[3] == "USER: again\nA: fine</s>"


def test_a_batch_the_tokenizer_cannot_encode_is_encoded_row_by_row(stage, monkeypatch):
    backend = stage.tokenizer.backend_tokenizer
    original_batch, original_one = backend.encode_batch, backend.encode

    class Failing:
        """The Rust tokenizer, failing on one text, as a panic on a pathological input would."""

        def __getattr__(self, name):
            return getattr(backend, name)

        def encode_batch(self, texts, **kwargs):
            if any("poison" in t for t in texts):
                raise Exception("tokenizer panicked")
            return original_batch(texts, **kwargs)

        def encode(self, text, **kwargs):
            if "poison" in text:
                raise Exception("tokenizer panicked")
            return original_one(text, **kwargs)

    from operators import tokens

    monkeypatch.setattr(tokens, "_backend", lambda tokenizer: Failing())
    out = stage(work_table([msgs("Hi", "Hello"), msgs("poison", "x"), msgs("Hi again", "Hello")]))
    assert out.column(schema.REASON).to_pylist() == [None, schema.ROW_ERROR, None]
    assert out.column(schema.DETAIL)[1].as_py() == "tokenizer: Exception: tokenizer panicked"
    assert out.column(schema.NUM_TOKENS)[0].as_py() == len(original_one("<s> [INST] Hi [/INST] Hello</s>").ids)
