"""The vectors store: every embedding a job has finished, kept by the text it embeds, so a crash or a rerun
never embeds the same text twice (docs/architecture.md, "Checkpoints and resume").

    _work/vectors/<settings key>/settings.json              embedder, window and runtime of every vector below
    _work/vectors/<settings key>/part-<content hash>.parquet text_sha1, vector, windows, cut

The settings key hashes what decides a vector besides its text: the embedder, `--embed-max-tokens` and the
runtime that runs (`EmbedConfig.runtime(device)`: a GPU run is torch-fp16 whatever --embed-backend says). A
file is written by the embedding actor as soon as its block is embedded, under a temporary name renamed into
place (on an object store an object appears only when whole), so a job killed mid-embedding leaves only whole
blocks, and the next run embeds only the texts no file holds. A text embedded twice (two blocks raced, or two
runs) is read once: the first file in name order wins, and both hold a vector of the same text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from operators import schema
from operators.embed import CUT, VECTOR, WINDOWS, Embed, EmbedConfig
from operators.exact_dedup import DEDUP_TEXT, TEXT_SHA1, equal_width_bytes
from operators.write import WORK_DIR, Output, list_parquet

logger = logging.getLogger(__name__)

VECTORS_DIR = "vectors"
SETTINGS = "settings.json"
VECTORS_FORMAT = 2  # bump when the store's layout or embedding semantics change (2: keyed by text)
STORED_COLUMNS = [TEXT_SHA1, VECTOR, WINDOWS, CUT]


def settings_key(embed: EmbedConfig, runtime: str) -> str:
    return hashlib.sha1(json.dumps(settings_of(embed, runtime), sort_keys=True).encode()).hexdigest()[:20]


def settings_of(embed: EmbedConfig, runtime: str) -> dict:
    return {"model": embed.model, "max_tokens": embed.max_tokens, "runtime": runtime, "format": VECTORS_FORMAT}


@dataclass
class VectorStore:
    """One settings key's directory of vector files."""

    output: Output
    key: str

    @property
    def parts(self) -> tuple[str, ...]:
        return (WORK_DIR, VECTORS_DIR, self.key)

    def files(self) -> list[str]:
        return list_parquet(self.output, *self.parts)

    def write_settings(self, settings: dict) -> None:
        self.output.fs.create_dir(self.output.child_path(*self.parts), recursive=True)
        self.output.write_text("/".join((*self.parts, SETTINGS)), json.dumps(settings, indent=2) + "\n")

    def dimension(self) -> int | None:
        """The vectors' dimension, from a stored file's schema (no vector read); None when nothing is stored."""
        for path in self.files():
            return pq.read_schema(path, filesystem=self.output.fs).field(VECTOR).type.list_size
        return None

    def stored_hashes(self) -> pa.Array:
        """text_sha1 of every vector stored (about 40 bytes a row on the driver)."""
        hashes = list(self._hashes_per_file())
        if not hashes:
            return pa.array([], pa.string())
        return pa.chunked_array(hashes, pa.string()).combine_chunks()

    def stored_in(self, lookup: HashLookup) -> np.ndarray:
        """[len(lookup)] whether each wanted hash has a vector here, read a file at a time: the driver never holds
        every stored hash and a hash set of them at once (~120 MB at 1M rows)."""
        found = np.zeros(len(lookup), dtype=bool)
        for hashes in self._hashes_per_file():
            lookup.mark(hashes, found)
        return found

    def _hashes_per_file(self):
        """Each file's text_sha1 column. A file that cannot be read (a block cut short by a crash on a
        filesystem without atomic rename) is deleted: its texts are embedded again."""
        for path in self.files():
            try:
                yield pq.read_table(path, columns=[TEXT_SHA1], filesystem=self.output.fs).column(0)
            except (pa.ArrowException, OSError) as exc:
                logger.warning("vectors file %s is unreadable (%s): deleting it; its texts are embedded again", path, exc)
                self.output.fs.delete_file(path)

    def batches(self, wanted: pa.Array | HashLookup, columns: list[str], batch_rows: int,
                seen: np.ndarray | None = None):
        """(positions in `wanted`, table) for the stored rows whose text_sha1 is in `wanted`, each text once
        (`seen`, shared when several stores are read in turn, marks the texts already yielded). A caller that
        reads the store more than once passes a HashLookup, built once."""
        lookup = wanted if isinstance(wanted, HashLookup) else HashLookup(wanted)
        seen = np.zeros(len(lookup), dtype=bool) if seen is None else seen
        for path in self.files():
            for record_batch in pq.ParquetFile(path, filesystem=self.output.fs).iter_batches(
                batch_size=batch_rows, columns=[TEXT_SHA1, *columns]
            ):
                positions = lookup.positions(record_batch.column(0))
                rows = np.flatnonzero(positions >= 0)
                rows = rows[~seen[positions[rows]]]
                first = np.sort(np.unique(positions[rows], return_index=True)[1])
                rows = rows[first]
                if len(rows):
                    seen[positions[rows]] = True
                    yield positions[rows].astype(np.int64), pa.Table.from_batches([record_batch]).take(pa.array(rows))

    def remove_scratch(self) -> None:
        """Temporary files of blocks a crash cut short (never read: they do not end in .parquet)."""
        selector = pafs.FileSelector(self.output.child_path(*self.parts), allow_not_found=True)
        for info in self.output.fs.get_file_info(selector):
            if info.base_name.startswith(".tmp-"):
                self.output.fs.delete_file(info.path)


class HashLookup:
    """Positions of text hashes in one array (the first, where one repeats), built once.

    `pc.index_in(batch, value_set=wanted)` rebuilds its hash table of `wanted` on every call: at 1M rows that is
    ~900k hashes per stored file (~900 files) per pass, and the index reads the store four times. Sorted bytes and
    a binary search per batch cost one sort."""

    def __init__(self, wanted: pa.Array):
        keys = _as_bytes(wanted)
        self._order = np.argsort(keys, kind="stable")  # stable: equal hashes keep the first position first
        self._sorted = keys[self._order]

    def __len__(self) -> int:
        return len(self._sorted)

    def positions(self, values: pa.Array) -> np.ndarray:
        """Each value's position in `wanted`, -1 where it is not there."""
        if not len(self._sorted):
            return np.full(len(values), -1, dtype=np.int64)
        keys = _as_bytes(values)
        at = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return np.where(self._sorted[at] == keys, self._order[at], -1).astype(np.int64)

    def mark(self, values: pa.Array | pa.ChunkedArray, found: np.ndarray) -> None:
        """Set found[i] for every position i of `wanted` (each repeat too) whose hash is among `values`."""
        if not len(self._sorted) or not len(values):
            return
        keys = _as_bytes(values)
        lo = np.searchsorted(self._sorted, keys, side="left")
        counts = np.searchsorted(self._sorted, keys, side="right") - lo
        lo, counts = lo[counts > 0], counts[counts > 0]
        # Every sorted position in [lo, lo + count): a run of equal hashes is one wanted text repeated.
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        found[self._order[np.repeat(lo, counts) + within]] = True


def _as_bytes(hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
    # Hex digests: ASCII, never null, so numpy's fixed-width bytes compare exactly (no trailing NULs).
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    if len(hashes) and not hashes.null_count and pa.types.is_string(hashes.type):
        width = pc.min_max(pc.binary_length(hashes))  # bytes, not characters
        if width["min"] == width["max"] and width["min"].as_py() > 0:
            # Equal widths: the values lie back to back in the data buffer, read as one fixed-width array
            # (at 1M rows a Python bytes object per hash cost ~100 MB and seconds).
            size = width["max"].as_py()
            return equal_width_bytes(hashes, size).view(f"S{size}").reshape(len(hashes))
    return np.array([h.encode() for h in hashes.to_pylist()], dtype=np.bytes_)


class EmbedToStore:
    """Ray Data stage: embed a block and write it to the store before returning; returns its row count.

    Writing from the actor makes a finished block durable the moment it is finished: a crash afterwards
    loses only the blocks in flight."""

    def __init__(self, config: EmbedConfig, fs: pafs.FileSystem, directory: str):
        self.embed = Embed(config)
        self.fs, self.directory = fs, directory

    def __call__(self, batch: pa.Table) -> pa.Table:
        embedded = self.embed(batch.select([schema.ID, DEDUP_TEXT]))
        table = pa.Table.from_arrays(
            [batch.column(TEXT_SHA1), embedded.column(VECTOR), embedded.column(WINDOWS), embedded.column(CUT)],
            names=STORED_COLUMNS,
        )
        write_block(self.fs, self.directory, table)
        return pa.table({"embedded": [table.num_rows]})


def write_block(fs: pafs.FileSystem, directory: str, table: pa.Table) -> str:
    """Write one block under a name derived from its texts (a retried block rewrites the same name),
    through a temporary name, so the final name only ever holds a whole file."""
    digest = hashlib.sha1("\n".join(table.column(TEXT_SHA1).to_pylist()).encode()).hexdigest()[:20]
    final = f"{directory}/part-{digest}.parquet"
    if not isinstance(fs, pafs.LocalFileSystem):
        # An object becomes visible only when its upload completes: the final name is never partial.
        pq.write_table(table, final, filesystem=fs, compression="zstd")
        return final
    temporary = f"{directory}/.tmp-{uuid.uuid4().hex}"
    pq.write_table(table, temporary, filesystem=fs, compression="zstd")
    fs.move(temporary, final)
    return final

