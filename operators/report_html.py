"""Report stage, the documents: report/report.html (one self-contained page) and the output's
README.md (a Hugging Face dataset card), rendered with Jinja from the manifest and a few looked-up rows.

The HTML environment autoescapes everything: conversation text is user data and may hold markup.
The card is Markdown with YAML front matter; its YAML scalars go through the `quoted` filter (JSON strings
are YAML strings), so a name with a colon or quote cannot break the front matter.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
from pathlib import Path

import jinja2

from operators.report import HISTOGRAM_VIEWS, STAGE_OF_REASON, TOKEN_COLUMNS

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Characters of one message shown in a pair table: enough to judge a near-duplicate by eye, bounded so
# 40 long conversations cannot make the page heavy. The full rows are in data/ and removed/.
MESSAGE_CHARS = 1500
MESSAGES_SHOWN = 6
# Hugging Face's size_categories values (the Hub's dataset card metadata).
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
BUILTIN_TOKENIZER_HUB = {"mistral-7b-v0.1": "mistralai/Mistral-7B-Instruct-v0.1"}
BUILTIN_EMBEDDER_HUB = {"all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def quoted(value) -> str:
    """A quoted string for the card: a JSON string is a YAML double-quoted string and a Python literal;
    unlike jinja's `tojson` this does not turn `<` into \\u003c (HF size categories are "n<1K")."""
    return json.dumps(value, ensure_ascii=False)


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["quoted"] = quoted
    return env


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def message_view(messages: list[dict] | None) -> list[dict]:
    """The first MESSAGES_SHOWN messages, each cut to MESSAGE_CHARS (the view says what was cut)."""
    out = []
    for message in (messages or [])[:MESSAGES_SHOWN]:
        content = message.get("content") or ""
        out.append({"role": message.get("role"), "content": content[:MESSAGE_CHARS],
                    "cut": max(0, len(content) - MESSAGE_CHARS)})
    hidden = len(messages or []) - len(out)
    if hidden > 0:
        out.append({"role": None, "content": f"... {hidden} more messages", "cut": 0})
    return out


_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff(a: str, b: str) -> tuple[list[dict], list[dict]]:
    """Both texts as segments {text, changed}: the words one has and the other lacks are `changed`, so a
    reader sees at once what differs inside a near-duplicate pair (difflib on word and space tokens)."""
    left, right = _WORDS.findall(a), _WORDS.findall(b)
    out_a: list[dict] = []
    out_b: list[dict] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        _append(out_a, "".join(left[i1:i2]), op != "equal")
        _append(out_b, "".join(right[j1:j2]), op != "equal")
    return out_a, out_b


def _append(segments: list[dict], text: str, changed: bool) -> None:
    if changed:
        # The highlight covers words, not the spaces around them (changed whitespace alone is not shown).
        core = text.strip()
        if not core:
            _append(segments, text, False)
            return
        start = text.index(core)
        _append(segments, text[:start], False)
        _extend(segments, core, True)
        _append(segments, text[start + len(core) :], False)
        return
    _extend(segments, text, False)


def _extend(segments: list[dict], text: str, changed: bool) -> None:
    if not text:
        return
    if segments and segments[-1]["changed"] == changed:
        segments[-1]["text"] += text
    else:
        segments.append({"text": text, "changed": changed})


def diff_views(kept: list[dict], removed: list[dict]) -> None:
    """Add `segments` to each shown message of a pair, message i of one row against message i of the other."""
    for i in range(max(len(kept), len(removed))):
        a = kept[i]["content"] if i < len(kept) and kept[i]["role"] else ""
        b = removed[i]["content"] if i < len(removed) and removed[i]["role"] else ""
        seg_a, seg_b = word_diff(a, b)
        if i < len(kept):
            kept[i]["segments"] = seg_a if kept[i]["role"] else [{"text": kept[i]["content"], "changed": False}]
        if i < len(removed):
            removed[i]["segments"] = seg_b if removed[i]["role"] else [{"text": removed[i]["content"], "changed": False}]


def dedup_settings(manifest: dict) -> dict:
    dedup = manifest["config"]["dedup"]
    recorded = dedup.get("record_threshold")
    # DedupConfig.recorded: None means threshold - 0.05 (jobs/config.py).
    recorded = round(dedup["threshold"] - 0.05, 6) if recorded is None else recorded
    return {**dedup, "recorded": recorded}


def token_rows(manifest: dict) -> list[dict]:
    tokens = manifest.get("tokens") or {}
    rows = []
    for view in ("before_length_filter", "kept"):
        for column in TOKEN_COLUMNS:
            summary = (tokens.get(view) or {}).get(column)
            rows.append({"view": view.replace("_", " "), "column": column, **(summary or {})})
    return rows


def reason_rows(manifest: dict) -> list[dict]:
    return [{"reason": r, "stage": STAGE_OF_REASON.get(r, "?"), "rows": n}
            for r, n in manifest["rows"]["by_reason"].items()]


# The manifest's dedup figures in words a user knows; the JSON key is shown beside each.
DEDUP_LABELS = {
    "candidates": "rows compared (kept by the earlier stages)",
    "exact_duplicate_groups": "groups of exact copies",
    "exact_duplicates_removed": "exact copies removed",
    "near_duplicates_removed": "near-duplicates removed",
    "in_reference_removed": "rows removed as duplicates of a reference row (--against)",
    "vectors.from_references": "vectors read from the references' stores",
    "pairs_recorded": "similar pairs recorded (neighbors/pairs)",
    "pairs_at_or_above_threshold": "pairs at or above the threshold",
    "pairs_within_1e-6_of_threshold": "pairs so close to the threshold that float rounding may decide them",
    "rows_researched": "rows with more neighbours than --max-neighbors, searched again exhaustively",
    "vectors.checkpoint": "vectors store",
    "vectors.reused": "every vector reused from an earlier run",
    "vectors.runtime": "embedding runtime",
    "vectors.rows": "vectors used",
    "vectors.embedded": "vectors embedded by this run",
    "vectors.dim": "vector dimensions",
    "vectors.windows": "windows embedded (long texts take several)",
    "vectors.rows_cut": "texts cut at --embed-max-tokens",
    "index.kind": "index searched (flat is exact)",
    "index.chosen_by_auto": "kind chosen by --index auto from the row count",
    "index.shards": "index shards",
    "index.gpu": "flat search on a GPU",
    "ivf_recall.recall": "IVF recall of recorded pairs (sampled)",
    "ivf_recall.sample_rows": "rows sampled to measure IVF recall",
    "ivf_recall.exact_pairs": "pairs exact search finds for those rows",
    "ivf_recall.found_pairs": "of which IVF found",
    "rethreshold_of": "re-derived from output",
}


def dedup_rows(manifest: dict) -> list[tuple[str, str, object]]:
    """The scalar dedup statistics of the manifest, flattened: (label in words, JSON key, value)."""
    out = []
    for key, value in (manifest.get("dedup") or {}).items():
        if key in ("neighbor_files", "boilerplate", "references", "target_rows"):
            continue  # sections and lines of their own
        if isinstance(value, dict):
            out.extend((DEDUP_LABELS.get(f"{key}.{k}", f"{key}.{k}"), f"{key}.{k}", v) for k, v in value.items())
        else:
            out.append((DEDUP_LABELS.get(key, key), key, value))
    return out


def render_html(
    manifest: dict,
    output_uri: str,
    images: dict[str, bytes],
    pairs: dict[str, list[dict]],
    notes: list[str],
    contamination: list[dict] = (),
) -> str:
    """The report page. `images`: name -> PNG bytes ('token_lengths', 'similarity'); `pairs`:
    'closest'/'furthest' -> [{similarity, kept: row, removed: row}]; `notes`: sentences shown on top;
    `contamination`: per benchmark file, its contaminated rows beside the prompts (jobs/report.py)."""
    template = _environment(autoescape=True).get_template("report.html.jinja")
    return template.render(
        m=manifest,
        output_uri=output_uri,
        images={name: data_uri(png) for name, png in images.items()},
        pairs=pairs,
        notes=notes,
        dedup=dedup_settings(manifest),
        reasons=reason_rows(manifest),
        tokens=token_rows(manifest),
        dedup_stats=dedup_rows(manifest),
        views=HISTOGRAM_VIEWS,
        contamination=list(contamination),
        decontaminate=manifest.get("decontaminate"),
        boilerplate=(manifest.get("dedup") or {}).get("boilerplate"),
        references=(manifest.get("dedup") or {}).get("references") or [],
    )


def size_category(rows: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if rows < limit), "n>1T")


def render_card(manifest: dict) -> str:
    """The output's README.md: a Hugging Face dataset card whose front matter points at data/*.parquet."""
    config = manifest["config"]
    tokenizer = config["tokenizer"]["name_or_path"]
    embedder = config["embed"]["model"]
    template = _environment(autoescape=False).get_template("card.md.jinja")
    return template.render(
        m=manifest,
        rows=manifest["rows"],
        config=config,
        dedup=dedup_settings(manifest),
        size_category=size_category(manifest["rows"]["kept"]),
        tokenizer=tokenizer,
        tokenizer_hub=BUILTIN_TOKENIZER_HUB.get(tokenizer, tokenizer),
        embedder=embedder,
        embedder_hub=BUILTIN_EMBEDDER_HUB.get(embedder),
        kept_tokens=(manifest.get("tokens") or {}).get("kept") or {},
        token_columns=TOKEN_COLUMNS,
        decontaminate=manifest.get("decontaminate"),
        boilerplate=(manifest.get("dedup") or {}).get("boilerplate"),
        index_kind=((manifest.get("dedup") or {}).get("index") or {}).get("kind", config["index"]["kind"]),
        vectors=(manifest.get("dedup") or {}).get("vectors") or {},
        prefilter=(manifest.get("dedup") or {}).get("prefilter"),
        prefilter_choice=(manifest.get("dedup") or {}).get("prefilter_choice") or {},
    )
