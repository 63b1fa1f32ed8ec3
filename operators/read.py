"""Read stage: parse input files one physical row at a time (operators/discover.py finds and names them).

Why not `ray.data.read_json`: one malformed line fails the whole file and it gives no line numbers
(docs/notes.md). Here each Ray task owns one file, streams it through a pyarrow filesystem (local paths
and object-store URIs alike), and yields one record per physical row with its exact `source_row`,
so one bad line is rejected alone and every row read is accounted for.

What counts as a row read (docs/architecture.md, "Identity and accounting"): non-blank JSONL lines,
JSON array elements, Parquet / Arrow rows. A file that cannot be parsed at all is one rejected row
with `source_row = -1`; a truncated `.gz` keeps the lines before the damage plus one rejected row.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from operators import schema
from operators.discover import InputFile, filesystem_from_uri

logger = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
# A file opening with a "{" line that is not JSON on its own is tried as one pretty-printed object up to
# this size; a larger one is read as JSON lines (a whole-file parse would hold it all in memory).
PRETTY_OBJECT_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class RawRecord:
    """A physical row: either a parsed JSON value (`record`) or a rejection (`error`)."""

    source_row: int
    record: Any = None
    error: str | None = None  # a schema.REJECTION_ERRORS code
    detail: str | None = None
    raw: str | None = None


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
            if first[0] == 0 and first[1].startswith(_BOM):
                first = (0, first[1][len(_BOM) :])  # a UTF-8 BOM says nothing about JSON vs JSONL
            if first[1].strip():
                break
    except _Damaged as damage:
        yield _unreadable(f"damaged before the first row: {damage.detail}", raw=schema.raw_excerpt(damage.partial))
        return
    if first is None or not first[1].strip():
        return  # an empty file has no rows
    start = first[1].lstrip()
    if start.startswith(b"["):
        yield from _iter_json_array_or_lines(first, lines)
    elif start.startswith(b"{") and _parse_line(*first).error == schema.INVALID_JSON:
        yield from _iter_json_object_or_lines(first, lines)
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
    except RecursionError:
        return _too_deep(number, line)
    return RawRecord(source_row=number, record=record)


def _too_deep(number: int, raw: bytes | str) -> RawRecord:
    return RawRecord(
        source_row=number,
        error=schema.TOO_DEEPLY_NESTED,
        detail=f"JSON nested deeper than Python's parser allows (recursion limit {sys.getrecursionlimit()})",
        raw=schema.raw_excerpt(raw),
    )


def _buffer_lines(
    first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]], limit: float = math.inf
) -> tuple[bytes, list[tuple[int, bytes]], bool]:
    """The document from `first` on, as bytes, and its lines after the first; stops after `limit` bytes.

    Returns (data, rest, complete): complete is False when the limit stopped it (then `lines` still holds
    the remainder). Raises _Damaged like `lines` does."""
    buffer = io.BytesIO()
    buffer.write(first[1])
    rest: list[tuple[int, bytes]] = []
    size = len(first[1])
    for number, line in lines:
        buffer.write(b"\n")
        buffer.write(line)
        rest.append((number, line))
        size += len(line) + 1
        if size > limit:
            return buffer.getvalue(), rest, False
    return buffer.getvalue(), rest, True


def _iter_json_array_or_lines(first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]]) -> Iterator[RawRecord]:
    """A file starting with "[": a JSON array, unless its first line is a complete value (JSONL)."""
    try:
        data, rest, _ = _buffer_lines(first, lines)
    except _Damaged as damage:
        yield _unreadable(f"JSON array in a damaged gzip: {damage.detail}")
        return
    try:
        elements = parse_json_array(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if _parse_line(*first).error is None:
            # The first line is a whole JSON value on its own: JSON lines, one of them an array.
            yield from _iter_jsonl(first, iter(rest))
        else:
            yield _unreadable(f"not a valid JSON array: {exc}", raw=schema.raw_excerpt(data))
        return
    yield from elements


def _iter_json_object_or_lines(first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]]) -> Iterator[RawRecord]:
    """A file starting with a "{" line that is not a JSON value on its own: one pretty-printed object (one
    row), or JSON lines whose first line is broken. Objects up to PRETTY_OBJECT_MAX_BYTES are tried whole."""
    try:
        data, rest, complete = _buffer_lines(first, lines, PRETTY_OBJECT_MAX_BYTES)
    except _Damaged:
        complete = False
        data, rest = b"", []
    if complete:
        try:
            record = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        except RecursionError:
            yield _too_deep(0, data)
            return
        else:
            if isinstance(record, dict):
                yield RawRecord(source_row=0, record=record)
                return

    def remaining():
        yield from rest
        yield from lines

    yield from _iter_jsonl(first, remaining())


# JSON's insignificant whitespace (RFC 8259), and what a scan for a value's end must look at.
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_STRUCTURE = re.compile(r'[\[\]{}"]')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_DECODER = json.JSONDecoder()


def parse_json_array(text: str) -> list[RawRecord]:
    """Every element of a JSON array, one RawRecord each, decoded one element at a time.

    `json.loads` of the whole array would fail the whole file for one element nested too deeply for
    Python's parser (RecursionError); decoding element by element rejects that element alone and keeps the
    rest. Any syntax error raises json.JSONDecodeError: the array as a whole is broken.
    """
    pos = _JSON_SPACE.match(text, 0).end()
    if not text.startswith("[", pos):
        raise json.JSONDecodeError("Expecting '['", text, pos)
    pos = _JSON_SPACE.match(text, pos + 1).end()
    records: list[RawRecord] = []
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            index = len(records)
            try:
                value, end = _DECODER.raw_decode(text, pos)
                records.append(RawRecord(source_row=index, record=value))
            except RecursionError:
                end = _end_of_container(text, pos)
                records.append(_too_deep(index, text[pos:end]))
            pos = _JSON_SPACE.match(text, end).end()
            if text.startswith(",", pos):
                pos = _JSON_SPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    if _JSON_SPACE.match(text, pos).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)
    return records


def _end_of_container(text: str, pos: int) -> int:
    """Where the array or object starting at `pos` ends, counting brackets outside strings (no recursion)."""
    depth = 0
    while True:
        match = _STRUCTURE.search(text, pos)
        if match is None:
            raise json.JSONDecodeError("Unterminated array or object", text, pos)
        char = match.group()
        if char == '"':
            string = _STRING.match(text, match.start())
            if string is None:
                raise json.JSONDecodeError("Unterminated string", text, match.start())
            pos = string.end()
            continue
        depth += 1 if char in "[{" else -1
        pos = match.end()
        if depth <= 0:
            if depth < 0:
                raise json.JSONDecodeError("Unbalanced brackets", text, match.start())
            return pos


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
    """Read one input file and normalize every row: WORK_SCHEMA tables of up to `batch_rows` rows.

    Any exception while normalizing one row makes that row rejected (`row_error`, the exception in
    `detail`); a row that cannot be written as UTF-8 is rejected `invalid_unicode`. An exception of the
    file itself (it cannot be opened) stops the job with one line naming the file and the last row read.
    """
    columns: dict[str, list] = {field.name: [] for field in schema.WORK_SCHEMA}

    def flush() -> pa.Table:
        table = pa.Table.from_pydict(columns, schema=schema.WORK_SCHEMA)
        for values in columns.values():
            values.clear()
        return table

    last_row = None
    try:
        for raw in iter_records(item):
            last_row = raw.source_row
            row = _row_of(item, raw, normalize_config)
            for name, value in row.items():
                columns[name].append(value)
            if len(columns[schema.ID]) >= batch_rows:
                yield flush()
    except InputFault:
        raise
    except Exception as exc:
        where = "before its first row" if last_row is None else f"after row {last_row}"
        raise InputFault(f"input {item.source} ({item.uri}), {where}: {type(exc).__name__}: {exc}") from exc
    if columns[schema.ID]:
        yield flush()


class InputFault(RuntimeError):
    """A fault of an input file as a whole (not of one row): the job stops, naming the file."""


def _row_of(item: InputFile, raw: RawRecord, normalize_config) -> dict[str, Any]:
    """One WORK_SCHEMA row for one record read: normalized, or rejected with its reason."""
    from operators.normalize import normalize_record

    messages = excerpt = None
    if raw.error is not None:
        status, reason, detail, excerpt = schema.REJECTED, raw.error, raw.detail, raw.raw
    else:
        try:
            result = normalize_record(raw.record, normalize_config)
            status, reason, detail, messages = result.status, result.reason, result.detail, result.messages
            unencodable = schema.unencodable_message(messages)
            if unencodable is not None:
                status, reason, detail, messages = schema.REJECTED, schema.INVALID_UNICODE, unencodable, None
        except Exception as exc:  # noqa: BLE001 - one row's fault becomes that row's rejection, with its message
            logger.debug("%s:%d normalize raised", item.source, raw.source_row, exc_info=True)
            status, reason, detail = schema.REJECTED, schema.ROW_ERROR, f"normalize: {type(exc).__name__}: {exc}"
        if status == schema.REJECTED:
            excerpt = _excerpt_of(raw.record)
    if status != schema.KEPT:
        logger.debug("%s:%d %s %s", item.source, raw.source_row, reason, detail)
    return {
        schema.ID: schema.row_id(item.source, raw.source_row),
        schema.SOURCE: item.source,
        schema.SOURCE_ROW: raw.source_row,
        schema.STATUS: status,
        schema.REASON: reason,
        schema.DETAIL: schema.utf8_safe(detail),
        schema.MESSAGES: messages,
        schema.RAW: schema.utf8_safe(excerpt),
        **{name: None for name in _FILLED_LATER},
    }


_FILLED_LATER = (
    schema.TEXT, schema.NUM_TOKENS, schema.PROMPT_TOKENS, schema.RESPONSE_TOKENS, schema.DUPLICATE_OF, schema.SIMILARITY
)


def _excerpt_of(record: Any) -> str:
    try:
        return schema.raw_excerpt(json.dumps(record, ensure_ascii=False, default=str))
    except (TypeError, ValueError, RecursionError):
        try:
            return schema.raw_excerpt(repr(record))
        except RecursionError:
            return f"<a {type(record).__name__} nested too deeply to show>"


# Read tasks hold whole files, grouped in source order: one Ray task per tiny file costs about 0.14 s of
# scheduling on 2 cores (docs/notes.md: 5,000 one-line files took 715 s). A group aims at a quarter of the
# input per CPU, between these bounds, so large inputs still spread over every core.
READ_GROUP_MIN_BYTES = 1 << 20
READ_GROUP_MAX_BYTES = 64 << 20


def group_for_reading(files: list[InputFile], cpus: float, group_bytes: int | None = None) -> list[list[InputFile]]:
    """The input files packed into read tasks: consecutive files (source order) of about `group_bytes` each
    (None: derived from the input size and `cpus`; 0: one task per file). A file of unknown size (a hub
    dataset) or larger than a group gets a task of its own. Rows keep their file's source and row numbers:
    grouping changes which task reads a file, never how."""
    if group_bytes == 0:
        return [[f] for f in files]
    if group_bytes is None:
        total = sum(max(f.size, 0) for f in files)
        group_bytes = min(READ_GROUP_MAX_BYTES, max(READ_GROUP_MIN_BYTES, int(total / (4 * max(cpus, 1.0)))))
    groups: list[list[InputFile]] = []
    current: list[InputFile] = []
    size = 0
    for item in files:
        if item.size < 0 or item.size >= group_bytes:
            if current:
                groups.append(current)
                current, size = [], 0
            groups.append([item])
            continue
        if current and size + item.size > group_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        groups.append(current)
    return groups


def input_file_to_dict(item: InputFile) -> dict:
    return dataclasses.asdict(item)
