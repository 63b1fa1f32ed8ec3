"""Read stage: find input files, name their rows, parse them one physical row at a time.

Why not `ray.data.read_json`: one malformed line fails the whole file and it gives no line numbers
(NOTES.md). Here each Ray task owns one file, streams it through a pyarrow filesystem (local paths
and object-store URIs alike), and yields one record per physical row with its exact `source_row`,
so one bad line is rejected alone and every row read is accounted for.

What counts as a row read (ARCHITECTURE.md, "Identity and accounting"): non-blank JSONL lines,
JSON array elements, Parquet / Arrow rows. A file that cannot be parsed at all is one rejected row
with `source_row = -1`; a truncated `.gz` keeps the lines before the damage plus one rejected row.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import posixpath
import re
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from operators import schema

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
# Extensions picked up when a directory is given; an explicitly named file is always read.
# JSON vs JSONL and gzip are detected from the bytes, not from these names.
DIRECTORY_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".gz", ".parquet", ".arrow")
# Files a `datasets.save_to_disk` directory holds next to its .arrow data: metadata, not rows.
HF_METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """One unit of reading work: a file (or a hub dataset split) and the name its rows carry."""

    uri: str  # what pyarrow's FileSystem.from_uri accepts: an absolute local path or a URI
    source: str  # ARCHITECTURE.md: path relative to the parent of the input root, POSIX style
    kind: str  # "text" (JSON / JSONL, maybe gzip), "parquet", "arrow", or "hf"


@dataclass(frozen=True)
class RawRecord:
    """A physical row: either a parsed JSON value (`record`) or a rejection (`error`)."""

    source_row: int
    record: Any = None
    error: str | None = None  # a schema.REJECTION_ERRORS code
    detail: str | None = None
    raw: str | None = None


# --- discovery (driver side) -----------------------------------------------------------------------


# Query keys that would carry a secret in a URI (pyarrow accepts some options as URI query parameters).
_SECRET_WORDS = ("secret", "password", "token", "credential", "key")
# Schemes whose URI user name is an access key (pyarrow's S3 takes `s3://KEY:SECRET@bucket/...`).
_USER_IS_KEY_SCHEMES = ("s3", "gs", "gcs")


def filesystem_from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or a URI (`s3://`, `gs://`, `hdfs://`, `file://`).

    Endpoints and credentials come from the standard environment of the process that opens the file
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ...;
    GOOGLE_APPLICATION_CREDENTIALS) or the provider's default chain (instance profile, workload
    identity). Never from the URI: it is logged and recorded in manifest.json, so a URI carrying a
    secret is refused before anything is opened.
    """
    if "://" not in uri:
        return pafs.FileSystem.from_uri(os.path.abspath(uri))
    _refuse_secrets(uri)
    return pafs.FileSystem.from_uri(uri)


def _refuse_secrets(uri: str) -> None:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    secret_keys = [
        k for k in urllib.parse.parse_qs(parts.query) if any(word in k.lower() for word in _SECRET_WORDS)
    ]
    if parts.password is not None or (parts.username and scheme in _USER_IS_KEY_SCHEMES) or secret_keys:
        # The message names the place, never the value.
        shown = f"{parts.scheme}://<credentials>@{parts.hostname or ''}{parts.path}"
        raise ValueError(
            f"{shown}: credentials in a URI end up in logs and manifest.json; give them in the environment "
            "instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, "
            "GOOGLE_APPLICATION_CREDENTIALS) or use the nodes' instance role"
        )


def _join_uri(template_uri: str, path: str) -> str:
    """Turn a filesystem path back into a URI of the same scheme as `template_uri`."""
    if "://" in template_uri:
        return template_uri.split("://", 1)[0] + "://" + path
    return path


def _glob_regex(pattern: str) -> re.Pattern:
    # `*` and `?` stay within one path segment; `**/` crosses any number of them (shell globstar).
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _is_data_file(path: str) -> bool:
    name = posixpath.basename(path)
    if name.startswith((".", "_")) or name in HF_METADATA_FILES:
        return False
    return name.endswith(DIRECTORY_EXTENSIONS)


def _kind_of(path: str) -> str:
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith(".arrow"):
        return "arrow"
    return "text"


def discover_inputs(inputs: list[str]) -> list[InputFile]:
    """Expand files, directories and globs into InputFiles, sorted by source.

    Raises ValueError for a path that matches nothing and for two inputs that yield the same
    `source` (their ids would collide).
    """
    found: dict[str, InputFile] = {}
    for spec in inputs:
        for item in _expand(spec):
            if item.source in found and found[item.source].uri != item.uri:
                raise ValueError(
                    f"two input files have the same source name {item.source!r} "
                    f"({found[item.source].uri} and {item.uri}); their row ids would collide. "
                    "Pass the common parent directory once instead."
                )
            found[item.source] = item
    return sorted(found.values(), key=lambda f: f.source)


def _expand(spec: str) -> list[InputFile]:
    if spec.startswith(HF_PREFIX):
        name, _, split = spec[len(HF_PREFIX) :].partition(":")
        split = split or "train"
        return [InputFile(uri=spec, source=f"hf:{name}:{split}", kind="hf")]
    fs, path = filesystem_from_uri(spec)
    path = path.rstrip("/") or "/"
    glob = _GLOB_CHARS.search(path)
    if glob:
        # The input root of a pattern is its non-glob directory prefix.
        root = path[: glob.start()].rsplit("/", 1)[0] or "/"
        regex = _glob_regex(path)
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        paths = [i.path for i in listing if i.type == pafs.FileType.File and regex.match(i.path)]
        paths = [p for p in paths if posixpath.basename(p) not in HF_METADATA_FILES]
    else:
        info = fs.get_file_info(path)
        root = path
        if info.type == pafs.FileType.File:
            paths = [path]
        elif info.type == pafs.FileType.Directory:
            listing = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            paths = [i.path for i in listing if i.type == pafs.FileType.File and _is_data_file(i.path)]
        else:
            raise ValueError(f"input {spec!r} does not exist (looked for {path!r})")
    if not paths:
        raise ValueError(f"input {spec!r} matches no data files ({', '.join(DIRECTORY_EXTENSIONS)})")
    parent = posixpath.dirname(root.rstrip("/"))
    return [InputFile(uri=_join_uri(spec, p), source=_source_name(p, parent), kind=_kind_of(p)) for p in sorted(paths)]


def _source_name(path: str, parent: str) -> str:
    """`path` relative to the parent of the input root. Object-store paths are relative (`bucket/key`):
    a bucket given as the root has no parent, so its rows are named `bucket/...`, as a local `/data`
    gives `data/...` (posixpath.relpath would resolve a relative path against the driver's cwd)."""
    if parent in ("", "/"):
        return path.lstrip("/")
    return posixpath.relpath(path, parent)


# --- parsing (worker side) -------------------------------------------------------------------------


def iter_records(item: InputFile) -> Iterator[RawRecord]:
    """Yield one RawRecord per row read from `item`, in file order."""
    if item.kind == "hf":
        yield from _iter_hf(item)
        return
    fs, path = filesystem_from_uri(item.uri)
    try:
        # Parquet needs random access; text is streamed. compression=None: gzip is detected from
        # the bytes (and damage handled) below, not by extension.
        handle = fs.open_input_file(path) if item.kind == "parquet" else fs.open_input_stream(path, compression=None)
    except OSError as exc:
        # The file was listed at start-up, so failing to open it is an environment fault (this worker
        # lacks the object store's credentials or endpoint, a permission, the file was removed), not a
        # data fault: stop the job rather than write a "complete" output with every row rejected.
        raise OSError(
            f"cannot open input {item.uri}, listed at start-up: {exc}. Every Ray worker needs the same access "
            "as the driver (for object stores: the AWS_* / GOOGLE_APPLICATION_CREDENTIALS environment or an "
            "instance role on every node)"
        ) from exc
    with handle:
        if item.kind == "parquet":
            yield from _iter_table_batches(lambda: pq.ParquetFile(handle).iter_batches(batch_size=4096))
        elif item.kind == "arrow":
            yield from _iter_table_batches(lambda: _arrow_batches(handle))
        else:
            yield from _iter_text(handle)


def _unreadable(detail: str, raw: str | None = None) -> RawRecord:
    return RawRecord(source_row=-1, error=schema.UNREADABLE_FILE, detail=detail, raw=raw)


def _arrow_batches(stream) -> Iterator[pa.RecordBatch]:
    # `datasets.save_to_disk` writes the Arrow IPC *stream* format.
    data = stream.read()
    try:
        reader = pa.ipc.open_stream(data)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(data)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
        return
    yield from reader


def _iter_table_batches(make_batches) -> Iterator[RawRecord]:
    row = 0
    try:
        for batch in make_batches():
            for record in batch.to_pylist():
                yield RawRecord(source_row=row, record=record)
                row += 1
    except (pa.ArrowException, OSError) as exc:
        if row == 0:
            yield _unreadable(f"{type(exc).__name__}: {exc}")
        else:
            # Damage after some rows: keep them, account for the rest as one rejected row.
            yield RawRecord(source_row=row, error=schema.TRUNCATED_FILE, detail=f"{type(exc).__name__}: {exc}")


def _iter_text(stream) -> Iterator[RawRecord]:
    head = stream.read(2)
    gzipped = head == b"\x1f\x8b"
    chunks = _gunzip_chunks(stream, head) if gzipped else _plain_chunks(stream, head)
    lines = _iter_lines(chunks)
    first = None
    try:
        for first in lines:
            if first[1].strip():
                break
    except _Damaged as damage:
        yield _unreadable(f"damaged before the first row: {damage.detail}", raw=schema.raw_excerpt(damage.partial))
        return
    if first is None or not first[1].strip():
        return  # an empty file has no rows
    if first[1].lstrip().startswith(b"["):
        yield from _iter_json_array_or_lines(first, lines)
    else:
        yield from _iter_jsonl(first, lines)


def _plain_chunks(stream, head: bytes) -> Iterator[bytes]:
    yield head
    while chunk := stream.read(_READ_CHUNK):
        yield chunk


class TruncatedInput(Exception):
    """The compressed stream ended early or is corrupt; everything before it was delivered."""


def _gunzip_chunks(stream, head: bytes) -> Iterator[bytes]:
    decomp = zlib.decompressobj(wbits=31)
    pending = head
    while True:
        data = pending or stream.read(_READ_CHUNK)
        pending = b""
        if not data:
            if not decomp.eof:
                raise TruncatedInput("compressed stream ended before its end marker")
            return
        try:
            out = decomp.decompress(data)
        except zlib.error as exc:
            raise TruncatedInput(f"corrupt gzip data: {exc}") from exc
        if out:
            yield out
        if decomp.eof:
            # Concatenated gzip members are valid gzip: start a new decompressor on the rest.
            rest = decomp.unused_data
            if not rest:
                rest = stream.read(_READ_CHUNK)
                if not rest:
                    return
            decomp = zlib.decompressobj(wbits=31)
            pending = rest


def _iter_lines(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (line_number, line) for every physical line; raises TruncatedInput(partial) at damage."""
    number, buffer = 0, b""
    try:
        for chunk in chunks:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield number, line
                number += 1
    except TruncatedInput as exc:
        raise _Damaged(number, buffer, str(exc)) from exc
    if buffer:
        yield number, buffer


class _Damaged(Exception):
    def __init__(self, line_number: int, partial: bytes, detail: str):
        super().__init__(detail)
        self.line_number, self.partial, self.detail = line_number, partial, detail


def _iter_jsonl(first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]]) -> Iterator[RawRecord]:
    def all_lines():
        yield first
        yield from lines

    try:
        for number, line in all_lines():
            if line.strip():
                yield _parse_line(number, line)
    except _Damaged as damage:
        yield RawRecord(
            source_row=damage.line_number,
            error=schema.TRUNCATED_FILE,
            detail=f"{damage.detail}; the rows before line {damage.line_number} were read",
            raw=schema.raw_excerpt(damage.partial),
        )


def _parse_line(number: int, line: bytes) -> RawRecord:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return RawRecord(source_row=number, error=schema.INVALID_JSON, detail=str(exc), raw=schema.raw_excerpt(line))
    return RawRecord(source_row=number, record=record)


def _iter_json_array_or_lines(first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]]) -> Iterator[RawRecord]:
    """A file starting with "[": a JSON array, unless its first line is a complete value (JSONL)."""
    buffer = io.BytesIO()
    buffer.write(first[1])
    rest: list[tuple[int, bytes]] = []
    try:
        for number, line in lines:
            buffer.write(b"\n")
            buffer.write(line)
            rest.append((number, line))
    except _Damaged as damage:
        yield _unreadable(f"JSON array in a damaged gzip: {damage.detail}")
        return
    data = buffer.getvalue()
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if _parse_line(*first).error is None:
            # The first line is a whole JSON value on its own: JSON lines, one of them an array.
            yield from _iter_jsonl(first, iter(rest))
        else:
            yield _unreadable(f"not a valid JSON array: {exc}", raw=schema.raw_excerpt(data))
        return
    for index, element in enumerate(document):
        yield RawRecord(source_row=index, record=element)


def _iter_hf(item: InputFile) -> Iterator[RawRecord]:
    # A hub dataset: the user named it explicitly, so `datasets` may download it.
    import datasets

    _, name, split = item.source.split(":", 2)
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported as this input's rejection
        yield _unreadable(f"cannot load hub dataset {name!r} split {split!r}: {type(exc).__name__}: {exc}")
        return
    for row, record in enumerate(dataset):
        yield RawRecord(source_row=row, record=record)


# --- rows --------------------------------------------------------------------------------------------


def read_file_batches(item: InputFile, normalize_config, batch_rows: int = 2048) -> Iterator[pa.Table]:
    """Read one input file and normalize every row: WORK_SCHEMA tables of up to `batch_rows` rows."""
    from operators.normalize import normalize_record

    columns: dict[str, list] = {field.name: [] for field in schema.WORK_SCHEMA}

    def flush() -> pa.Table:
        table = pa.Table.from_pydict(columns, schema=schema.WORK_SCHEMA)
        for values in columns.values():
            values.clear()
        return table

    for raw in iter_records(item):
        if raw.error is None:
            result = normalize_record(raw.record, normalize_config)
            status, reason, detail, messages = result.status, result.reason, result.detail, result.messages
            excerpt = _excerpt_of(raw.record) if status == schema.REJECTED else None
        else:
            status, reason, detail, messages, excerpt = schema.REJECTED, raw.error, raw.detail, None, raw.raw
        if status != schema.KEPT:
            logger.debug("%s:%d %s %s", item.source, raw.source_row, reason, detail)
        row = dict.fromkeys(columns)
        row.update(
            {
                schema.ID: schema.row_id(item.source, raw.source_row),
                schema.SOURCE: item.source,
                schema.SOURCE_ROW: raw.source_row,
                schema.STATUS: status,
                schema.REASON: reason,
                schema.DETAIL: detail,
                schema.MESSAGES: messages,
                schema.RAW: excerpt,
            }
        )
        for name, value in row.items():
            columns[name].append(value)
        if len(columns[schema.ID]) >= batch_rows:
            yield flush()
    if columns[schema.ID]:
        yield flush()


def _excerpt_of(record: Any) -> str:
    try:
        return schema.raw_excerpt(json.dumps(record, ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return schema.raw_excerpt(repr(record))


def input_file_to_dict(item: InputFile) -> dict:
    return dataclasses.asdict(item)
