"""Embed stage: vectors, windows and cuts on the real bundled MiniLM, in-process (no Ray, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from operators.embed import (
    BUILTIN_EMBEDDER,
    CUT,
    DEDUP_TEXT,
    VECTOR,
    WINDOWS,
    Embed,
    EmbedConfig,
    embed_texts,
    embedding_dimension,
    output_schema,
    plan_windows,
    resolve_model_path,
)

# Every word here is one MiniLM word piece (checked in `single_piece_words`), so in texts made of them
# word boundaries are piece boundaries and a test can place windows and cuts by counting words.
SINGLE_PIECE_WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "to", "big", "red", "house"]
SHORT_TEXTS = [
    "How do I reverse a list in Python without changing the original list?",
    "The capital of France is Paris, a city known for its museums and cafes.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]


@pytest.fixture(scope="module")
def embed():
    return Embed(EmbedConfig(device="cpu", backend="torch"))  # the reference runtime; others: test_embed_backends


@pytest.fixture(scope="module")
def single_piece_words(embed):
    for word in SINGLE_PIECE_WORDS:
        assert len(embed.tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    return SINGLE_PIECE_WORDS


def words_text(words: list[str], count: int, seed: int) -> list[str]:
    return list(np.random.default_rng(seed).choice(words, count))


def table(texts: list[str], ids: list[str] | None = None) -> pa.Table:
    ids = ids if ids is not None else [f"row{i}" for i in range(len(texts))]
    return pa.table({"id": ids, DEDUP_TEXT: texts})


def vectors_of(out: pa.Table) -> np.ndarray:
    column = out.column(VECTOR).combine_chunks()
    return column.values.to_numpy().reshape(len(column), -1)


def reference(embed, texts: list[str]) -> np.ndarray:
    """What plain sentence-transformers gives, one text per call (no batch-composition effects)."""
    return np.stack([embed.model.encode([text], normalize_embeddings=True)[0] for text in texts])


def mean_of_windows(embed, windows: list[str]) -> np.ndarray:
    mean = reference(embed, windows).astype(np.float64).mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


# --- short texts: the common case ----------------------------------------------------------------


def test_short_texts_equal_plain_encode_and_keep_ids_in_order(embed):
    ids = ["z9", "a1", "m5"]
    out = embed(table(SHORT_TEXTS, ids))
    assert out.schema == output_schema(384)
    assert out.column_names == ["id", VECTOR, WINDOWS, CUT]
    assert out.column("id").to_pylist() == ids
    assert out.column(WINDOWS).to_pylist() == [1, 1, 1]
    assert out.column(CUT).to_pylist() == [False, False, False]
    vectors = vectors_of(out)
    assert vectors.dtype == np.float32
    # Batch composition moves vectors by <= ~2.4e-7 per component (docs/notes.md), far inside 1e-6.
    np.testing.assert_allclose(vectors, reference(embed, SHORT_TEXTS), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_one_text_alone_is_bitwise_plain_encode(embed):
    vectors, windows, cut = embed_texts(embed.model, embed.tokenizer, SHORT_TEXTS[:1], 512, 128)
    assert np.array_equal(vectors, embed.model.encode(SHORT_TEXTS[:1], normalize_embeddings=True))
    assert windows.tolist() == [1] and cut.tolist() == [False]


def test_empty_text_is_embedded_as_is_and_empty_batch_keeps_the_schema(embed):
    out = embed(table(["", "   "]))
    np.testing.assert_allclose(vectors_of(out), reference(embed, ["", "   "]), atol=1e-6, rtol=0)
    assert out.column(WINDOWS).to_pylist() == [1, 1]
    assert out.column(CUT).to_pylist() == [False, False]
    empty = embed(table([]).cast(pa.schema([("id", pa.string()), (DEDUP_TEXT, pa.string())])))
    assert empty.num_rows == 0 and empty.schema == output_schema(384)


def test_null_text_or_missing_column_is_a_code_fault(embed):
    with pytest.raises(ValueError, match="null 'dedup_text'"):
        embed(pa.table({"id": ["a", "b"], DEDUP_TEXT: ["x", None]}))
    with pytest.raises(ValueError, match="no 'dedup_text' column"):
        embed(pa.table({"id": ["a"], "text": ["x"]}))


# --- long texts: windows and cuts ----------------------------------------------------------------


def test_long_text_is_the_normalized_mean_of_balanced_whole_word_windows(embed, single_piece_words):
    words = words_text(single_piece_words, 400, seed=1)  # 400 pieces > the 254-piece window
    text = " ".join(words)
    out = embed(table([SHORT_TEXTS[0], text]))
    assert embed.window == 254  # 256 minus [CLS] and [SEP]
    assert out.column(WINDOWS).to_pylist() == [1, 2]
    assert out.column(CUT).to_pylist() == [False, False]
    # Two windows of 200 words each: the fewest that fit, of equal size.
    expected = mean_of_windows(embed, [" ".join(words[:200]), " ".join(words[200:])])
    vector = vectors_of(out)[1]
    np.testing.assert_allclose(vector, expected, atol=1e-6, rtol=0)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-6
    # Not the truncated text that plain encode would embed.
    assert float(vector @ reference(embed, [text])[0]) < 1 - 1e-4


def test_text_over_max_tokens_is_cut_and_its_tail_does_not_matter(embed, single_piece_words):
    words = words_text(single_piece_words, 700, seed=2)
    head = " ".join(words[:512])
    texts = [
        " ".join(words),
        " ".join(words[:600]) + " completely different junk: zebras, quasars and 1234567!",
        head,
    ]
    vectors, windows, cut = embed_texts(embed.model, embed.tokenizer, texts, 512, 128)
    assert cut.tolist() == [True, True, False]
    assert windows.tolist() == [3, 3, 3]  # 512 pieces: 3 windows of ~171, not 254 + 254 + 4
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6, rtol=0)
    # Cutting equals embedding exactly the first max_tokens pieces.
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6, rtol=0)
    expected = mean_of_windows(embed, [" ".join(words[a:b]) for a, b in ((0, 171), (171, 341), (341, 512))])
    np.testing.assert_allclose(vectors[0], expected, atol=1e-6, rtol=0)


def test_windows_are_substrings_within_the_window_on_word_boundaries(embed):
    tokenizer = embed.tokenizer
    rng = np.random.default_rng(3)
    # Multi-piece words ("unbelievably" is 5 pieces) so balanced boundaries and the cut land inside words.
    vocabulary = ["unbelievably", "photosynthesis", "cat", "the", "extraordinarily", ",", "quantization"]
    text = " ".join(rng.choice(vocabulary, 400))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    max_tokens = 600
    assert len(ids) > max_tokens
    plan = plan_windows(tokenizer, [text], max_tokens, embed.window)
    assert plan.cut.tolist() == [True] and plan.windows.tolist() == [len(plan.pieces)] == [3]
    position, piece_ids = 0, []
    for piece in plan.pieces:
        position = text.index(piece, position) + len(piece)  # substrings, in order
        tokens = tokenizer(piece, add_special_tokens=False)["input_ids"]
        assert 0 < len(tokens) <= embed.window
        piece_ids += tokens
    # Whole words re-tokenize to exactly the text's own pieces; the cut backed off to a word start.
    assert piece_ids == ids[: len(piece_ids)]
    longest_word = max(len(tokenizer(word, add_special_tokens=False)["input_ids"]) for word in vocabulary)
    assert max_tokens - longest_word < len(piece_ids) <= max_tokens
    assert text[position] == " "


def test_prefix_shortcut_for_huge_texts_matches_whole_tokenization(embed, single_piece_words):
    huge = " ".join(words_text(single_piece_words, 20000, seed=4))  # ~80k characters
    plan = plan_windows(embed.tokenizer, [huge, huge[:6000]], 512, embed.window)
    assert plan.cut.tolist() == [True, True]
    assert plan.pieces[:3] == plan.pieces[3:]
    # A prefix that shows too few pieces (a run of spaces) falls back to tokenizing the whole text.
    spaced = "start" + " " * 20000 + "the cat sat"
    plan = plan_windows(embed.tokenizer, [spaced], 512, embed.window)
    assert plan.pieces == [spaced] and plan.cut.tolist() == [False]
    plan = plan_windows(embed.tokenizer, [spaced], 2, embed.window)
    assert plan.pieces == ["start" + " " * 20000 + "the"] and plan.cut.tolist() == [True]


# --- the real model ------------------------------------------------------------------------------


def test_near_identical_texts_are_close_and_unrelated_ones_are_not(embed):
    base = (
        "To bake a loaf of bread, mix flour, water, salt and yeast, knead the dough for ten minutes, "
        "let it rise for an hour in a warm place, shape it, and bake at two hundred degrees until the "
        "crust is golden."
    )
    assert len(base.split()) == 41
    edited = base.replace("ten minutes", "twelve minutes")
    unrelated = "The stock market fell sharply on Tuesday after the central bank raised interest rates again."
    vectors = vectors_of(embed(table([base, edited, unrelated])))
    assert float(vectors[0] @ vectors[1]) >= 0.95
    assert float(vectors[0] @ vectors[2]) < 0.8


def test_threads_are_set_explicitly(embed):
    import torch

    before = torch.get_num_threads()
    try:
        Embed(EmbedConfig(device="cpu", threads=1, backend="torch"))
        assert torch.get_num_threads() == 1
        # The exported runtimes take their threads from the stage, not from torch.
        assert Embed(EmbedConfig(device="cpu", threads=1)).threads == 1
    finally:
        torch.set_num_threads(before)


def test_embedding_dimension_of_the_builtin():
    assert embedding_dimension(EmbedConfig()) == 384


# --- config --------------------------------------------------------------------------------------


def test_builtin_resolves_to_the_packaged_directory():
    path = Path(resolve_model_path(BUILTIN_EMBEDDER))
    assert path.is_dir() and (path / "modules.json").is_file()
    assert resolve_model_path(str(path)) == str(path)  # a local directory is used as is
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_missing_local_model_path_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_path(missing)
    with pytest.raises(ValueError, match="does not exist"):
        EmbedConfig(model=missing)
    with pytest.raises(ValueError, match="not a model directory"):
        EmbedConfig(model=str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": ""}, "non-empty string"),
        ({"max_tokens": 0}, r"max_tokens must be an integer in \[1, 32767\]"),
        ({"max_tokens": 40000}, "max_tokens must be"),
        ({"max_tokens": True}, "max_tokens must be"),
        ({"max_tokens": "512"}, "max_tokens must be"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"device": "gpu"}, "device must be one of auto, cpu, cuda"),
        ({"threads": 0}, "threads must be a positive integer or None"),
    ],
)
def test_config_validation_says_how_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmbedConfig(**kwargs)


def test_cuda_without_a_gpu_fails_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="torch sees no GPU"):
        Embed(EmbedConfig(device="cuda"))
