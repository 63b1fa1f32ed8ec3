"""Runtimes for the embedding model on CPU: torch (sentence-transformers itself), ONNX Runtime, OpenVINO.

Why not sentence-transformers' own `backend="onnx"|"openvino"`: it goes through Optimum, and optimum-onnx
pins transformers < 4.58 while this project runs transformers 5 (optimum-intel pins another torch and
transformers again). So the export is done here, with the libraries underneath: `torch.onnx.export` of the
whole sentence-transformers pipeline (transformer, pooling, normalize: one graph whose output is the
sentence embedding), ONNX Runtime's `quantize_dynamic` for int8, and OpenVINO compiling the same ONNX file.

The exported encoder tokenizes exactly as `SentenceTransformer.encode` does (pads to the longest text of the
batch, truncates at `max_seq_length`), sorts texts by length before batching as `encode` does, and normalizes
in float32. fp32 exports reproduce the torch vectors to float rounding (measured: 1 - cos <= 1.2e-7, pairwise
cosines within 5.4e-7, the size of batch-composition effects). int8 is lossy (measured on Alpaca answers:
1 - cos up to 0.024, pairwise cosines moved by up to 0.063 with per-channel weights), so it is never a default:
benchmarks/RESULTS.md has the decisions it changes.

The export runs in a child process (operators/embed_export.py) and writes, beside the graph, the model's Rust
tokenizer with the truncation and padding `encode` uses, once it has checked that this tokenizer alone gives
the model's preprocessing. The encoder then loads the graph, the tokenizer and a small settings file: no torch,
no transformers, no sentence-transformers in the embedding actor (about 450 MB less RSS; docs/notes.md, "The
embedding actor's memory"). A model whose preprocessing does more (a prompt, a chat template) keeps the torch
model loaded for it, as before.

Exports are cached in a directory named by a content key (the model's files, the export's package versions,
the options): a rerun, or another actor on the same node, loads the files instead of exporting again.
Concurrent exporters write to a private temporary directory and rename it into place; the loser of the
race discards its copy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from operators.embed_export import ONNX_OPSET, token_features

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZATIONS = (None, "int8", "bf16")
ONNX_FILE = "model.onnx"
SETTINGS_FILE = "encoder.json"
TOKENIZER_FILE = "tokenizer.json"
# Bump when the export recipe changes, so old caches are not reused (2: encoder.json and the Rust tokenizer).
EXPORT_FORMAT = 2
DEFAULT_CACHE = Path("~/.cache/chatsieve/embedders")
OPENVINO_SHAPE_CACHE = 64  # compiled input shapes OpenVINO keeps (its default: 5,000)
# OpenVINO runs sequences padded to a multiple of this many word pieces: its CPU plugin keeps memory for every
# input shape it has run, and 32 lengths of a 256-piece window instead of 256 take ~90 MB (fp32) to ~150 MB (bf16)
# off the actor's peak at the same speed (bf16: 10% faster); the padding is masked, so vectors move by float
# rounding only (benchmarks/embed_length_bucket.py; docs/notes.md, "The embedding actor's memory").
OPENVINO_LENGTH_BUCKET = 8


def check_backend(backend: str, quantize: str | None) -> None:
    """Raise ValueError for an unknown backend or a quantization it does not run."""
    if backend not in BACKENDS:
        raise ValueError(f"embed backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"embed quantize must be None, 'int8' or 'bf16', got {quantize!r}")
    if quantize == "int8" and backend != "onnx":
        # Measured: OpenVINO runs ONNX Runtime's dynamic-int8 graph slower than its own fp32 one, and torch
        # has no int8 path here. NNCF would quantize for OpenVINO, but it pins its own torch.
        raise ValueError(f"--embed-quantize int8 needs --embed-backend onnx (got backend {backend!r})")
    if quantize == "bf16" and backend != "openvino":
        # OpenVINO compiles the same fp32 graph to run in bf16 on the CPU's bf16 units (AMX, AVX512_BF16).
        raise ValueError(f"--embed-quantize bf16 needs --embed-backend openvino (got backend {backend!r})")


def export_quantization(quantize: str | None) -> str | None:
    """The quantization baked into the exported graph: bf16 is a compile setting of the same fp32 graph."""
    return "int8" if quantize == "int8" else None


def cpu_has_bf16() -> bool:
    """Whether OpenVINO finds bf16 units (AMX, AVX512_BF16) on this node's CPU (False without OpenVINO)."""
    try:
        import openvino
    except ImportError:
        return False

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_precision(quantize: str | None, capabilities) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for `quantize` on a CPU with `capabilities`, or a ValueError.

    f32 unless bf16 is asked for: on CPUs with bf16 units OpenVINO would otherwise pick bf16 by itself, which
    moves similarities by ~1e-3 (docs/notes.md, "Embedding in bf16"). bf16 on a CPU without bf16 units is an
    error, not a silent f32 run: the vectors' cache key and the manifest say bf16.
    """
    if quantize != "bf16":
        return "f32"
    if "BF16" not in capabilities:
        raise ValueError(
            "--embed-quantize bf16 needs a CPU with bf16 units (Intel AMX or AVX512_BF16); OpenVINO reports "
            f"{', '.join(capabilities)} on this node: use --embed-quantize none"
        )
    return "bf16"


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


def export_key(model_dir: str, quantize: str | None) -> str:
    """Content key of an export: the model's files, the recipe, and the versions that shape the graph and
    the tokenizer (read from package metadata: computing the key imports none of them)."""
    digest = hashlib.sha256()
    root = Path(model_dir)
    if not root.is_dir():  # a hub name: its files are in the hub's cache, so the name stands for them
        digest.update(f"hub:{model_dir}".encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    packages = ["torch", "onnx", "transformers", "sentence-transformers", "tokenizers"]
    if quantize:
        packages.append("onnxruntime")
    recipe = {"format": EXPORT_FORMAT, "opset": ONNX_OPSET, "quantize": quantize}
    recipe.update({name: _version(name) for name in packages})
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    # The backend is not in the key: OpenVINO compiles the same ONNX file ONNX Runtime runs.
    return digest.hexdigest()[:20]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def exported_model(model: str, model_dir: str, quantize: str | None, cache_dir: str | None) -> Path:
    """The export directory (ONNX_FILE, SETTINGS_FILE, maybe TOKENIZER_FILE) of embedder `model` (what
    EmbedConfig.model names; `model_dir` is its resolved path or hub name), exporting it if not cached.

    The export runs in a child process (operators/embed_export.py), so this process never imports torch.
    """
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    target = cache / export_key(model_dir, quantize)
    if (target / SETTINGS_FILE).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=cache))
    try:
        # A local model by its path (the child may run elsewhere in the tree); a hub name as it is.
        _run_export(model_dir if Path(model_dir).is_dir() else model, scratch, quantize)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / SETTINGS_FILE).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("exported the embedder to %s", target)
    return target


def _run_export(model: str, directory: Path, quantize: str | None) -> None:
    command = [sys.executable, "-m", "operators.embed_export", model, str(directory)]
    if quantize:
        command += ["--quantize", quantize]
    # The child imports this package from where this process does (a Ray working_dir, a checkout...).
    root = str(Path(__file__).resolve().parent.parent)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"exporting the embedder {model!r} failed (exit {result.returncode}); its last output:\n"
            + result.stderr[-4000:]
        )


@dataclass(frozen=True)
class ExportSettings:
    """encoder.json: what an exported graph needs besides itself (operators/embed_export.py)."""

    inputs: list[str]
    max_seq_length: int
    dimension: int
    lean: bool  # TOKENIZER_FILE alone reproduces the model's preprocessing
    why_not_lean: str | None

    @classmethod
    def read(cls, directory: Path) -> ExportSettings:
        return cls(**json.loads((directory / SETTINGS_FILE).read_text()))


class RustTokenizer:
    """The subset of a transformers fast tokenizer that windowing uses (operators/embed.py `_tokenize`,
    `window_tokens`), over the `tokenizers` library alone: no truncation, no padding."""

    is_fast = True

    def __init__(self, path: Path, model_max_length: int):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(path))
        self.backend.no_truncation()
        self.backend.no_padding()
        self.model_max_length = model_max_length

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.backend.num_special_tokens_to_add(pair)

    def __call__(self, texts, add_special_tokens: bool = True, truncation: bool = False, **_returns):
        if truncation:
            raise ValueError("RustTokenizer does not truncate (windowing tokenizes whole texts)")
        if isinstance(texts, str):
            return {"input_ids": self.backend.encode(texts, add_special_tokens=add_special_tokens).ids}
        return RustEncodings(self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens))


class RustEncodings:
    """A batch's encodings read like transformers' BatchEncoding: ["input_ids"], ["offset_mapping"], word_ids(i)."""

    def __init__(self, encodings):
        self.encodings = encodings
        self._columns: dict[str, list] = {}

    def __getitem__(self, name: str) -> list:
        # Built once per name: windowing reads one row at a time (`encoding["input_ids"][j]`).
        if name not in self._columns:
            attribute = {"input_ids": "ids", "offset_mapping": "offsets"}[name]
            self._columns[name] = [getattr(encoding, attribute) for encoding in self.encodings]
        return self._columns[name]

    def word_ids(self, index: int) -> list[int | None]:
        return self.encodings[index].word_ids


class ExportedEncoder:
    """`SentenceTransformer.encode`'s contract over an exported graph (the parts `operators.embed` uses).

    Lean (`lean(...)`): the graph and the exported Rust tokenizer, nothing else loaded. Otherwise
    (`with_model(...)`): the torch model is held for its tokenizer and preprocessing (a prompt, a chat template).
    """

    def __init__(self, directory: Path, backend: str, threads: int, settings: ExportSettings, features, tokenizer,
                 prompts: dict, default_prompt_name: str | None, quantize: str | None = None):
        self.settings = settings
        self.backend = backend
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.default_prompt_name = default_prompt_name
        self._features = features  # (texts, prompt) -> {input name: int64 array}
        self._run = _runtime(directory / ONNX_FILE, backend, threads, quantize)

    @classmethod
    def lean(cls, directory: Path, settings: ExportSettings, backend: str, threads: int,
             quantize: str | None = None) -> ExportedEncoder:
        """The encoder without torch: the graph and the exported Rust tokenizer (`settings.lean` exports only)."""
        if not settings.lean:
            raise ValueError(f"the export in {directory} needs the model's own preprocessing: {settings.why_not_lean}")
        from tokenizers import Tokenizer

        encoder = Tokenizer.from_file(str(directory / TOKENIZER_FILE))  # truncation and padding as encode sets them

        def features(texts, _prompt):
            return token_features(encoder.encode_batch(texts), settings.inputs)

        tokenizer = RustTokenizer(directory / TOKENIZER_FILE, settings.max_seq_length)
        return cls(directory, backend, threads, settings, features, tokenizer, {}, None, quantize)

    @classmethod
    def with_model(cls, model, directory: Path, settings: ExportSettings, backend: str, threads: int,
                   quantize: str | None = None) -> ExportedEncoder:
        """The encoder over a loaded SentenceTransformer's own preprocessing."""

        def features(texts, prompt):
            tensors = model.preprocess(texts, prompt=prompt)
            return {name: tensors[name].numpy().astype(np.int64) for name in settings.inputs}

        return cls(directory, backend, threads, settings, features, model.tokenizer, model.prompts,
                   model.default_prompt_name, quantize)

    @property
    def max_seq_length(self):
        return self.settings.max_seq_length

    def get_embedding_dimension(self) -> int:
        return self.settings.dimension

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
            out[rows] = self._run(self._features([texts[i] for i in rows], prompt))
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, np.finfo(np.float32).tiny)
        return out


def padded_to_bucket(feeds: dict[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
    """[batch, length] token features right-padded with zeros to a multiple of `bucket` in length.

    The attention mask is 0 on the padding, so no real token attends to it and mean pooling leaves it out; the
    padded ids (0) are never looked at through the mask. Features without a mask, or of other shapes, are
    returned as they are."""
    if "attention_mask" not in feeds or any(feed.ndim != 2 for feed in feeds.values()):
        return feeds
    extra = -feeds["attention_mask"].shape[1] % bucket
    if not extra:
        return feeds
    return {name: np.pad(feed, ((0, 0), (0, extra))) for name, feed in feeds.items()}


def _runtime(onnx_path: Path, backend: str, threads: int, quantize: str | None = None):
    """feeds -> the graph's sentence embeddings, on `backend` (in bf16 with quantize="bf16": openvino only)."""
    if backend == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)[0]
    if backend == "openvino":
        import openvino

        # No pinning of threads to cores: several actors (and other work) share a node's cores, and a
        # pinned thread waits for its core even when another is idle (measured ~10% slower unpinned
        # on a quiet machine, much faster pinned-free under contention).
        # A runtime cache of 64 shapes, not 5,000: OpenVINO keeps memory for each input shape it has run, and
        # sequence lengths vary batch to batch. Measured on 2,000 real answers: 63 MB less at the same speed,
        # vectors bitwise equal (docs/notes.md, "The embedding actor's memory").
        core = openvino.Core()
        precision = openvino_precision(quantize, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        settings = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": precision,
            "ENABLE_CPU_PINNING": False,
            "CPU_RUNTIME_CACHE_CAPACITY": OPENVINO_SHAPE_CACHE,
        }
        compiled = core.compile_model(str(onnx_path), "CPU", settings)
        return lambda feeds: compiled(padded_to_bucket(feeds, OPENVINO_LENGTH_BUCKET))[0]
    raise ValueError(f"no exported runtime for backend {backend!r}")
