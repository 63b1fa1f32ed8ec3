"""--against PATH: reference rows that are searched for duplicates but never written.

docs/architecture.md, "Near-duplicate semantics": reference rows are indexed with the input rows and rank before
every one of them; an input row that is an exact or near duplicate of a reference row is removed `in_reference`,
naming the reference row (`duplicate_of`, its own id) and where it lives (`duplicate_of_source`). Input rows
never remove reference rows, and reference rows never remove one another.

A PATH is either a complete chatsieve output (its kept rows, data/, are the reference, and its vectors store is
read when the embedder, window and runtime match, so an earlier output is not embedded again) or anything the
job reads as input (read and normalized with the run's settings, not tokenized: every normalized row counts).
Reference candidates live under `_work/reference_candidates/` with ids prefixed `r<index>:`
(operators/exact_dedup.candidates), so an input file given again as a reference never collides with itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

from jobs.resources import IO_TASK_CPUS
from operators import schema
from operators.discover import InputFile, discover
from operators.exact_dedup import candidates
from operators.write import DATA_DIR, MANIFEST, SUCCESS, WORK_DIR, Output, list_parquet

logger = logging.getLogger(__name__)

REFERENCE_CANDIDATES_DIR = "reference_candidates"
REFERENCE_COLUMNS = [schema.ID, schema.SOURCE, schema.SOURCE_ROW, schema.MESSAGES, schema.RESPONSE_TOKENS]


@dataclass
class Reference:
    label: str  # the PATH as the user gave it: how removed rows and the manifest name it
    output: Output | None = None  # a complete chatsieve output, or
    files: list[InputFile] | None = None  # input files read like --input

    @property
    def kind(self) -> str:
        return "chatsieve output" if self.output is not None else "input"


def open_references(paths: tuple[str, ...]) -> list[Reference]:
    """Check every --against PATH before Ray starts: a complete output, or inputs that exist."""
    references = []
    for path in paths:
        if "://" not in path and not path.startswith("hf:"):
            candidate = Output(path)
            if candidate.exists(WORK_DIR) or candidate.exists(MANIFEST):
                if not candidate.exists(SUCCESS):
                    raise ValueError(
                        f"--against {path} is an incomplete chatsieve output (no _SUCCESS): finish that run first"
                    )
                references.append(Reference(path, output=candidate))
                continue
        elif "://" in path:
            candidate = Output(path)
            if candidate.exists(SUCCESS):
                references.append(Reference(path, output=candidate))
                continue
        files = discover([path]).files
        if not files:
            raise ValueError(f"--against {path} holds no input file")
        references.append(Reference(path, files=files))
    return references


def reference_rows(config, reference: Reference):
    """A Ray dataset of one reference's rows (id, source, source_row, messages, status, response_tokens)."""
    import ray

    from jobs.prepare import read_and_normalize
    from operators.read import group_for_reading, input_file_to_dict
    from operators.write import read_checkpoint

    if reference.output is not None:
        return read_checkpoint(reference.output, (DATA_DIR,), REFERENCE_COLUMNS, empty=schema.DATA_SCHEMA).map_batches(
            _as_kept, batch_format="pyarrow", num_cpus=IO_TASK_CPUS
        )
    groups = group_for_reading(reference.files, ray.cluster_resources().get("CPU", 1.0))
    return ray.data.from_items(
        [{"files": [input_file_to_dict(f) for f in group]} for group in groups], override_num_blocks=len(groups)
    ).map_batches(
        read_and_normalize, fn_kwargs={"normalize_config": config.normalize}, batch_size=1, batch_format="pyarrow",
        num_cpus=IO_TASK_CPUS,
    )


def _as_kept(batch: pa.Table) -> pa.Table:
    return batch.append_column(schema.STATUS, pa.array([schema.KEPT] * batch.num_rows, pa.string()))


def build_reference_candidates(config, output: Output, references: list[Reference], boilerplate: frozenset[int]) -> None:
    """Ray stages: every reference's rows -> candidates (dedup text, exact key) under _work/reference_candidates/."""
    output.delete_dir(WORK_DIR, REFERENCE_CANDIDATES_DIR)
    parts = [
        reference_rows(config, reference).map_batches(
            candidates,
            fn_kwargs={"dedup_on": config.dedup.dedup_on, "boilerplate": boilerplate, "reference": index},
            batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
        )
        for index, reference in enumerate(references)
    ]
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    dataset.write_parquet(output.child_uri(WORK_DIR, REFERENCE_CANDIDATES_DIR), ray_remote_args={"num_cpus": IO_TASK_CPUS})


def reference_stores(references: list[Reference], key: str) -> list:
    """The vectors stores of the references that are chatsieve outputs with vectors of this settings key."""
    from jobs.vectors import VectorStore

    stores = []
    for reference in references:
        if reference.output is None:
            continue
        store = VectorStore(reference.output, key)
        if list_parquet(reference.output, *store.parts):
            stores.append(store)
        else:
            logger.info("--against %s: no vectors for these embedding settings; its rows are embedded", reference.label)
    return stores


def describe_source(reference: Reference, source: str, source_row: int) -> str:
    """`duplicate_of_source`: the row's file and row, and the reference it belongs to."""
    return f"{source}#{source_row} in {reference.label}"
