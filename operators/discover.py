"""Discovery: turn --input values (files, directories, globs, URIs, hf:NAME) into the files to read.

Runs on the driver before Ray starts, so a missing input or a refused URI fails in a second with nothing
written. Names every file's rows (`source`, docs/architecture.md "Identity and accounting": the path relative to
the parent of the input root). Local directory links are followed at most once and never loop
(`local_walk`); what is left out is recorded with its reason.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import urllib.parse
from dataclasses import dataclass, field

import pyarrow.fs as pafs

HF_PREFIX = "hf:"
# Extensions picked up when a directory is given; an explicitly named file is always read.
# JSON vs JSONL and gzip are detected from the bytes, not from these names.
DIRECTORY_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".gz", ".parquet", ".arrow")
# Files a `datasets.save_to_disk` directory holds next to its .arrow data: metadata, not rows.
HF_METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json"}
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class InputFile:
    """One unit of reading work: a file (or a hub dataset split) and the name its rows carry."""

    uri: str  # what pyarrow's FileSystem.from_uri accepts: an absolute local path or a URI
    source: str  # docs/architecture.md: path relative to the parent of the input root, POSIX style
    kind: str  # "text" (JSON / JSONL, maybe gzip), "parquet", "arrow", or "hf"
    size: int = -1  # bytes on storage when listed (-1: unknown); groups small files into read tasks




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


@dataclass
class Discovery:
    """The files to read, and what discovery left out and why (recorded in manifest.json)."""

    files: list[InputFile]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path": source-style name, "reason": ...}


def discover_inputs(inputs: list[str]) -> list[InputFile]:
    return discover(inputs).files


def discover(inputs: list[str]) -> Discovery:
    """Expand files, directories and globs into InputFiles, sorted by source.

    Raises ValueError for a path that matches nothing and for two inputs that yield the same
    `source` (their ids would collide). Local directory links are followed at most once (local_walk).
    """
    found: dict[str, InputFile] = {}
    skipped: list[dict[str, str]] = []
    seen_files: dict[tuple[int, int], str] = {}  # a local file named by two inputs is read once
    for spec in inputs:
        files, spec_skipped = _expand(spec)
        skipped.extend(spec_skipped)
        for item in files:
            if item.source in found and found[item.source].uri != item.uri:
                raise ValueError(
                    f"two input files have the same source name {item.source!r} "
                    f"({found[item.source].uri} and {item.uri}); their row ids would collide. "
                    "Pass the common parent directory once instead."
                )
            identity = _local_identity(item.uri)
            if identity is not None and seen_files.setdefault(identity, item.source) != item.source:
                if item.source not in found:
                    skipped.append({"path": item.source, "reason": f"same file as {seen_files[identity]}, read once"})
                continue
            found[item.source] = item
    return Discovery(sorted(found.values(), key=lambda f: f.source), skipped)


def _local_identity(uri: str) -> tuple[int, int] | None:
    if "://" in uri or uri.startswith(HF_PREFIX):
        return None
    try:
        st = os.stat(uri)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _expand(spec: str) -> tuple[list[InputFile], list[dict[str, str]]]:
    if spec.startswith(HF_PREFIX):
        name, _, split = spec[len(HF_PREFIX) :].partition(":")
        split = split or "train"
        return [InputFile(uri=spec, source=f"hf:{name}:{split}", kind="hf")], []
    fs, path = filesystem_from_uri(spec)
    local = isinstance(fs, pafs.LocalFileSystem)
    path = path.rstrip("/") or "/"
    glob = _GLOB_CHARS.search(path)
    skipped: list[tuple[str, str, str | None]] = []
    sizes: dict[str, int] = {}
    if glob:
        # The input root of a pattern is its non-glob directory prefix.
        root = path[: glob.start()].rsplit("/", 1)[0] or "/"
        regex = _glob_regex(path)

        def wanted(p: str) -> bool:
            return bool(regex.match(p)) and posixpath.basename(p) not in HF_METADATA_FILES

        if local:
            paths, skipped = local_walk(root, wanted)
        else:
            listing = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            paths = [i.path for i in listing if i.type == pafs.FileType.File and wanted(i.path)]
            sizes = {i.path: i.size for i in listing if i.type == pafs.FileType.File}
    else:
        info = fs.get_file_info(path)
        root = path
        if info.type == pafs.FileType.File:
            paths = [path]
            sizes = {path: info.size}
        elif info.type == pafs.FileType.Directory:
            if local:
                paths, skipped = local_walk(path, _is_data_file)
            else:
                listing = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                paths = [i.path for i in listing if i.type == pafs.FileType.File and _is_data_file(i.path)]
                sizes = {i.path: i.size for i in listing if i.type == pafs.FileType.File}
        else:
            raise ValueError(f"input {spec!r} does not exist (looked for {path!r})")
    if not paths:
        raise ValueError(f"input {spec!r} matches no data files ({', '.join(DIRECTORY_EXTENSIONS)})")
    parent = posixpath.dirname(root.rstrip("/"))
    if local:
        sizes = {p: _local_size(p) for p in paths}
    files = [
        InputFile(uri=_join_uri(spec, p), source=_source_name(p, parent), kind=_kind_of(p), size=sizes.get(p, -1))
        for p in sorted(paths)
    ]
    # Reasons name other paths by source-style names too: no host path reaches manifest.json.
    return files, [
        {"path": _source_name(p, parent), "reason": why.format(_source_name(other, parent)) if other else why}
        for p, why, other in skipped
    ]


def _local_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def local_walk(root: str, wanted) -> tuple[list[str], list[tuple[str, str, str | None]]]:
    """Files under a local directory for which `wanted(path)` holds, and the paths left out: (path, why,
    the other path the reason names, as `{}` in why).

    pyarrow's recursive listing follows directory links without memory: a link to `.` yields every file
    again under 40 nested names (the kernel's link limit), and two such links grow without end. Here the
    real tree is walked first, without following links; then each link to a directory is followed once,
    unless its target was already walked (a loop, or a second name for the same directory). A file seen
    under two names (links, hard links) is listed once, under the name found first: its real path when
    the link-free walk reaches it.
    """
    files: list[str] = []
    skipped: list[tuple[str, str, str | None]] = []
    walked: dict[tuple[int, int], str] = {}
    listed: dict[tuple[int, int], str] = {}
    links: list[str] = []  # directory and file links, followed after the real tree, in the order found

    def walk(directory: str) -> None:
        stack = [directory]
        while stack:
            current = stack.pop()
            st = os.stat(current)
            key = (st.st_dev, st.st_ino)
            if key in walked:
                skipped.append((current, "directory already read as {}", walked[key]))
                continue
            walked[key] = current
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError as exc:
                skipped.append((current, f"cannot list: {exc.strerror or exc}", None))
                continue
            subdirs = []
            for entry in entries:
                path = posixpath.join(current, entry.name)
                if entry.is_symlink():
                    links.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append(path)
                elif entry.is_file(follow_symlinks=False) and wanted(path):
                    add_file(path, (st.st_dev, entry.inode()))
            stack.extend(reversed(subdirs))  # depth first, in name order

    def add_file(path: str, key: tuple[int, int]) -> None:
        if key in listed:
            skipped.append((path, "same file as {}, read once", listed[key]))
            return
        listed[key] = path
        files.append(path)

    walk(root)
    followed = 0
    while followed < len(links):
        link = links[followed]
        followed += 1
        try:
            st = os.stat(link)
        except OSError:
            if wanted(link):
                skipped.append((link, "broken link", None))
            continue
        if stat.S_ISDIR(st.st_mode):
            walk(link)
        elif stat.S_ISREG(st.st_mode) and wanted(link):
            add_file(link, (st.st_dev, st.st_ino))
    return files, skipped


def _source_name(path: str, parent: str) -> str:
    """`path` relative to the parent of the input root. Object-store paths are relative (`bucket/key`):
    a bucket given as the root has no parent, so its rows are named `bucket/...`, as a local `/data`
    gives `data/...` (posixpath.relpath would resolve a relative path against the driver's cwd)."""
    if parent in ("", "/"):
        return path.lstrip("/")
    return posixpath.relpath(path, parent)


