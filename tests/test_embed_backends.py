"""The exported CPU runtimes (operators/embed_backends.py) against the torch model they come from."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.config import PrepareConfig, add_prepare_arguments, config_from_args
from operators.embed import (
    BUILTIN_EMBEDDER,
    CPU_BACKEND,
    Embed,
    EmbedConfig,
    load_model,
    plan_windows,
    resolve_model_path,
    window_tokens,
)
from operators.embed_backends import (
    ONNX_FILE,
    SETTINGS_FILE,
    ExportedEncoder,
    OPENVINO_LENGTH_BUCKET,
    ExportSettings,
    RustTokenizer,
    cpu_has_bf16,
    export_key,
    exported_model,
    openvino_precision,
    padded_to_bucket,
)

TEXTS = [
    "How do I reverse a list in Python without changing the original list?",
    "ok",
    "",
    "The capital of France is Paris, a city known for its museums and cafes. " * 3,
    # Longer than the 254-piece window: embedded in windows and averaged, by any runtime alike.
    " ".join(f"word{i} the cat sat on the mat" for i in range(80)),
]


def run(stage: Embed, texts=TEXTS) -> tuple[np.ndarray, list[int], list[bool]]:
    out = stage(pa.table({"id": [str(i) for i in range(len(texts))], "dedup_text": texts}))
    vectors = out.column("vector").combine_chunks()
    return vectors.values.to_numpy().reshape(len(texts), -1), out.column("windows").to_pylist(), out.column(
        "cut"
    ).to_pylist()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def torch_result():
    return run(Embed(EmbedConfig(device="cpu", threads=2, backend="torch")))


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_fp32_exports_give_the_torch_vectors(backend, exports, torch_result):
    stage = Embed(EmbedConfig(device="cpu", threads=2, backend=backend, export_dir=exports))
    assert type(stage.model).__name__ == "ExportedEncoder" and stage.model.backend == backend
    vectors, windows, cut = run(stage)
    reference, ref_windows, ref_cut = torch_result
    assert windows == ref_windows and windows[-1] > 1  # the long text really went through windows
    assert cut == ref_cut
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    # Float rounding only: the size of batch-composition effects in torch itself (docs/notes.md).
    assert np.max(1 - np.sum(vectors * reference, axis=1)) < 1e-6
    assert np.max(np.abs(vectors @ vectors.T - reference @ reference.T)) < 2e-6


def test_export_is_cached_by_content(exports):
    config = EmbedConfig(device="cpu", threads=1, backend="onnx", export_dir=exports)
    first = Embed(config)
    path = next(p for p in Path(exports).glob(f"*/{ONNX_FILE}"))
    stamp = path.stat().st_mtime_ns
    Embed(config)  # a second actor on the node: loads the file, does not export again
    assert path.stat().st_mtime_ns == stamp
    assert len(list(Path(exports).glob(f"*/{ONNX_FILE}"))) == 1
    assert not list(Path(exports).glob(".export-*"))  # no scratch left behind
    assert run(first)[0].shape == (len(TEXTS), 384)


def test_export_key_is_the_content_for_directories_and_the_name_for_hub_models(tmp_path):
    builtin = Path(resolve_model_path(BUILTIN_EMBEDDER))
    copy = shutil.copytree(builtin, tmp_path / "copy")
    assert export_key(str(copy), None) == export_key(str(builtin), None)  # content, not where it lies
    (copy / "extra.txt").write_text("changed")
    assert export_key(str(copy), None) != export_key(str(builtin), None)
    assert export_key(str(builtin), "int8") != export_key(str(builtin), None)
    assert export_key("org/model-a", None) != export_key("org/model-b", None)


def test_int8_is_a_different_lossy_export(exports, torch_result):
    stage = Embed(EmbedConfig(device="cpu", threads=2, backend="onnx", quantize="int8", export_dir=exports))
    vectors, windows, _ = run(stage)
    reference = torch_result[0]
    gaps = 1 - np.sum(vectors * reference, axis=1)
    assert gaps.max() > 1e-5  # really quantized, not the fp32 graph
    assert gaps.max() < 0.1  # still the same model
    assert windows == torch_result[1]
    files = sorted(Path(exports).glob(f"*/{ONNX_FILE}"), key=lambda p: p.stat().st_size)
    # int8 MatMul weights; the word-embedding table (47 of the 90 MB) stays float32
    assert len(files) >= 2 and files[0].stat().st_size < 0.75 * files[-1].stat().st_size


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units (AMX or AVX512_BF16)")
def test_bf16_runs_the_fp32_export_in_bf16(exports, torch_result):
    fp32 = Embed(EmbedConfig(device="cpu", threads=2, backend="openvino", export_dir=exports))
    fp32_vectors = run(fp32)[0]
    onnx_files = set(Path(exports).glob(f"*/{ONNX_FILE}"))
    stage = Embed(EmbedConfig(device="cpu", threads=2, backend="openvino", quantize="bf16", export_dir=exports))
    vectors, windows, _ = run(stage)
    assert set(Path(exports).glob(f"*/{ONNX_FILE}")) == onnx_files  # the same graph, compiled to bf16
    gaps = 1 - np.sum(vectors * torch_result[0], axis=1)
    assert gaps.max() > 1e-6  # really bf16: fp32 runtimes agree within 2.4e-7
    assert gaps.max() < 5e-3  # still the same model
    assert np.abs(1 - np.sum(fp32_vectors * torch_result[0], axis=1)).max() < 1e-6
    assert windows == torch_result[1]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)


def test_openvino_precision_is_f32_unless_bf16_is_asked_and_the_cpu_has_it():
    assert openvino_precision(None, ["FP32", "BF16"]) == "f32"  # never OpenVINO's own bf16 pick
    assert openvino_precision("bf16", ["FP32", "BF16", "INT8"]) == "bf16"
    with pytest.raises(ValueError, match="needs a CPU with bf16 units"):
        openvino_precision("bf16", ["FP32", "FP16", "INT8"])


def test_default_cpu_runtime_and_refusals():
    assert EmbedConfig().cpu_backend == CPU_BACKEND
    assert EmbedConfig().runtime("cuda") == "torch-fp16"
    assert EmbedConfig(backend="onnx", quantize="int8").runtime("cpu") == "onnx-int8"
    with pytest.raises(ValueError, match="needs --embed-backend onnx"):
        EmbedConfig(backend="openvino", quantize="int8")
    assert EmbedConfig(backend="openvino", quantize="bf16").runtime("cpu") == "openvino-bf16"
    for backend in ("onnx", "torch"):
        with pytest.raises(ValueError, match="needs --embed-backend openvino"):
            EmbedConfig(backend=backend, quantize="bf16")
    with pytest.raises(ValueError, match="runs on CPU"):
        EmbedConfig(backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        EmbedConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="quantize"):
        EmbedConfig(backend="onnx", quantize="int4")


def test_prefilter_pass_is_the_reduced_precision_runtime_of_the_same_model():
    config = EmbedConfig(prefilter="bf16", max_tokens=256)
    first = config.prefilter_pass()
    assert (first.backend, first.quantize, first.prefilter, first.max_tokens) == ("openvino", "bf16", None, 256)
    assert first.runtime("cpu") == "openvino-bf16" and config.runtime("cpu") == f"{CPU_BACKEND}-fp32"
    assert config.margin == 0.02
    int8 = EmbedConfig(backend="torch", prefilter="int8", prefilter_margin=0.1)
    assert int8.prefilter_pass().runtime("cpu") == "onnx-int8" and int8.runtime("cpu") == "torch-fp32"
    assert int8.margin == 0.1
    with pytest.raises(ValueError, match="drop --embed-quantize"):
        EmbedConfig(backend="onnx", quantize="int8", prefilter="int8")
    with pytest.raises(ValueError, match="needs --embed-prefilter"):
        EmbedConfig(prefilter=None, prefilter_margin=0.05)
    with pytest.raises(ValueError, match="in \\(0, 0.5\\]"):
        EmbedConfig(prefilter_margin=0.6)  # auto checks a margin it may use
    with pytest.raises(ValueError, match="in \\(0, 0.5\\]"):
        EmbedConfig(prefilter="bf16", prefilter_margin=0.0)
    with pytest.raises(ValueError, match="for CPU runs"):
        EmbedConfig(prefilter="bf16", device="cuda")
    with pytest.raises(ValueError, match="prefilter must be"):
        EmbedConfig(prefilter="fp16")


def test_prefilter_auto_is_bf16_only_where_its_margin_is_measured_and_it_runs():
    asked = []

    def bf16_units(answer: bool):
        def ask() -> bool:
            asked.append(answer)
            return answer
        return ask

    auto = EmbedConfig()
    assert auto.prefilter == "auto"
    chosen, why = auto.resolve_prefilter("cpu", bf16_units(True))
    assert (chosen.prefilter, chosen.margin, why) == ("bf16", 0.02, "the built-in embedder on CPUs with bf16 units")
    assert chosen.prefilter_pass().runtime("cpu") == "openvino-bf16" and chosen.runtime("cpu") == "openvino-fp32"
    off, why = auto.resolve_prefilter("cpu", bf16_units(False))
    assert off.prefilter is None and off.prefilter_margin is None and "no bf16 units" in why
    assert EmbedConfig(prefilter_margin=0.05).resolve_prefilter("cpu", bf16_units(True))[0].margin == 0.05
    # Decided without asking the cluster where the margin is unmeasured or the prefilter cannot run.
    asked.clear()
    for config, device, reason in (
        (auto, "cuda", "GPU embeds every text in torch fp16"),
        (EmbedConfig(backend="openvino", quantize="bf16"), "cpu", "--embed-quantize bf16"),
        (EmbedConfig(backend="torch"), "cpu", "--embed-backend torch asked for"),
        (EmbedConfig(model=str(resolve_model_path(BUILTIN_EMBEDDER))), "cpu", "built-in embedder only"),
    ):
        resolved, why = config.resolve_prefilter(device, bf16_units(True))
        assert resolved.prefilter is None and reason in why
        assert resolved == dataclasses.replace(config, prefilter=None)  # nothing else changes
    assert asked == []
    # An explicit choice is kept as it is, whatever the CPU.
    for prefilter in ("bf16", "int8", None):
        explicit = EmbedConfig(prefilter=prefilter)
        assert explicit.resolve_prefilter("cpu", bf16_units(False))[0] is explicit


def parse(*argv: str) -> PrepareConfig:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_flags_reach_the_config():
    config = parse("--embed-backend", "onnx", "--embed-quantize", "int8")
    assert (config.embed.backend, config.embed.quantize) == ("onnx", "int8")
    config = parse("--embed-backend", "openvino", "--embed-quantize", "bf16")
    assert (config.embed.backend, config.embed.quantize) == ("openvino", "bf16")
    config = parse("--embed-prefilter", "bf16", "--embed-prefilter-margin", "0.03")
    assert (config.embed.prefilter, config.embed.prefilter_margin, config.embed.quantize) == ("bf16", 0.03, None)
    config = parse("--embed-backend", "torch", "--embed-quantize", "none")
    assert (config.embed.backend, config.embed.quantize) == ("torch", None)
    assert (parse().embed.prefilter, parse("--embed-prefilter", "none").embed.prefilter) == ("auto", None)
    assert PrepareConfig.from_dict(config.to_dict()).embed == config.embed


def test_vectors_cache_key_names_the_runtime_that_runs():
    from jobs.vectors import settings_key

    def key(device: str, backend: str, quantize: str | None = None) -> str:
        embed = EmbedConfig(backend=backend, quantize=quantize)
        return settings_key(embed, embed.runtime(device))

    cpu = {key("cpu", backend, quantize) for backend, quantize in
           (("torch", None), ("onnx", None), ("onnx", "int8"), ("openvino", None), ("openvino", "bf16"))}
    assert len(cpu) == 5
    # On a GPU every CPU backend choice runs torch fp16: one key, and not a CPU run's key.
    gpu = {key("cuda", backend, quantize) for backend, quantize in
           (("auto", None), ("torch", None), ("onnx", None), ("openvino", None))}
    assert len(gpu) == 1 and not gpu & cpu
    # The window settings and the embedder are part of the key too.
    assert settings_key(EmbedConfig(max_tokens=256), "torch-fp32") != settings_key(EmbedConfig(), "torch-fp32")


# --- the lean encoder: graph + Rust tokenizer, no torch -------------------------------------------


@pytest.fixture(scope="module")
def real_texts(shared_data):
    """Instructions and answers in English and Chinese, several long enough to be windowed, plus edge cases."""
    texts = []
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        rows = json.loads((shared_data / "llamafactory" / name).read_text())[:150]
        texts += [row["instruction"] for row in rows] + [row["output"] for row in rows]
    long = [text for text in texts if len(text) > 1500]
    assert len(long) >= 5  # the windowed path is really exercised
    return texts + TEXTS + ["  padded with spaces  ", "\ttabs\nand\r\nnew lines\n", "emoji 😀👍🏽 ½ ™"]


def test_openvino_pads_lengths_to_its_bucket_and_the_vectors_stay_put(exports, real_texts):
    """The OpenVINO runtime sees lengths in steps of OPENVINO_LENGTH_BUCKET (fewer shapes: less memory); the
    padding is masked, so the vectors are those of the unpadded run up to float rounding."""
    assert OPENVINO_LENGTH_BUCKET > 1
    ids = np.array([[101, 7, 8, 102], [101, 9, 102, 0]])
    mask = (ids > 0).astype(np.int64)
    padded = padded_to_bucket({"input_ids": ids, "attention_mask": mask}, 16)
    assert padded["input_ids"].shape == padded["attention_mask"].shape == (2, 16)
    np.testing.assert_array_equal(padded["input_ids"][:, :4], ids)
    assert not padded["input_ids"][:, 4:].any() and not padded["attention_mask"][:, 4:].any()
    aligned = {"input_ids": np.ones((2, 32), np.int64), "attention_mask": np.ones((2, 32), np.int64)}
    assert padded_to_bucket(aligned, 16) is aligned
    assert padded_to_bucket({"input_ids": ids}, 16)["input_ids"] is ids  # no mask: never padded
    model_dir = str(resolve_model_path(BUILTIN_EMBEDDER))
    directory = exported_model(BUILTIN_EMBEDDER, model_dir, None, exports)  # the fp32 export
    encoder = ExportedEncoder.lean(directory, ExportSettings.read(directory), "openvino", 2)
    # A batch whose length is not a multiple of the bucket: it really gets padded.
    texts = next(batch for batch in (real_texts[i : i + 8] for i in range(0, len(real_texts), 8))
                 if encoder._features(batch, None)["input_ids"].shape[1] % OPENVINO_LENGTH_BUCKET)
    features = encoder._features(texts, None)
    import openvino

    compiled = openvino.Core().compile_model(str(directory / ONNX_FILE), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    unpadded = compiled(features)[0]
    unpadded /= np.linalg.norm(unpadded, axis=1, keepdims=True)
    ours = encoder.encode(texts, batch_size=len(texts))
    assert np.max(1 - np.sum(ours * unpadded, axis=1)) < 1e-6


def test_lean_encoder_is_the_model_preprocessing_without_torch(exports, real_texts):
    stage = Embed(EmbedConfig(device="cpu", threads=2, backend="openvino", export_dir=exports))
    directory = next(p.parent for p in Path(exports).glob(f"*/{SETTINGS_FILE}") if ExportSettings.read(p.parent).lean)
    settings = ExportSettings.read(directory)
    lean = ExportedEncoder.lean(directory, settings, "openvino", 2)
    model = load_model(EmbedConfig(), "cpu")
    full = ExportedEncoder.with_model(model, directory, settings, "openvino", 2)
    assert isinstance(lean.tokenizer, RustTokenizer) and not isinstance(full.tokenizer, RustTokenizer)
    # Same features for every batch the encoder forms, so the same vectors bit for bit.
    for start in range(0, len(real_texts), 32):
        batch = real_texts[start : start + 32]
        ours, theirs = lean._features(batch, None), full._features(batch, None)
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name])
    np.testing.assert_array_equal(lean.encode(real_texts[:64], batch_size=8), full.encode(real_texts[:64], batch_size=8))
    # Windowing reads the Rust tokenizer as it reads transformers': same window, pieces, counts and cuts.
    assert window_tokens(lean, lean.tokenizer) == window_tokens(model, model.tokenizer) == stage.window
    for max_tokens in (64, 512):
        a = plan_windows(lean.tokenizer, real_texts, max_tokens, stage.window)
        b = plan_windows(model.tokenizer, real_texts, max_tokens, stage.window)
        assert a.pieces == b.pieces
        np.testing.assert_array_equal(a.windows, b.windows)
        np.testing.assert_array_equal(a.cut, b.cut)
        assert a.cut.any() and (max_tokens < stage.window or a.windows.max() > 1)


def test_a_cpu_actor_never_imports_torch(exports):
    """The default CPU path loads the export without torch, transformers or sentence-transformers (~450 MB)."""
    Embed(EmbedConfig(device="cpu", threads=1, export_dir=exports))  # exported and cached here first
    probe = (
        "import sys, pyarrow as pa\n"
        "from operators.embed import Embed, EmbedConfig\n"
        f"stage = Embed(EmbedConfig(device='cpu', threads=1, export_dir={exports!r}))\n"
        "out = stage(pa.table({'id': ['a'], 'dedup_text': ['hello there']}))\n"
        "assert out.num_rows == 1\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_model_with_a_prompt_keeps_its_preprocessing(tmp_path):
    """The export declines the lean path when the model's preprocessing does more than its tokenizer (here a
    default prompt); the encoder then runs the model's own preprocessing and still gives torch's vectors."""
    model = load_model(EmbedConfig(), "cpu")
    model.prompts = {"query": "query: "}
    model.default_prompt_name = "query"
    model.save(str(tmp_path / "prompted"))
    config = EmbedConfig(model=str(tmp_path / "prompted"), device="cpu", threads=2, export_dir=str(tmp_path / "x"))
    stage = Embed(dataclasses.replace(config, backend="openvino"))
    settings = ExportSettings.read(next((tmp_path / "x").glob(f"*/{SETTINGS_FILE}")).parent)
    assert not settings.lean and "prompt" in settings.why_not_lean
    assert not isinstance(stage.tokenizer, RustTokenizer)
    reference = run(Embed(dataclasses.replace(config, backend="torch")))[0]
    plain = run(Embed(EmbedConfig(device="cpu", threads=2, backend="torch")))[0]
    vectors = run(stage)[0]
    assert np.max(1 - np.sum(vectors * reference, axis=1)) < 1e-6
    assert np.max(1 - np.sum(plain * reference, axis=1)) > 1e-4  # the prompt really changes the vectors
