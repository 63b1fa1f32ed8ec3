"""The exported CPU runtimes (operators/embed_backends.py) against the torch model they come from."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.config import PrepareConfig, add_prepare_arguments, config_from_args
from operators.embed import CPU_BACKEND, Embed, EmbedConfig
from operators.embed_backends import ONNX_FILE

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


def test_default_cpu_runtime_and_refusals():
    assert EmbedConfig().cpu_backend == CPU_BACKEND
    assert EmbedConfig().runtime("cuda") == "torch-fp16"
    assert EmbedConfig(backend="onnx", quantize="int8").runtime("cpu") == "onnx-int8"
    with pytest.raises(ValueError, match="needs --embed-backend onnx"):
        EmbedConfig(backend="openvino", quantize="int8")
    with pytest.raises(ValueError, match="runs on CPU"):
        EmbedConfig(backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        EmbedConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="quantize"):
        EmbedConfig(backend="onnx", quantize="int4")


def parse(*argv: str) -> PrepareConfig:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_flags_reach_the_config():
    config = parse("--embed-backend", "onnx", "--embed-quantize", "int8")
    assert (config.embed.backend, config.embed.quantize) == ("onnx", "int8")
    config = parse("--embed-backend", "torch", "--embed-quantize", "none")
    assert (config.embed.backend, config.embed.quantize) == ("torch", None)
    assert PrepareConfig.from_dict(config.to_dict()).embed == config.embed


def test_vectors_cache_key_names_the_runtime_that_runs():
    from jobs.vectors import settings_key

    def key(device: str, backend: str, quantize: str | None = None) -> str:
        embed = EmbedConfig(backend=backend, quantize=quantize)
        return settings_key(embed, embed.runtime(device))

    cpu = {key("cpu", backend, quantize) for backend, quantize in
           (("torch", None), ("onnx", None), ("onnx", "int8"), ("openvino", None))}
    assert len(cpu) == 4
    # On a GPU every CPU backend choice runs torch fp16: one key, and not a CPU run's key.
    gpu = {key("cuda", backend, quantize) for backend, quantize in
           (("auto", None), ("torch", None), ("onnx", None), ("openvino", None))}
    assert len(gpu) == 1 and not gpu & cpu
    # The window settings and the embedder are part of the key too.
    assert settings_key(EmbedConfig(max_tokens=256), "torch-fp32") != settings_key(EmbedConfig(), "torch-fp32")
