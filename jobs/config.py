"""The prepare job's configuration: frozen dataclasses filled from defaults, a YAML file, then flags.

One table (`OPTIONS`) defines every option once: its flag, its YAML key, its type, its help. The CLI
and the YAML loader both go through `PrepareConfig.from_options`, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from operators.embed import EmbedConfig
from operators.exact_dedup import DEDUP_ON
from operators.index import IndexConfig
from operators.normalize import NormalizeConfig
from operators.tokens import TokenizerConfig

SAMPLE_INPUT = "sample"


@dataclass(frozen=True)
class LengthConfig:
    # 4096 is the tutorial's limit for Mistral-7B fine-tuning; rows over it are dropped, never truncated.
    max_tokens: int = 4096
    min_tokens: int = 0

    def __post_init__(self):
        if self.min_tokens < 0:
            raise ValueError(f"--min-tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens < max(1, self.min_tokens):
            raise ValueError(
                f"--max-tokens ({self.max_tokens}) must be >= 1 and >= --min-tokens ({self.min_tokens})"
            )


KEEP_RULES = ("first", "longest", "none")


@dataclass(frozen=True)
class DedupConfig:
    enabled: bool = True
    dedup_on: str = "conversation"
    # 0.95 cosine is the tutorial's near-duplicate threshold (docs/architecture.md).
    threshold: float = 0.95
    # Pairs down to this similarity are recorded (neighbors/) so `rethreshold` can move the threshold
    # down without embedding again; None means threshold - 0.05.
    record_threshold: float | None = None
    keep: str = "first"
    # Earlier outputs or datasets searched but never written (--against): an input row that duplicates one
    # is removed in_reference (jobs/references.py).
    against: tuple[str, ...] = ()
    # Paragraphs in more than this many distinct dedup texts are left out of the embedded text
    # (operators/boilerplate.py); 0 turns it off. Chosen from benchmarks/boilerplate.py on ../shared/data.
    boilerplate_min_rows: int = 100

    def __post_init__(self):
        object.__setattr__(self, "against", _as_paths(self.against))
        if self.boilerplate_min_rows < 0:
            raise ValueError(f"--boilerplate-min-rows must be >= 0 (0: off), got {self.boilerplate_min_rows}")
        if self.dedup_on not in DEDUP_ON:
            raise ValueError(f"--dedup-on must be one of {', '.join(DEDUP_ON)}, got {self.dedup_on!r}")
        if self.keep not in KEEP_RULES:
            raise ValueError(f"--keep must be one of {', '.join(KEEP_RULES)}, got {self.keep!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--threshold is a cosine similarity in (0, 1], got {self.threshold}")
        if not 0.0 < self.recorded <= self.threshold:
            raise ValueError(
                f"--record-threshold must be in (0, --threshold={self.threshold}], got {self.record_threshold}"
            )

    @property
    def recorded(self) -> float:
        return round(self.threshold - 0.05, 6) if self.record_threshold is None else self.record_threshold


@dataclass(frozen=True)
class DecontaminateConfig:
    """--decontaminate: benchmark prompts no training row may contain (jobs/decontaminate.py)."""

    paths: tuple[str, ...] = ()
    # 13-word overlap is the GPT-3 and Llama reports' contamination test.
    ngrams: int = 13
    threshold: float = 0.9

    def __post_init__(self):
        object.__setattr__(self, "paths", _as_paths(self.paths))
        if self.ngrams < 1:
            raise ValueError(f"--decontaminate-ngrams must be >= 1, got {self.ngrams}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--decontaminate-threshold is a cosine similarity in (0, 1], got {self.threshold}")

    @property
    def enabled(self) -> bool:
        return bool(self.paths)


def _as_paths(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


@dataclass(frozen=True)
class OutputConfig:
    path: str = "out"
    # 100k rows of short chat data is ~100-300 MB of zstd Parquet: big enough for few files, small
    # enough that one shard fits comfortably in a writer task's memory.
    rows_per_shard: int = 100_000
    overwrite: bool = False

    def __post_init__(self):
        if not self.path:
            raise ValueError("--output must name a directory or an object-store prefix")
        if self.rows_per_shard < 1:
            raise ValueError(f"--rows-per-shard must be >= 1, got {self.rows_per_shard}")


@dataclass(frozen=True)
class ResourceConfig:
    address: str | None = None  # None: RAY_ADDRESS if set, else a local Ray
    tokenize_actors: int | None = None  # None: derived from the cluster's CPUs (jobs/resources.py)
    tokenize_batch_size: int = 256
    # 16 MiB is ~8k typical chat rows: small enough to spread one large file over every actor,
    # large enough that per-block scheduling overhead stays negligible.
    block_size_mb: float = 16.0
    embed_actors: int | None = None  # None: one per GPU (by --embed-gpus-per-actor), else one CPU actor
    embed_gpus_per_actor: float = 1.0  # fractional packs several small-model actors on one GPU
    index_cpus_per_shard: float | None = None  # None: derived so every shard fits (jobs/resources.py)
    # Rows per embedding call and per vectors-store file: large, because `encode` sorts by length within
    # a call (docs/notes.md); a crash loses at most the blocks in flight (one per actor).
    embed_block_rows: int = 1024
    # Bytes of input per read task; None: derived from the input size and the CPUs (operators/read.py);
    # 0: one task per file.
    read_group_mb: float | None = None

    def __post_init__(self):
        if self.read_group_mb is not None and self.read_group_mb < 0:
            raise ValueError(f"--read-group-mb must be >= 0 (0: one read task per file), got {self.read_group_mb}")
        if self.embed_block_rows < 1:
            raise ValueError(f"--embed-block-rows must be >= 1, got {self.embed_block_rows}")
        if self.embed_actors is not None and self.embed_actors < 1:
            raise ValueError(f"--embed-actors must be >= 1, got {self.embed_actors}")
        if not 0 < self.embed_gpus_per_actor <= 8:
            raise ValueError(f"--embed-gpus-per-actor must be in (0, 8], got {self.embed_gpus_per_actor}")
        if not self.block_size_mb > 0:
            raise ValueError(f"--block-size-mb must be > 0, got {self.block_size_mb}")
        if self.tokenize_actors is not None and self.tokenize_actors < 1:
            raise ValueError(f"--tokenize-actors must be >= 1, got {self.tokenize_actors}")
        if self.tokenize_batch_size < 1:
            raise ValueError(f"--tokenize-batch-size must be >= 1, got {self.tokenize_batch_size}")


@dataclass(frozen=True)
class PrepareConfig:
    inputs: tuple[str, ...] = (SAMPLE_INPUT,)
    sample_rows: int = 2000
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    length: LengthConfig = field(default_factory=LengthConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)

    def __post_init__(self):
        if not self.inputs:
            raise ValueError("give at least one --input (a file, directory, glob, URI, hf:NAME or 'sample')")
        if self.sample_rows < 1:
            raise ValueError(f"--sample-rows must be >= 1, got {self.sample_rows}")
        if self.dedup.against and not self.dedup.enabled:
            raise ValueError("--against needs dedup: it removes rows that duplicate the reference (drop --no-dedup)")

    @property
    def uses_sample(self) -> bool:
        return self.inputs == (SAMPLE_INPUT,)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PrepareConfig:
        """Build from a flat {option: value} mapping (YAML keys and flag names, '-' or '_')."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in options.items():
            name = key.replace("-", "_")
            if name not in _BY_NAME:
                valid = ", ".join(sorted(o.name for o in OPTIONS))
                raise ValueError(f"unknown option {key!r}; valid options: {valid}")
            option = _BY_NAME[name]
            if option.convert is not None and value is not None:
                value = option.convert(value)
            if option.section is None:
                top[option.attr] = value
            else:
                sections.setdefault(option.section, {})[option.attr] = value
        kwargs: dict[str, Any] = dict(top)
        for section, values in sections.items():
            section_type = {f.name: f.default_factory for f in dataclasses.fields(cls) if f.name == section}[section]
            kwargs[section] = dataclasses.replace(section_type(), **values)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareConfig:
        """The inverse of to_dict (manifest.json's "config")."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            kwargs[f.name] = f.default_factory(**value) if isinstance(value, dict) else value
        kwargs["inputs"] = tuple(kwargs.get("inputs", (SAMPLE_INPUT,)))
        return cls(**kwargs)


@dataclass(frozen=True)
class Option:
    name: str  # flag name with underscores; the YAML key
    section: str | None  # the PrepareConfig field holding it, or None for a top-level field
    attr: str  # the field name inside the section
    help: str
    type: Any = str
    choices: tuple[str, ...] | None = None
    convert: Any = None  # applied to YAML and CLI values alike
    flag_kwargs: dict[str, Any] = field(default_factory=dict)


def _as_inputs(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "input", None, "inputs",
        "input files, directories, globs, object-store URIs, hf:NAME[:SPLIT], or 'sample' (the default: a "
        "generated sample). Repeat the flag or give several values.",
        convert=_as_inputs, flag_kwargs={"nargs": "+", "action": "extend"},
    ),
    Option("output", "output", "path", "output directory or object-store prefix (default: out)"),
    Option("overwrite", "output", "overwrite", "delete an existing complete output first",
           type=bool, flag_kwargs={"action": "store_true"}),
    Option("rows_per_shard", "output", "rows_per_shard", "rows per output Parquet file (default: 100000)", type=int),
    Option("sample_rows", None, "sample_rows", "rows of the generated sample when --input is 'sample' (default: 2000)",
           type=int),
    Option("format", "normalize", "format", "input format, detected per row by default",
           choices=("auto", "sharegpt", "openai", "alpaca", "hh")),
    Option("messages_field", "normalize", "messages_field",
           "read the conversation from this column (e.g. conversation_a)"),
    Option("preference", "normalize", "preference",
           "preference rows (chosen/rejected): train on prompt+chosen, or remove them as preference_pair",
           choices=("chosen", "skip")),
    Option("turns", "normalize", "turns",
           "keep every turn, or only the first user turn and its answer (plus a leading system message)",
           choices=("all", "first")),
    Option("system", "normalize", "system", "keep a leading system message, or drop it", choices=("keep", "drop")),
    Option("tokenizer", "tokenizer", "name_or_path",
           "tokenizer: the built-in offline Mistral-7B v0.1 (default), or any Hugging Face tokenizer name or "
           "local directory with a chat template (a hub name downloads)"),
    Option("chat_template", "tokenizer", "chat_template", "a .jinja chat template file overriding the tokenizer's"),
    Option("max_tokens", "length", "max_tokens", "remove rows with more tokens than this as too_long (default: 4096)",
           type=int),
    Option("min_tokens", "length", "min_tokens", "remove rows with fewer tokens than this as too_short (default: 0)",
           type=int),
    Option("no_dedup", "dedup", "enabled", "skip exact and near-duplicate removal",
           type=bool, convert=lambda v: not v, flag_kwargs={"action": "store_true"}),
    Option("dedup_on", "dedup", "dedup_on",
           "what is compared for duplicates: every turn, the user turns, or the assistant turns",
           choices=DEDUP_ON),
    Option("threshold", "dedup", "threshold", "near-duplicate cosine similarity (default: 0.95)", type=float),
    Option("record_threshold", "dedup", "record_threshold",
           "record pairs down to this similarity in neighbors/ (default: threshold - 0.05)", type=float),
    Option("keep", "dedup", "keep",
           "which row of a duplicate group is kept: the first by (source, source_row), the longest answer, "
           "or none (the tutorial's rule: every row with a duplicate is removed)", choices=KEEP_RULES),
    Option("against", "dedup", "against",
           "an earlier chatsieve output or any input: searched for duplicates but never written; an input row "
           "that duplicates one of its rows is removed as in_reference. Repeat for several.",
           convert=_as_paths, flag_kwargs={"nargs": "+", "action": "extend"}),
    Option("boilerplate_min_rows", "dedup", "boilerplate_min_rows",
           "paragraphs (64+ characters) found in more than this many distinct rows are left out of the text "
           "compared for near duplicates, never out of the output (default: 100; 0: off)", type=int),
    Option("decontaminate", "decontaminate", "paths",
           "benchmark prompts (any supported format, or rows with prompt/question/instruction/input or a "
           "turns list): an input row whose user turn matches one is removed as contaminated. Repeat for several.",
           convert=_as_paths, flag_kwargs={"nargs": "+", "action": "extend"}),
    Option("decontaminate_ngrams", "decontaminate", "ngrams",
           "words of the shared n-gram that makes a user turn contaminated (default: 13)", type=int),
    Option("decontaminate_threshold", "decontaminate", "threshold",
           "cosine of a user turn to a benchmark prompt that makes it contaminated (default: 0.9)", type=float),
    Option("embedder", "embed", "model",
           "sentence-transformers model: the built-in offline all-MiniLM-L6-v2 (default), a local directory, "
           "or a hub name such as thenlper/gte-large (downloads)"),
    Option("embed_max_tokens", "embed", "max_tokens",
           "word pieces embedded per row; longer texts are embedded window by window and averaged (default: 512)",
           type=int),
    Option("embed_batch_size", "embed", "batch_size",
           "texts per forward pass (default: 128 on GPU; on CPU 8 with openvino, else 32)", type=int),
    Option("embed_backend", "embed", "backend",
           "runtime on CPU: torch, onnx (ONNX Runtime) or openvino, exported locally from the same model and "
           "cached; auto is torch on a GPU and the measured CPU default on CPU (see benchmarks/RESULTS.md)",
           choices=("auto", "torch", "onnx", "openvino")),
    Option("embed_quantize", "embed", "quantize",
           "int8 weights (with --embed-backend onnx): faster, but moves similarities by up to ~0.06; bf16 (with "
           "--embed-backend openvino, on a CPU with AMX or AVX512_BF16): ~2.4x faster, moves similarities by up to "
           "~0.005; none is fp32 (default: none)",
           choices=("none", "int8", "bf16"), convert=lambda v: None if v in (None, "none") else v),
    Option("embed_prefilter", "embed", "prefilter",
           "embed every text first in bf16 (OpenVINO, CPUs with AMX or AVX512_BF16) or int8 (ONNX Runtime), "
           "search those vectors a margin below the record threshold, and embed only the texts of the pairs found "
           "again in full precision: every recorded similarity and decision is a full-precision one. auto "
           "(default): bf16 for the built-in embedder on the default CPU runtime when every node's CPU has bf16 "
           "units, else none (every text in full precision)",
           choices=("auto", "none", "bf16", "int8"), convert=lambda v: None if v == "none" else v),
    Option("embed_prefilter_margin", "embed", "prefilter_margin",
           "how far below the record threshold the prefilter searches (default: 0.02 for bf16, 0.2 for int8)",
           type=float),
    Option("index", "index", "kind",
           "auto (default: flat up to --index-flat-max-rows rows or on a GPU, ivf above), flat (exact) or ivf "
           "(approximate, much faster at scale; its recall is measured and recorded)", choices=("auto", "flat", "ivf")),
    Option("index_flat_max_rows", "index", "flat_max_rows",
           "with --index auto, the most rows searched exactly on CPU (default: 200000)", type=int),
    Option("index_shards", "index", "shards", "FAISS index shards, each held by a Ray actor (default: 1)",
           type=int),
    Option("nlist", "index", "nlist", "ivf lists (default: about 4*sqrt(rows))", type=int),
    Option("nprobe", "index", "nprobe", "ivf lists probed per query (default: 16)", type=int),
    Option("max_neighbors", "index", "max_neighbors",
           "neighbours kept per row and shard in the first search pass; rows that hit it are re-searched "
           "exhaustively (default: 64)", type=int),
    Option("embed_actors", "resources", "embed_actors",
           "embedding actors (default: one per GPU, or one CPU actor)", type=int),
    Option("embed_gpus_per_actor", "resources", "embed_gpus_per_actor",
           "GPUs per embedding actor; fractional packs small models (default: 1)", type=float),
    Option("index_cpus_per_shard", "resources", "index_cpus_per_shard",
           "CPUs reserved per index shard actor (default: derived so all shards fit)", type=float),
    Option("embed_block_rows", "resources", "embed_block_rows",
           "rows per embedding call and per vectors checkpoint file; a crash loses at most one block per "
           "embedding actor (default: 1024)", type=int),
    Option("read_group_mb", "resources", "read_group_mb",
           "input MiB per read task: small files are read together (default: derived from the input size and "
           "CPUs; 0: one task per file)", type=float),
    Option("address", "resources", "address", "Ray cluster address (default: RAY_ADDRESS, else start Ray locally)"),
    Option("tokenize_actors", "resources", "tokenize_actors",
           "tokenizer actors (default: one per CPU of the cluster, see README)", type=int),
    Option("tokenize_batch_size", "resources", "tokenize_batch_size", "rows per tokenizer batch (default: 256)",
           type=int),
    Option("block_size_mb", "resources", "block_size_mb",
           "target size of a Ray Data block in MiB; smaller spreads a large file over more actors (default: 16)",
           type=float),
)
_BY_NAME = {o.name: o for o in OPTIONS}


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file; flags override it")
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"help": option.help, "default": argparse.SUPPRESS}
        if option.choices:
            kwargs["choices"] = option.choices
        if option.type in (int, float):
            kwargs["type"] = option.type
        kwargs.update(option.flag_kwargs)
        parser.add_argument("--" + option.name.replace("_", "-"), dest=option.name, **kwargs)


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """Defaults, then the YAML file, then the flags given on the command line."""
    options: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except yaml.YAMLError as exc:
            # safe_load refuses Python tags (!!python/object...) and other constructors: one line, no traceback.
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ValueError(f"{config_file}{where}: not a plain YAML mapping of options: {problem}") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping of option: value, got {type(loaded).__name__}")
        options.update(loaded)
    for option in OPTIONS:
        if hasattr(args, option.name):
            options[option.name] = getattr(args, option.name)
    return PrepareConfig.from_options(options)
