"""Export an embedder to ONNX, in a process of its own (operators/embed_backends.py runs it).

    python -m operators.embed_export MODEL DIRECTORY [--quantize int8]

Writes into DIRECTORY (the caller's private scratch directory, renamed into the cache when this exits 0):

- `model.onnx`: the whole sentence-transformers pipeline as one graph (transformer, pooling, normalize),
  int8 MatMul weights with --quantize int8;
- `encoder.json`: what the runtime needs besides the graph (input names, max_seq_length, dimension) and whether
  the exported tokenizer alone reproduces the model's preprocessing (`lean`, with the reason when not);
- `tokenizer.json` (when lean): the model's Rust tokenizer, truncation and padding set exactly as
  `SentenceTransformer.encode` sets them.

Why a process of its own: the export needs torch and the sentence-transformers model (~450 MB of RSS that a
process never gives back); the embedding actor that asked only needs the graph and the tokenizer, so it never
imports torch at all (docs/notes.md, "The embedding actor's memory").
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

ONNX_OPSET = 17
FEATURES = ("input_ids", "attention_mask", "token_type_ids")
# Texts whose preprocessing the exported tokenizer must reproduce exactly before it may replace the model's:
# leading and trailing whitespace, control characters, accents and case, CJK, emoji, an empty text, and two
# longer than max_seq_length (truncation) in one batch with short ones (padding).
PROBES = [
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n",
    "",
    "ÉCOLE naïve Straße İstanbul",
    "日本語のテキストと中文文本",
    "emoji 😀👍🏽 and symbols ™ © ½",
    "def f(x):\n    return x ** 2  # code",
    "word " * 600,
    "supercalifragilistic" * 200,
    "ok",
]


def export(model, directory: Path, quantize: str | None) -> None:
    names = input_names(model)
    if quantize:
        fp32 = directory / "fp32.onnx"
        export_onnx(model, names, fp32)
        quantize_int8(fp32, directory / "model.onnx")
        fp32.unlink()
    else:
        export_onnx(model, names, directory / "model.onnx")
    lean, why = lean_tokenizer(model, names)
    settings = {
        "inputs": names,
        "max_seq_length": model.max_seq_length,
        "dimension": int(model.get_embedding_dimension()),
        "lean": lean is not None,
        "why_not_lean": why,
    }
    if lean is not None:
        (directory / "tokenizer.json").write_text(lean)
    (directory / "encoder.json").write_text(json.dumps(settings, indent=2) + "\n")


def input_names(model) -> list[str]:
    return [name for name in model.preprocess(["a"]) if name in FEATURES]


def lean_tokenizer(model, names: list[str]) -> tuple[str | None, str | None]:
    """(the tokenizer's JSON, None) when it alone gives `model.preprocess`'s features on every probe;
    (None, why) when the model's preprocessing does something more (a prompt, a chat template...)."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = model.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        return None, "no fast (Rust) tokenizer"
    if model.default_prompt_name and model.prompts.get(model.default_prompt_name):
        return None, "a default prompt (its length takes part in pooling)"
    features = model.preprocess(PROBES)
    extra = set(features) - set(FEATURES) - {"modality"}
    if extra:
        return None, f"preprocessing gives more than token ids: {sorted(extra)}"
    # Calling the tokenizer as preprocess does leaves its truncation and padding set on the Rust tokenizer,
    # so the serialized tokenizer carries them.
    tokenizer(["a"], padding=True, truncation="longest_first", max_length=model.max_seq_length)
    serialized = tokenizer.backend_tokenizer.to_str()
    ours_all = token_features(Tokenizer.from_str(serialized).encode_batch(PROBES), names)
    for name in names:
        ours, theirs = ours_all[name], features[name].numpy()
        if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            return None, f"the tokenizer alone gives other {name} than the model's preprocessing"
    return serialized, None


def token_features(encodings, names: list[str]) -> dict:
    """The graph's inputs from a batch of `tokenizers` encodings (padded alike): {name: int64 [batch, length]}."""
    import numpy as np

    attributes = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    return {name: np.array([getattr(e, attributes[name]) for e in encodings], dtype=np.int64) for name in names}


def export_onnx(model, names: list[str], path: Path) -> None:
    import torch

    class SentenceEmbedding(torch.nn.Module):
        """The whole sentence-transformers pipeline as one module of plain tensors (what ONNX traces)."""

        def __init__(self, pipeline):
            super().__init__()
            self.pipeline = pipeline

        def forward(self, *tensors):
            return self.pipeline(dict(zip(names, tensors)))["sentence_embedding"]

    # Two texts of different lengths: the example batch has padding, so the traced graph handles masks.
    example = model.preprocess(["a short text", "a somewhat longer text than the first one, with padding after"])
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["sentence_embedding"] = {0: "batch"}
    module = SentenceEmbedding(model.to("cpu")).eval()
    # The TorchScript exporter: the torch.export one needs onnxscript and trips on transformers' masks. Its
    # tracer warns about Python branches on tensor shapes; the ones in transformers' mask code and in pooling
    # take the same branch for every padded batch (checked: fp32 exports match torch on mixed batches).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example[name] for name in names),
            str(path),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights on the MatMuls only: per-tensor weights moved cosines 5x more (measured,
    # 1 - cos up to 0.11 vs 0.024); quantizing embeddings (Gather) saves nothing in time.
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m operators.embed_export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="what EmbedConfig.model names (the builtin, a directory or a hub name)")
    parser.add_argument("directory", type=Path, help="an existing empty directory to write into")
    parser.add_argument("--quantize", choices=("int8",))
    args = parser.parse_args(argv)
    from operators.embed import EmbedConfig, load_model

    export(load_model(EmbedConfig(model=args.model, device="cpu", backend="torch"), "cpu"), args.directory, args.quantize)


if __name__ == "__main__":
    main()
