"""The report: histograms built from merged counts, the plots' lines and scales, report.html, the dataset
card, `chatsieve report` and `inspect`, on a small fake output built without Ray (fast, deterministic)."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import report as report_job
from jobs.config import DedupConfig, LengthConfig, OutputConfig, PrepareConfig
from jobs.dedup import BEST_SCHEMA, PAIRS_SCHEMA
from operators import schema
from operators.plots import choose_scale, similarity_figure, token_lengths_figure
from operators.report import (
    AFTER,
    BEFORE,
    KEPT_VIEW,
    RowStats,
    SimilarityHistogram,
    ValueCounts,
    linear_edges,
    log_edges,
    nice_step,
)
from operators.report_html import MESSAGE_CHARS, render_card
from operators.write import Output

MAX_TOKENS = 4096
THRESHOLD = 0.95
NASTY = '<script>alert("x")</script> & <b>bold</b>'
N_KEPT, N_NEAR = 60, 45


# --- the fake output -----------------------------------------------------------------------------------
def _messages(i: int, text: str | None = None) -> list[dict]:
    return [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": text or f"answer {i}"}]


def fake_rows(keep: str = "first") -> list[dict]:
    """Every row of a small run, as the commit step sees them (WORK_SCHEMA columns that matter)."""
    rows = []

    def add(source, n, status, reason=None, tokens=None, **extra):
        prompt, response = tokens if tokens else (None, None)
        rows.append({
            schema.ID: schema.row_id(source, n), schema.SOURCE: source, schema.SOURCE_ROW: n,
            schema.STATUS: status, schema.REASON: reason,
            schema.NUM_TOKENS: None if prompt is None else prompt + response,
            schema.PROMPT_TOKENS: prompt, schema.RESPONSE_TOKENS: response, **extra,
        })

    for i in range(N_KEPT):  # kept: a.jsonl rows 0..59
        add("a.jsonl", i, schema.KEPT, tokens=(20 + i, 30 + 2 * i),
            messages=_messages(i, NASTY + " kept" if i == 0 else None))
    for j in range(N_NEAR):  # near duplicates: b.jsonl rows 0..44, similarity 0.950 .. 0.994
        target = rows[j % N_KEPT][schema.ID]
        if keep == "none" and j == 0:
            target = schema.row_id("b.jsonl", 1)  # --keep none: duplicate_of may be a removed row
        add("b.jsonl", j, schema.REMOVED, schema.NEAR_DUPLICATE, tokens=(25, 40),
            messages=_messages(j, NASTY + " removed" if j == 0 else f"answer {j} again"),
            duplicate_of=target, similarity=np.float32(THRESHOLD + 0.001 * j), detail="near")
    for j in range(3):
        add("b.jsonl", 100 + j, schema.REMOVED, schema.EXACT_DUPLICATE, tokens=(25, 40), messages=_messages(j),
            duplicate_of=rows[j][schema.ID], similarity=np.float32(1.0), detail="same")
    add("b.jsonl", 200, schema.REMOVED, schema.TOO_LONG, tokens=(100, 4900), messages=_messages(200))
    add("b.jsonl", 201, schema.REMOVED, schema.TOO_LONG, tokens=(100, 8900), messages=_messages(201))
    add("b.jsonl", 202, schema.REJECTED, schema.INVALID_JSON, raw="{not json")
    return rows


def _table(rows: list[dict], out_schema: pa.Schema, renames: dict | None = None) -> pa.Table:
    renames = renames or {}
    return pa.Table.from_pylist(
        [{name: r.get(renames.get(name, name)) for name in out_schema.names} for r in rows], schema=out_schema
    )


def _write(root: Path, subdir: str, tables: list[pa.Table], row_group_size: int = 16) -> None:
    (root / subdir).mkdir(parents=True, exist_ok=True)
    for i, table in enumerate(tables):
        name = f"part-{i:05d}-of-{len(tables):05d}.parquet"
        pq.write_table(table, root / subdir / name, row_group_size=row_group_size)


def make_output(root: Path, dedup: bool = True, keep: str = "first", success: bool = True) -> Path:
    rows = fake_rows(keep)
    work = pa.Table.from_pylist(
        [{c: r.get(c) for c in RowStats.COLUMNS} for r in rows],
        schema=pa.schema([schema.WORK_SCHEMA.field(c) for c in RowStats.COLUMNS]),
    )
    stats = RowStats()
    stats.add(work.slice(0, 50))  # two batches: the counts merge
    stats.add(work.slice(50))
    config = PrepareConfig(
        output=OutputConfig(path=str(root)), length=LengthConfig(max_tokens=MAX_TOKENS),
        dedup=DedupConfig(enabled=dedup, threshold=THRESHOLD, keep=keep),
    )
    kept = [r for r in rows if r[schema.STATUS] == schema.KEPT]
    for r in kept:
        r[schema.TEXT] = "<s>" + r[schema.MESSAGES][0]["content"] + "</s>"
    removed = [r for r in rows if r[schema.STATUS] == schema.REMOVED]
    rejected = [r for r in rows if r[schema.STATUS] == schema.REJECTED]
    _write(root, "data", [_table(kept, schema.DATA_SCHEMA)])
    _write(root, "removed", [_table(removed[:20], schema.REMOVED_SCHEMA), _table(removed[20:], schema.REMOVED_SCHEMA)])
    _write(root, "rejected", [_table(rejected, schema.REJECTED_SCHEMA, {schema.ERROR: schema.REASON})])
    dedup_manifest = None
    if dedup:
        near = [r for r in removed if r[schema.REASON] in (schema.NEAR_DUPLICATE, schema.EXACT_DUPLICATE)]
        rng = np.random.default_rng(0)
        best = [{"id": r[schema.ID], "best_id": kept[(i + 1) % N_KEPT][schema.ID],
                 "best_similarity": float(rng.uniform(0.3, 0.9))} for i, r in enumerate(kept)]
        best[-1]["best_similarity"], best[-1]["best_id"] = None, None  # a row with no neighbour
        best += [{"id": r[schema.ID], "best_id": r[schema.DUPLICATE_OF], "best_similarity": float(r[schema.SIMILARITY])}
                 for r in near]
        _write(root, "neighbors/best", [pa.Table.from_pylist(best[:30], schema=BEST_SCHEMA),
                                        pa.Table.from_pylist(best[30:], schema=BEST_SCHEMA)])
        _write(root, "neighbors/pairs", [pa.Table.from_pylist(
            [{"id_a": r[schema.DUPLICATE_OF], "id_b": r[schema.ID], "similarity": float(r[schema.SIMILARITY])}
             for r in near], schema=PAIRS_SCHEMA)])
        dedup_manifest = {"vectors": {"checkpoint": "_work/vectors/x", "reused": False, "rows": 105, "dim": 384},
                          "candidates": 108, "exact_duplicate_groups": 3, "exact_duplicates_removed": 3,
                          "near_duplicates_removed": N_NEAR, "pairs_recorded": 48,
                          "neighbor_files": {"pairs": ["part-00000-of-00001.parquet"]}}
    manifest = {
        "chatsieve_version": "0.1.0",
        "config": config.to_dict(),
        "inputs": [{"source": "a.jsonl", "uri": "/in/a.jsonl"}, {"source": "b.jsonl", "uri": "/in/b.jsonl"}],
        "rows": stats.manifest_rows(),
        "tokens": stats.manifest_tokens(),
        "files": {},
        "timings_s": {"read_normalize_tokenize_filter": 1.5, "embed": 12.25, "sort": 0.5, "total": 14.75},
        "versions": {},
        "dedup": dedup_manifest,
    }
    output = Output(str(root))
    output.write_json("manifest.json", manifest)  # through JSON, as prepare writes it
    if success:
        output.mark_success()
    return root


def load_manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A fake output with its report written (shared: building it costs about a second)."""
    root = make_output(tmp_path_factory.mktemp("out") / "out")
    report_job.report(str(root))
    return root


# --- histograms from counts ------------------------------------------------------------------------------
def test_bin_edges_are_round_cover_the_range_and_increase():
    assert [nice_step(x) for x in (0.3, 1, 1.5, 2.26, 7, 130.28, 501)] == [1, 1, 2, 5, 10, 200, 1000]
    edges = linear_edges(6514)
    assert edges[0] == 0 and edges[1] == 200 and edges[-2] <= 6514 < edges[-1] and len(edges) - 1 <= 51
    for lo, hi in ((60, 6514), (0, 3), (1, 1), (21, 113), (500, 500_000)):
        edges = log_edges(lo, hi)
        assert edges[0] <= lo and edges[-1] > hi and all(b > a for a, b in zip(edges, edges[1:]))
    assert log_edges(0, 3)[:2] == [0, 1]


def test_value_counts_histogram_is_exact_and_refuses_values_outside_the_bins():
    counts = ValueCounts()
    counts.add(np.array([0, 1, 9, 10, 10, 19, 20]))
    assert counts.histogram([0, 10, 20, 30]) == [3, 3, 1]
    assert ValueCounts().histogram([0, 10, 20]) == [0, 0]
    with pytest.raises(ValueError, match="outside the bins"):
        counts.histogram([0, 10, 20])


def test_token_histograms_before_after_filter_and_kept_from_merged_batches(tmp_path):
    manifest = load_manifest(make_output(tmp_path / "out"))
    hist = manifest["tokens"]["histograms"]
    total = hist[schema.NUM_TOKENS]
    counted = N_KEPT + N_NEAR + 3 + 2
    for scale in ("linear", "log"):
        bins = total[scale]
        assert len(bins["edges"]) == len(bins[BEFORE]) + 1
        assert sum(bins[BEFORE]) == counted  # the rejected row was never tokenized
        assert sum(bins[AFTER]) == counted - 2  # the two too_long rows
        assert sum(bins[KEPT_VIEW]) == N_KEPT
        assert all(k <= a <= b for k, a, b in zip(bins[KEPT_VIEW], bins[AFTER], bins[BEFORE]))
    edges = total["linear"]["edges"]
    assert edges[-2] <= 9000 < edges[-1]  # the range covers the longest row, over --max-tokens
    # the 9000-token row sits in exactly the bin that holds 9000, in the before view only
    last = next(i for i in range(len(edges) - 1) if edges[i] <= 9000 < edges[i + 1])
    assert total["linear"][BEFORE][last] == 1 and total["linear"][AFTER][last] == 0
    # kept num_tokens are 50, 53, ..., 227: check one bin exactly against the rows
    kept_values = [50 + 3 * i for i in range(N_KEPT)]
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        assert total["linear"][KEPT_VIEW][i] == sum(a <= v < b for v in kept_values)
    # one batch or two: the same histograms
    one = RowStats()
    rows = fake_rows()
    one.add(pa.Table.from_pylist([{c: r.get(c) for c in RowStats.COLUMNS} for r in rows],
                                 schema=pa.schema([schema.WORK_SCHEMA.field(c) for c in RowStats.COLUMNS])))
    assert json.loads(json.dumps(one.manifest_tokens()["histograms"])) == hist


def test_no_tokenized_rows_gives_no_histogram():
    stats = RowStats()
    stats.add(pa.Table.from_pylist(
        [{schema.STATUS: schema.REJECTED, schema.REASON: schema.INVALID_JSON, schema.SOURCE: "a"}],
        schema=pa.schema([schema.WORK_SCHEMA.field(c) for c in RowStats.COLUMNS])))
    assert stats.manifest_tokens()["histograms"] == {c: None for c in (schema.NUM_TOKENS, schema.PROMPT_TOKENS,
                                                                         schema.RESPONSE_TOKENS)}


def test_similarity_histogram_merges_batches_and_bins_like_the_keep_rule():
    values = np.array([0.3, 0.95, 0.9499, 1.0, 1.0000001, np.nan, -1.0], dtype=np.float32)
    whole, parts = SimilarityHistogram(), SimilarityHistogram()
    whole.add(values)
    parts.add(values[:3])
    parts.add(values[3:])
    assert np.array_equal(whole.counts, parts.counts) and whole.no_neighbor == parts.no_neighbor == 1
    assert whole.rows == 6
    edges = whole.edges()
    at = int(np.searchsorted(edges, 0.95))
    assert edges[at] == pytest.approx(0.95) and whole.counts[at] == 1  # float32(0.95) >= threshold: its own bin
    assert whole.counts[at - 1] == 1 and whole.counts[-1] == 2 and whole.counts[0] == 1
    trimmed_edges, trimmed_counts = whole.trimmed(include=0.9)
    assert trimmed_edges[-1] == 1.0 and sum(trimmed_counts) == 6


# --- plots -------------------------------------------------------------------------------------------------
def test_token_plot_draws_the_max_tokens_line_and_picks_log_for_long_tails(tmp_path):
    hist = load_manifest(make_output(tmp_path / "out"))["tokens"]["histograms"]
    fig = token_lengths_figure(hist, MAX_TOKENS, min_tokens=0, scale="linear")
    prompt_ax, response_ax, total_ax = fig.axes
    lines = {line.get_label(): line for line in total_ax.get_lines()}
    assert list(lines[f"--max-tokens {MAX_TOKENS}"].get_xdata()) == [MAX_TOKENS, MAX_TOKENS]
    assert {p.get_label() for p in total_ax.patches} >= {"before length filter", "after length filter", "kept (data/)"}
    # prompts are at most 100 tokens: the line would be far off their axis, the legend says so instead
    assert f"--max-tokens {MAX_TOKENS} (off the axis)" in [t.get_text() for t in prompt_ax.get_legend().get_texts()]
    assert total_ax.get_xscale() == "linear"
    # the 4900/8900-token rows squash the linear view of total and response tokens: auto goes log there
    assert choose_scale(hist[schema.NUM_TOKENS], "auto") == "log"
    assert choose_scale(hist[schema.PROMPT_TOKENS], "auto") == "linear"
    fig = token_lengths_figure(hist, MAX_TOKENS, scale="auto")
    assert [ax.get_xscale() for ax in fig.axes] == ["linear", "log", "log"]
    assert "(log scale)" in fig.axes[2].get_title()
    with pytest.raises(ValueError, match="scale must be one of"):
        choose_scale(hist[schema.NUM_TOKENS], "loglog")


def test_similarity_plot_draws_the_threshold_and_record_lines():
    histogram = SimilarityHistogram()
    histogram.add(np.array([0.5, 0.6, 0.96, 0.97], np.float32))
    ax = similarity_figure(histogram, 0.95, 0.9).axes[0]
    lines = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
    assert lines["threshold 0.95"] == [0.95, 0.95] and lines["pairs recorded from 0.9"] == [0.9, 0.9]
    assert ax.get_xlim()[1] == 1.0 and ax.get_xlim()[0] <= 0.5


# --- report.html -----------------------------------------------------------------------------------------
class TableRows(HTMLParser):
    """Rows in each <table id=...>'s body, cell texts, and <img> sources."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.texts = {}, [], {}
        self._table, self._in_body = None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "id" in attrs:
            self._table = attrs["id"]
            self.rows[self._table], self.texts[self._table] = 0, []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self.rows[self._table] += 1
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._table and data.strip():
            self.texts[self._table].append(data.strip())


def parse(html: str) -> TableRows:
    parser = TableRows()
    parser.feed(html)
    return parser


def test_report_writes_the_plots_and_a_self_contained_page(built):
    assert sorted(p.name for p in (built / "report").iterdir()) == ["report.html", "similarity.png",
                                                                    "token_lengths.png"]
    html = (built / "report" / "report.html").read_text()
    page = parse(html)
    manifest = load_manifest(built)
    assert page.rows["stages"] == 6
    assert page.rows["reasons"] == len(manifest["rows"]["by_reason"]) == 4
    assert page.rows["sources"] == 2 and "b.jsonl" in page.texts["sources"]
    assert page.rows["tokens"] == 6 and "9000" in page.texts["tokens"]  # num_tokens max before the filter
    assert page.rows["timings"] == 4 and "12.2" in page.texts["timings"]
    # images embedded as base64 PNG data URIs, and identical to the files beside the page
    assert [i["id"] for i in page.images] == ["token-lengths", "similarity"]
    for image, name in zip(page.images, ("token_lengths.png", "similarity.png")):
        assert image["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(image["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (built / "report" / name).read_bytes()
    # no external assets: nothing is fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "<script" not in html.replace("&lt;script", "")


def test_report_pairs_closest_and_furthest_side_by_side_with_escaped_text(built):
    html = (built / "report" / "report.html").read_text()
    page = parse(html)
    assert page.rows["pairs-closest"] == 20 and page.rows["pairs-furthest"] == 20
    closest, furthest = page.texts["pairs-closest"], page.texts["pairs-furthest"]
    def sims(texts):
        return [float(t) for t in texts if re.fullmatch(r"0\.\d{6}", t)]

    assert sims(closest) == pytest.approx([THRESHOLD + 0.001 * j for j in range(20)], abs=1e-6)
    assert sims(furthest) == pytest.approx([THRESHOLD + 0.001 * j for j in range(44, 24, -1)], abs=1e-6)
    # the kept row's text was looked up in data/, the removed one's in removed/, both escaped
    # The word that differs inside the pair is highlighted; the shared words are not.
    assert "answer 19 <mark>again</mark>" in html and "answer 19" in closest
    assert NASTY not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt; <mark>kept</mark>" in html
    assert "&lt;b&gt;bold&lt;/b&gt; <mark>removed</mark>" in html


def test_report_keep_none_finds_the_removed_row_a_pair_names(tmp_path):
    root = make_output(tmp_path / "out", keep="none")
    output = Output(str(root))
    closest, furthest = report_job.select_pairs(output)
    views = report_job.pair_views(output, closest, furthest)
    first = views["closest"][0]
    assert first["kept"]["id"] == schema.row_id("b.jsonl", 1) and "removed too" in first["kept"]["note"]
    assert first["kept"]["messages"][1]["content"] == "answer 1 again"


def test_select_pairs_streams_few_rows_and_never_repeats_a_pair(tmp_path):
    output = Output(str(make_output(tmp_path / "out")))
    closest, furthest = report_job.select_pairs(output, k=3)
    assert closest.column(schema.SIMILARITY).to_pylist() == pytest.approx([0.95, 0.951, 0.952])
    assert furthest.column(schema.SIMILARITY).to_pylist() == pytest.approx([0.994, 0.993, 0.992])
    closest, furthest = report_job.select_pairs(output, k=40)  # fewer than 2k near duplicates
    assert closest.num_rows == 40 and furthest.num_rows == N_NEAR - 40
    assert not set(closest.column(schema.ID).to_pylist()) & set(furthest.column(schema.ID).to_pylist())


def test_long_messages_are_cut_in_the_page(tmp_path):
    from operators.report_html import message_view

    view = message_view([{"role": "user", "content": "x" * (MESSAGE_CHARS + 7)}] * 9)
    assert view[0]["cut"] == 7 and len(view[0]["content"]) == MESSAGE_CHARS
    assert view[-1]["role"] is None and "3 more messages" in view[-1]["content"]


def test_report_without_dedup_has_no_similarity_plot_and_says_so(tmp_path):
    root = make_output(tmp_path / "out", dedup=False)
    report_job.report(str(root))
    assert sorted(p.name for p in (root / "report").iterdir()) == ["report.html", "token_lengths.png"]
    html = (root / "report" / "report.html").read_text()
    page = parse(html)
    assert [i["id"] for i in page.images] == ["token-lengths"]
    assert "pairs-closest" not in page.rows and "--no-dedup" in html


def test_report_refuses_an_incomplete_output_and_a_bad_scale(tmp_path):
    root = make_output(tmp_path / "out", success=False)
    with pytest.raises(ValueError, match="not a complete chatsieve output"):
        report_job.report(str(root))
    (root / "_SUCCESS").write_text("")
    with pytest.raises(ValueError, match="--scale"):
        report_job.report(str(root), scale="loglog")
    with pytest.raises(ValueError, match="no manifest.json"):
        report_job.inspect(str(tmp_path))


def test_report_rebuild_replaces_stale_files(built):
    (built / "report" / "stale.png").write_bytes(b"old")
    message = report_job.report(str(built), scale="log")
    assert not (built / "report" / "stale.png").exists() and "report.html" in message


# --- the dataset card ----------------------------------------------------------------------------------------
def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_card_front_matter_points_at_the_data_and_the_body_says_how_to_train(built):
    card = (built / "README.md").read_text()
    meta = front_matter(card)
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["text-generation"]
    body = card.split("---\n", 2)[2]
    assert f"{N_KEPT} conversations kept of {N_KEPT + N_NEAR + 3 + 2 + 1} rows read" in body
    assert "`mistral-7b-v0.1`" in body and "mistralai/Mistral-7B-Instruct-v0.1" in body
    assert "`all-minilm-l6-v2`" in body and f"cosine >= {THRESHOLD}" in body
    assert "add_special_tokens=False" in body and "train on `messages`" in body
    assert "| near_dedup | 105 | near_duplicate 45 | 60 |" in body


def test_card_names_the_embedding_runtime_and_says_when_it_is_not_fp32(tmp_path):
    manifest = load_manifest(make_output(tmp_path / "out"))
    vectors = manifest["dedup"]["vectors"]
    vectors.update(runtime="openvino-fp32", precision="fp32")
    card = render_card(manifest)
    assert "Embedding runtime: `openvino-fp32`." in card and "reduced precision" not in card
    vectors.update(runtime="openvino-bf16", precision="bf16")
    card = render_card(manifest)
    assert "Embedding runtime: `openvino-bf16`: reduced precision (bf16)" in card
    assert "may be decided differently" in card


def test_card_without_dedup_and_with_awkward_names_still_parses(tmp_path):
    manifest = load_manifest(make_output(tmp_path / "out", dedup=False))
    manifest["config"]["tokenizer"]["name_or_path"] = 'my: "odd" tok\nenizer'
    card = render_card(manifest)
    assert front_matter(card)["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert "--no-dedup" in card and "Embedder" not in card


# --- inspect --------------------------------------------------------------------------------------------------
def test_inspect_prints_stages_tokens_times_and_where_the_report_is(tmp_path):
    root = make_output(tmp_path / "out")
    text = report_job.inspect(str(root))
    assert f"chatsieve output {root} (complete)" in text
    assert re.search(r"length_filter\s+110\s+108\s+too_long=2", text)
    assert re.search(r"near_dedup\s+105\s+60\s+near_duplicate=45", text)
    assert f"read {N_KEPT + N_NEAR + 6} = kept {N_KEPT} + removed {N_NEAR + 5} + rejected 1" in text
    assert re.search(r"before length filter\s+num_tokens\s+110\s+50\s+.*\s9000$", text, re.M)
    assert re.search(r"^embed\s+12\.2$", text, re.M) and "threshold 0.95" in text
    assert "report: none yet" in text
    report_job.report(str(root))
    assert f"report: {root}/report/report.html" in report_job.inspect(str(root))


def test_command_line_functions_parse_and_run(tmp_path):
    import argparse

    root = make_output(tmp_path / "out")
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    report_job.add_report_arguments(commands.add_parser("report"))
    report_job.add_inspect_arguments(commands.add_parser("inspect"))
    args = parser.parse_args(["report", str(root), "--scale", "log"])
    assert args.scale == "log" and "report.html" in report_job.run_report(args)
    assert parser.parse_args(["report", str(root)]).scale == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(root), "--scale", "loglog"])
    assert "time per stage" in report_job.run_inspect(parser.parse_args(["inspect", str(root)]))


def test_word_diff_marks_only_the_words_that_differ():
    from operators.report_html import word_diff

    a, b = word_diff("Count the characters of hello world", "Count the words of hello world")
    assert [s for s in a if s["changed"]] == [{"text": "characters", "changed": True}]
    assert [s for s in b if s["changed"]] == [{"text": "words", "changed": True}]
    assert "".join(s["text"] for s in a) == "Count the characters of hello world"
    same, _ = word_diff("x  y", "x y")
    assert not any(s["changed"] for s in same)  # spacing alone is not highlighted
