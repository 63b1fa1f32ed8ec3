"""Unit tests for operators/normalize.py: every format, every reason code, every rule. Pure Python."""

from __future__ import annotations

import pytest

from operators import schema
from operators.normalize import NormalizeConfig, Normalized, detect_format, normalize_record


def norm(record, **config) -> Normalized:
    result = normalize_record(record, NormalizeConfig(**config))
    assert result.status in schema.STATUSES
    if result.status == schema.KEPT:
        assert result.reason is None and result.detail is None
    elif result.status == schema.REMOVED:
        assert result.reason in schema.REMOVAL_REASONS
    else:
        assert result.reason in schema.REJECTION_ERRORS and result.messages is None
    return result


def kept(record, **config) -> list[dict]:
    result = norm(record, **config)
    assert result.status == schema.KEPT, result
    return result.messages


def removed(record, reason, **config) -> Normalized:
    result = norm(record, **config)
    assert (result.status, result.reason) == (schema.REMOVED, reason), result
    return result


def rejected(record, error, **config) -> Normalized:
    result = norm(record, **config)
    assert (result.status, result.reason) == (schema.REJECTED, error), result
    return result


def u(text):
    return {"role": schema.USER, "content": text}


def a(text):
    return {"role": schema.ASSISTANT, "content": text}


def s(text):
    return {"role": schema.SYSTEM, "content": text}


def sg(*turns):
    """ShareGPT record from (from, value) pairs."""
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


def oa(*turns):
    """OpenAI record from (role, content) pairs."""
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (sg(("human", "hi"), ("gpt", "yo")), "sharegpt"),
        (oa(("user", "hi"), ("assistant", "yo")), "openai"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "response": "o"}, "alpaca"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"}, "hh"),
        ({"prompt": "hi", "chosen": "yo", "rejected": "no"}, "openai"),
        ({"prompt": "hi", "completion": "yo"}, "openai"),
        ({"chosen": [{"role": "user", "content": "hi"}], "rejected": []}, "openai"),
        ({"chosen": "no transcript markers", "rejected": "x"}, None),
        ({"text": "hello"}, None),
        ({"instruction": "no answer column"}, None),
        (["not", "a", "dict"], None),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_sharegpt_roles_are_mapped():
    pairs = [("human", "gpt"), ("user", "chatgpt"), ("Human", "bot"), ("prompter", "model"), ("USER", "assistant")]
    turns = [(who, f"{who} {k}") for k, pair in enumerate(pairs) for who in pair]
    expected = [(u if who.lower() in ("human", "user", "prompter") else a)(text) for who, text in turns]
    assert kept(sg(("system", "be nice"), *turns)) == [s("be nice"), *expected]
    assert [m["role"] for m in expected] == ["user", "assistant"] * 5


def test_sharegpt_variant_keys():
    record = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "text": "yo"}]}
    assert kept(record) == [u("hi"), a("yo")]
    record = {"conversations": [{"user": "human", "text": "hi"}, {"user": "gpt", "text": "yo"}]}
    assert kept(record) == [u("hi"), a("yo")]


def test_sharegpt_system_column_is_the_leading_system_message():
    record = {**sg(("human", "hi"), ("gpt", "yo")), "system": "be brief"}
    assert kept(record) == [s("be brief"), u("hi"), a("yo")]


def test_openai_string_content():
    assert kept(oa(("system", "sys"), ("user", "hi"), ("assistant", "yo"))) == [s("sys"), u("hi"), a("yo")]


def test_openai_text_parts_are_stripped_and_joined_with_blank_line():
    record = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": " part one "}, {"type": "text", "text": "  "},
                                     {"type": "text", "text": "part two\n"}]},
        # LLaMA-Factory's v1 format spells the text `value`
        {"role": "assistant", "content": [{"type": "text", "value": "answer"}], "loss_weight": 1.0},
    ]}  # fmt: skip
    assert kept(record) == [u("part one\n\npart two"), a("answer")]


@pytest.mark.parametrize("kind", ["reasoning", "tool_call", "image_url", "image"])
def test_non_text_part_is_unsupported_content(kind):
    record = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": kind, "value": "x"}, {"type": "text", "text": "yo"}]},
    ]}  # fmt: skip
    result = removed(record, schema.UNSUPPORTED_CONTENT)
    assert kind in result.detail and "message 1" in result.detail


def test_openai_tool_calls_field_is_unsupported_content():
    record = {"messages": [{"role": "user", "content": "weather?"},
                           {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]}  # fmt: skip
    removed(record, schema.UNSUPPORTED_CONTENT)


def test_alpaca_instruction_and_input_joined_with_blank_line():
    record = {"instruction": " Translate. ", "input": " hola ", "output": " hello "}
    assert kept(record) == [u("Translate.\n\nhola"), a("hello")]


def test_alpaca_empty_input_and_response_column_and_system():
    assert kept({"instruction": "Say hi", "input": "", "output": "hi"}) == [u("Say hi"), a("hi")]
    assert kept({"instruction": "Say hi", "response": "hi"}) == [u("Say hi"), a("hi")]
    assert kept({"instruction": "", "input": "only input", "output": "ok"}) == [u("only input"), a("ok")]
    record = {"system": "sys", "instruction": "q", "input": None, "output": "o"}
    assert kept(record) == [s("sys"), u("q"), a("o")]


def test_alpaca_history_precedes_the_instruction():
    record = {"instruction": "q2", "output": "a2", "history": [["q1", "a1"]]}
    assert kept(record) == [u("q1"), a("a1"), u("q2"), a("a2")]
    rejected({"instruction": "q", "output": "a", "history": [["only one"]]}, schema.MALFORMED_CONVERSATION)


def test_hh_transcript_parsed_into_turns():
    record = {"chosen": "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4",
              "rejected": "\n\nHuman: hi there\n\nAssistant: go away"}  # fmt: skip
    assert kept(record) == [u("hi there"), a("hello"), u("2+2?"), a("4")]


def test_hh_consecutive_assistant_turns_are_merged_and_empty_last_turn_dropped():
    record = {"chosen": "\n\nHuman: q\n\nAssistant: a1\n\nAssistant: a2\n\nHuman: q2\n\nAssistant:", "rejected": ""}
    assert kept(record) == [u("q"), a("a1\n\na2")]


def test_hh_broken_transcripts_are_malformed():
    rejected({"chosen": "preamble\n\nHuman: q\n\nAssistant: a", "rejected": ""}, schema.MALFORMED_CONVERSATION)
    rejected({"chosen": "no markers at all"}, schema.MALFORMED_CONVERSATION, format="hh")
    rejected({"chosen": ["list"]}, schema.MALFORMED_CONVERSATION, format="hh")
    rejected({"prompt": "x"}, schema.UNKNOWN_FORMAT, format="hh")


def test_forced_format_overrides_detection():
    record = {**sg(("human", "hi"), ("gpt", "yo")), **oa(("user", "other"), ("assistant", "answer"))}
    assert kept(record) == [u("hi"), a("yo")]  # auto: conversations first
    assert kept(record, format="openai") == [u("other"), a("answer")]
    result = rejected(sg(("human", "hi"), ("gpt", "yo")), schema.UNKNOWN_FORMAT, format="openai")
    assert "'messages'" in result.detail


# --- preference, completion and label rows -------------------------------------------------------


def test_sharegpt_preference_uses_prompt_plus_chosen():
    record = {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"}],
              "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}  # fmt: skip
    assert kept(record) == [s("sys"), u("q"), a("good")]
    result = removed(record, schema.PREFERENCE_PAIR, preference="skip")
    assert result.messages == [s("sys"), u("q"), a("good")]  # best effort, for removed/


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]},
        {"messages": [{"role": "user", "content": "q"}], "chosen": {"role": "assistant", "content": "good"},
         "rejected": {"role": "assistant", "content": "bad"}},
        {"instruction": "q", "input": "", "chosen": "good", "rejected": "bad"},
    ],
)  # fmt: skip
def test_preference_shapes_use_chosen_or_are_skipped(record):
    assert kept(record) == [u("q"), a("good")]
    removed(record, schema.PREFERENCE_PAIR, preference="skip")


def test_hh_preference_is_skipped():
    record = {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    result = removed(record, schema.PREFERENCE_PAIR, preference="skip")
    assert result.messages == [u("q"), a("good")]


def test_prompt_completion():
    assert kept({"prompt": "q", "completion": "a"}) == [u("q"), a("a")]


def test_negative_label_removed_positive_kept():
    record = {**oa(("user", "q"), ("assistant", "bad answer")), "label": False}
    result = removed(record, schema.NEGATIVE_LABEL)
    assert result.messages == [u("q"), a("bad answer")]
    assert kept({**record, "label": True}) == [u("q"), a("bad answer")]
    # only a boolean false is a KTO negative; other label columns (classes, scores) are not
    assert kept({**record, "label": 0}) == [u("q"), a("bad answer")]
    removed({"prompt": "q", "completion": "a", "label": False}, schema.NEGATIVE_LABEL)


def test_rejection_beats_label_and_label_beats_conversation_removal():
    rejected({"messages": "oops", "label": False}, schema.MALFORMED_CONVERSATION)
    removed({**oa(("user", "q"), ("tool", "x")), "label": False}, schema.NEGATIVE_LABEL)
    removed({"prompt": "q", "chosen": "", "rejected": "b"}, schema.PREFERENCE_PAIR, preference="skip")


# --- normalization rules -------------------------------------------------------------------------


def test_content_is_stripped_and_empty_messages_dropped():
    record = oa(("user", "  hi \n"), ("assistant", " "), ("assistant", "\tyo "), ("user", ""), ("user", None))
    assert kept(record) == [u("hi"), a("yo")]


def test_consecutive_same_role_merged_with_blank_line():
    record = oa(("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"))
    assert kept(record) == [u("a\n\nb"), a("c\n\nd")]


def test_dropping_an_empty_turn_merges_its_neighbours():
    record = sg(("human", "q1"), ("gpt", "a1"), ("human", ""), ("gpt", "a2"))
    assert kept(record) == [u("q1"), a("a1\n\na2")]


def test_leading_assistant_and_trailing_user_dropped():
    record = oa(("assistant", "hello, how can I help?"), ("user", "q"), ("assistant", "a"), ("user", "thanks"))
    assert kept(record) == [u("q"), a("a")]


def test_leading_assistant_dropped_after_system():
    record = oa(("system", "sys"), ("assistant", "greeting"), ("user", "q"), ("assistant", "a"))
    assert kept(record) == [s("sys"), u("q"), a("a")]


def test_system_keep_drop_and_merge():
    record = oa(("system", "s1"), ("system", "s2"), ("user", "q"), ("assistant", "a"))
    assert kept(record) == [s("s1\n\ns2"), u("q"), a("a")]
    assert kept(record, system="drop") == [u("q"), a("a")]


def test_system_after_first_position_is_bad_role_order():
    record = oa(("user", "q"), ("assistant", "a"), ("system", "late"), ("user", "q2"), ("assistant", "a2"))
    result = removed(record, schema.BAD_ROLE_ORDER)
    assert "position 2" in result.detail
    removed(record, schema.BAD_ROLE_ORDER, system="drop")
    # an empty late system message is dropped like any empty message
    assert kept(oa(("user", "q"), ("system", " "), ("assistant", "a"))) == [u("q"), a("a")]


def test_turns_first():
    record = oa(("system", "sys"), ("assistant", "hi"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"),
                ("assistant", "a2"))  # fmt: skip
    assert kept(record, turns="first") == [s("sys"), u("q1"), a("a1")]
    assert kept(record, turns="first", system="drop") == [u("q1"), a("a1")]
    removed(oa(("user", "q1")), schema.NO_ASSISTANT_TURN, turns="first")


def test_empty_conversation():
    removed(oa(("user", " "), ("assistant", "")), schema.EMPTY_CONVERSATION)
    removed({"messages": []}, schema.EMPTY_CONVERSATION)
    removed({"instruction": "", "input": "", "output": " "}, schema.EMPTY_CONVERSATION)


@pytest.mark.parametrize(
    "record",
    [
        oa(("user", "q")),
        oa(("assistant", "a")),
        oa(("system", "sys")),
        oa(("system", "sys"), ("user", "q")),
        oa(("user", "q"), ("assistant", " ")),
        {"instruction": "q", "output": ""},
    ],
)
def test_no_assistant_turn(record):
    result = removed(record, schema.NO_ASSISTANT_TURN)
    assert result.messages  # what was there, for removed/


@pytest.mark.parametrize("role", ["function_call", "observation", "function", "tool", "ipython", "narrator"])
def test_tool_and_unknown_roles_remove_the_whole_row(role):
    record = sg(("human", "q"), ("gpt", "a"), ("human", "q2"), (role, "{}"), ("gpt", "a2"))
    result = removed(record, schema.UNSUPPORTED_ROLE)
    assert f"'{role}'" in result.detail and "message 3" in result.detail


def test_messages_field():
    record = {"conversation_a": [{"role": "user", "content": "q", "num_tokens": 1},
                                 {"role": "assistant", "content": "a", "num_tokens": 1}],
              "conversation_b": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
              "winner": "model_a"}  # fmt: skip
    rejected(record, schema.UNKNOWN_FORMAT)
    assert kept(record, messages_field="conversation_a") == [u("q"), a("a")]
    assert kept(record, messages_field="conversation_b") == [u("q"), a("b")]
    result = rejected({"other": 1}, schema.UNKNOWN_FORMAT, messages_field="conversation_a")
    assert "conversation_a" in result.detail
    sharegpt_style = {"chat": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert kept(sharegpt_style, messages_field="chat") == [u("q"), a("a")]
    rejected({"chat": "not a list"}, schema.MALFORMED_CONVERSATION, messages_field="chat")


# --- rejections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("record", "kind"), [([1, 2], "array"), ("text", "string"), (None, "null"), (3, "number")])
def test_not_an_object(record, kind):
    result = rejected(record, schema.NOT_AN_OBJECT)
    assert kind in result.detail


def test_unknown_format_lists_keys_truncated():
    result = rejected({"question": "q", "answer": "a"}, schema.UNKNOWN_FORMAT)
    assert "'question'" in result.detail and "'answer'" in result.detail
    result = rejected({f"key_{i}": i for i in range(100)}, schema.UNKNOWN_FORMAT)
    assert "'key_0'" in result.detail and "'key_99'" not in result.detail and len(result.detail) <= 200


@pytest.mark.parametrize(
    "record",
    [
        {"messages": "hello"},
        {"messages": {"role": "user", "content": "hi"}},
        {"conversations": ["hi", "yo"]},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": {"text": "hi"}}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": None, "content": "hi"}]},
        {"messages": [{"content": "hi"}]},
        {"conversations": [{"from": "human"}]},
        {"messages": [{"role": "user", "content": ["plain string part"]}]},
        {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]},
        {"instruction": 3, "output": "a"},
        {"instruction": "q", "input": ["x"], "output": "a"},
        {"instruction": "q", "output": "a", "system": 1},
        {"prompt": 5, "chosen": "a", "rejected": "b"},
        {"conversations": [{"from": "human", "value": "q"}], "chosen": 1.5, "rejected": 2},
    ],
)
def test_malformed_conversation(record):
    rejected(record, schema.MALFORMED_CONVERSATION)


def test_none_content_is_empty_not_malformed():
    assert kept(oa(("user", "q"), ("assistant", None), ("assistant", "a"))) == [u("q"), a("a")]
    assert kept({"messages": [{"role": "user", "content": [{"type": "text", "text": None}, {"type": "text",
                 "text": "q"}]}, {"role": "assistant", "content": "a"}]}) == [u("q"), a("a")]  # fmt: skip


def test_never_raises_on_odd_data():
    odd = [{}, {"messages": None}, {"conversations": [None]}, {"chosen": None, "rejected": None},
           {"chosen": "\n\nHuman:", "rejected": ""}, {"messages": [[]]}, {"label": False},
           {"instruction": None, "output": None}, {"messages": [{"role": "user", "content": [None]}]},
           {"messages": [{"role": "x" * 10_000, "content": "y"}]}]  # fmt: skip
    for record in odd:
        result = norm(record)
        assert result.status != schema.KEPT
        assert result.detail is None or len(result.detail) <= 200


def test_detail_is_bounded():
    result = removed(oa(("user", "q"), ("role-" + "x" * 500, "y")), schema.UNSUPPORTED_ROLE)
    assert len(result.detail) <= 200


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"format": "chatml"}, ["format", "sharegpt", "'chatml'"]),
        ({"preference": "rejected"}, ["preference", "chosen", "skip"]),
        ({"turns": "last"}, ["turns", "all", "first"]),
        ({"system": "fold"}, ["system", "keep", "drop"]),
        ({"messages_field": ""}, ["messages-field"]),
        ({"messages_field": "conv", "format": "alpaca"}, ["messages-field", "auto"]),
        ({"messages_field": "conv", "format": "hh"}, ["messages-field", "auto"]),
    ],
)
def test_config_validation(kwargs, words):
    with pytest.raises(ValueError) as excinfo:
        NormalizeConfig(**kwargs)
    for word in words:
        assert word in str(excinfo.value)


def test_config_defaults_are_valid_and_frozen():
    config = NormalizeConfig()
    assert (config.format, config.messages_field, config.preference, config.turns, config.system) == (
        "auto", None, "chosen", "all", "keep")  # fmt: skip
    NormalizeConfig(format="openai", messages_field="conversation_a")
    with pytest.raises(AttributeError):
        config.format = "hh"  # type: ignore[misc]


def test_rows_removed_whole_keep_their_messages_as_found():
    from operators.normalize import NormalizeConfig, normalize_record

    record = {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "get_weather"}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": [{"type": "text", "text": "Sunny."}, {"type": "image_url"}]},
    ]}
    result = normalize_record(record, NormalizeConfig())
    assert (result.status, result.reason) == ("removed", "unsupported_content")
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert "get_weather" in result.messages[1]["content"] and result.messages[3]["content"] == "Sunny.\n\n[image_url part]"


def test_unknown_format_names_a_field_that_looks_like_a_conversation():
    from operators.normalize import NormalizeConfig, normalize_record

    record = {"id": 7, "turns": ["What is 2+2?", "4", "And 3+3?", "6"]}
    result = normalize_record(record, NormalizeConfig())
    assert result.reason == "unknown_format"
    assert "field 'turns' looks like a conversation: pass --messages-field turns; keys: 'id', 'turns'" in result.detail
    read = normalize_record(record, NormalizeConfig(messages_field="turns"))  # strings alternate user / assistant
    assert [m["role"] for m in read.messages] == ["user", "assistant", "user", "assistant"]
    assert normalize_record({"id": 7, "text": "hello"}, NormalizeConfig()).detail == \
        "no known conversation format; keys: 'id', 'text'"
