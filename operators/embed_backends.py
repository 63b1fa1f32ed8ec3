"""Runtimes for the embedding model on CPU: torch (sentence-transformers itself), ONNX Runtime, OpenVINO.

Why not sentence-transformers' own `backend="onnx"|"openvino"`: it goes through Optimum, and optimum-onnx
pins transformers < 4.58 while this project runs transformers 5 (optimum-intel pins another torch and
transformers again). So the export is done here, with the libraries underneath: `torch.onnx.export` of the
whole sentence-transformers pipeline (transformer, pooling, normalize: one graph whose output is the
sentence embedding), ONNX Runtime's `quantize_dynamic` for int8, and OpenVINO compiling the same ONNX file.

The exported encoder tokenizes exactly as `SentenceTransformer.encode` does (the model's own `tokenize`,
which pads to the longest text of the batch and truncates at `max_seq_length`), sorts texts by length
before batching as `encode` does, and normalizes in float32. fp32 exports reproduce the torch vectors to
float rounding (measured: 1 - cos <= 1.2e-7, pairwise cosines within 5.4e-7, the size of batch-composition
effects). int8 is lossy (measured on Alpaca answers: 1 - cos up to 0.024, pairwise cosines moved by up to
0.063 with per-channel weights), so it is never a default: benchmarks/RESULTS.md has the decisions it changes.

Exports are cached in a directory named by a content key (the model's files, the runtime versions, the
options): a rerun, or another actor on the same node, loads the file instead of exporting again (~3 s).
Concurrent exporters write to a private temporary directory and rename it into place; the loser of the
race discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZATIONS = (None, "int8")
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
# Bump when the export recipe changes, so old caches are not reused.
EXPORT_FORMAT = 1
DEFAULT_CACHE = Path("~/.cache/chatsieve/embedders")


def check_backend(backend: str, quantize: str | None) -> None:
    """Raise ValueError for an unknown backend or a quantization it does not run."""
    if backend not in BACKENDS:
        raise ValueError(f"embed backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"embed quantize must be None or 'int8', got {quantize!r}")
    if quantize and backend != "onnx":
        # Measured: OpenVINO runs ONNX Runtime's dynamic-int8 graph slower than its own fp32 one, and torch
        # has no int8 path here. NNCF would quantize for OpenVINO, but it pins its own torch.
        raise ValueError(f"--embed-quantize int8 needs --embed-backend onnx (got backend {backend!r})")


def require_runtime(backend: str) -> None:
    """Raise ValueError naming the pip package when the backend's runtime is not installed."""
    modules = {"onnx": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}
    if backend not in modules:
        return
    module, package = modules[backend]
    try:
        __import__(module)
    except ImportError as error:
        raise ValueError(
            f"--embed-backend {backend} needs the {package} package: pip install {package}"
        ) from error


def export_key(model_dir: str, backend: str, quantize: str | None) -> str:
    """Content key of an export: the model's files, the recipe, and the versions that shape the graph."""
    import onnx
    import torch

    digest = hashlib.sha256()
    root = Path(model_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    recipe = {
        "format": EXPORT_FORMAT,
        "opset": ONNX_OPSET,
        "quantize": quantize,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    if quantize:
        import onnxruntime

        recipe["onnxruntime"] = onnxruntime.__version__
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    # The backend is not in the key: OpenVINO compiles the same ONNX file ONNX Runtime runs.
    return digest.hexdigest()[:20]


def exported_model(model, model_dir: str, backend: str, quantize: str | None, cache_dir: str | None) -> Path:
    """Path of the ONNX file for `model` (a loaded SentenceTransformer), exporting it if not cached."""
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    target = cache / export_key(model_dir, backend, quantize)
    if (target / ONNX_FILE).is_file():
        return target / ONNX_FILE
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=cache))
    try:
        fp32 = scratch / ("fp32.onnx" if quantize else ONNX_FILE)
        _export_onnx(model, fp32)
        if quantize:
            _quantize_int8(fp32, scratch / ONNX_FILE)
            fp32.unlink()
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / ONNX_FILE).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("exported the embedder to %s", target)
    return target / ONNX_FILE


def _input_names(model) -> list[str]:
    return [name for name in model.preprocess(["a"]) if name in ("input_ids", "attention_mask", "token_type_ids")]


def _export_onnx(model, path: Path) -> None:
    import torch

    names = _input_names(model)

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


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights on the MatMuls only: per-tensor weights moved cosines 5x more (measured,
    # 1 - cos up to 0.11 vs 0.024); quantizing embeddings (Gather) saves nothing in time.
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
    )


class ExportedEncoder:
    """`SentenceTransformer.encode`'s contract over an exported graph (the parts `operators.embed` uses).

    Holds the torch model only for its tokenizer and settings (`max_seq_length`, prompts, dimension).
    """

    def __init__(self, model, onnx_path: Path, backend: str, threads: int):
        self.model = model
        self.tokenizer = model.tokenizer
        self.names = _input_names(model)
        self.backend = backend
        if backend == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            self._run = lambda feeds: session.run(None, feeds)[0]
        elif backend == "openvino":
            import openvino

            # f32 explicitly: on CPUs with bf16 units OpenVINO may otherwise pick bf16, which moves
            # similarities by ~1e-3 (docs/notes.md), enough to flip decisions at 0.95.
            # No pinning of threads to cores: several actors (and other work) share a node's cores, and a
            # pinned thread waits for its core even when another is idle (measured ~10% slower unpinned
            # on a quiet machine, much faster pinned-free under contention).
            settings = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
            compiled = openvino.Core().compile_model(str(onnx_path), "CPU", settings)
            self._run = lambda feeds: compiled(feeds)[0]
        else:
            raise ValueError(f"no exported runtime for backend {backend!r}")

    @property
    def max_seq_length(self):
        return self.model.max_seq_length

    @property
    def prompts(self):
        return self.model.prompts

    @property
    def default_prompt_name(self):
        return self.model.default_prompt_name

    def get_embedding_dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts, batch_size: int = 32, normalize_embeddings: bool = True, **_ignored) -> np.ndarray:
        texts = list(texts)
        dimension = self.get_embedding_dimension()
        if not texts:
            return np.zeros((0, dimension), np.float32)
        prompt = self.prompts.get(self.default_prompt_name) if self.default_prompt_name else None
        # encode()'s order: longest first (by characters), so each batch pads to similar lengths.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        out = np.empty((len(texts), dimension), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            features = self.model.preprocess([texts[i] for i in rows], prompt=prompt)
            feeds = {name: features[name].numpy().astype(np.int64) for name in self.names}
            out[rows] = self._run(feeds)
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, np.finfo(np.float32).tiny)
        return out
