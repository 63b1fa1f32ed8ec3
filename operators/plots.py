"""Report stage, the pictures: token-length and similarity histograms as PNG bytes, drawn with
matplotlib from counts already binned (operators/report.py), never from rows.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, not pyplot: no global
backend switch, no figure registry to leak, safe in a Ray worker or a notebook alike.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from operators import schema
from operators.report import AFTER, BEFORE, KEPT_VIEW

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCALES = ("auto", "linear", "log")
# auto picks the log view when the linear one squashes the data: this share of the rows in the first
# AUTO_HEAD_BINS bins of ~50 means a long tail stretched the axis (one 6k-token row among 100-token ones).
AUTO_HEAD_SHARE = 0.9
AUTO_HEAD_BINS = 5
PANELS = (
    (schema.PROMPT_TOKENS, "prompt tokens"),
    (schema.RESPONSE_TOKENS, "response tokens"),
    (schema.NUM_TOKENS, "total tokens (num_tokens)"),
)
VIEW_STYLE = {
    BEFORE: {"label": "before length filter", "fill": True, "color": "#c9cfd6", "linewidth": 0},
    AFTER: {"label": "after length filter", "color": "#1f5fa8", "linewidth": 1.6},
    KEPT_VIEW: {"label": "kept (data/)", "color": "#e07b00", "linewidth": 1.2, "linestyle": "--"},
}
DPI = 100
LOG_FLOOR = 0.5


def choose_scale(histogram: dict, scale: str) -> str:
    """'linear' or 'log' for one column's histograms (the `linear`/`log` entries of the manifest)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if scale != "auto":
        return scale
    before = np.asarray(histogram["linear"][BEFORE])
    total = before.sum()
    return "log" if total and before[:AUTO_HEAD_BINS].sum() / total >= AUTO_HEAD_SHARE else "linear"


def token_lengths_png(histograms: dict, max_tokens: int, min_tokens: int = 0, scale: str = "auto") -> bytes:
    return _png(token_lengths_figure(histograms, max_tokens, min_tokens, scale))


def similarity_png(histogram, threshold: float, record_threshold: float, scale: str = "auto") -> bytes:
    return _png(similarity_figure(histogram, threshold, record_threshold, scale))


def _figure(size: tuple[float, float]) -> Figure:
    """A figure on the Agg canvas. matplotlib is imported here, not with the module: ~27 MB of RSS the driver
    would otherwise hold from its start."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def token_lengths_figure(histograms: dict, max_tokens: int, min_tokens: int = 0, scale: str = "auto") -> Figure:
    """Prompt, response and total token histograms (before/after the length filter, kept), with the
    --max-tokens line (and --min-tokens when set). `histograms` is manifest.json's tokens.histograms."""
    fig = _figure((15, 4.2))
    axes = fig.subplots(1, len(PANELS))
    for ax, (column, title) in zip(axes, PANELS):
        histogram = histograms.get(column) if histograms else None
        if not histogram:
            ax.text(0.5, 0.5, "no rows were tokenized", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        chosen = choose_scale(histogram, scale)
        bins = histogram[chosen]
        edges = np.asarray(bins["edges"], dtype=np.float64)
        if chosen == "log":
            edges[0] = max(edges[0], 0.5)  # the [0, 1) bin, drawn where a log axis can show it
        # On a log y axis, empty bins sit on a baseline just under one row, so a single outlier row
        # (the too_long tail this view is for) still shows as a bar.
        floor = LOG_FLOOR if chosen == "log" else 0
        for view, style in VIEW_STYLE.items():
            ax.stairs(np.maximum(bins[view], floor), edges, baseline=floor, **style)
        for value, name, color in ((max_tokens, "--max-tokens", "#c0392b"), (min_tokens, "--min-tokens", "#7d3c98")):
            if not value:
                continue
            if edges[0] <= value <= edges[-1]:
                ax.axvline(value, color=color, linestyle=":", linewidth=1.6, label=f"{name} {value}")
            else:  # the line would stretch the axis far from every row: say where it is instead
                ax.plot([], [], color=color, linestyle=":", label=f"{name} {value} (off the axis)")
        if chosen == "log":
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(bottom=LOG_FLOOR)
        ax.set_title(f"{title}{' (log scale)' if chosen == 'log' else ''}")
        ax.set_xlabel("tokens")
        ax.set_ylabel("rows")
        ax.legend(fontsize="small")
    return fig


def similarity_figure(histogram, threshold: float, record_threshold: float, scale: str = "auto") -> Figure:
    """Each row's best-neighbour similarity (a SimilarityHistogram), with the threshold line."""
    fig = _figure((9, 4.2))
    ax = fig.subplots()
    edges, counts = histogram.trimmed(include=min(threshold, record_threshold))
    counts_array = np.asarray(counts)
    nonzero = counts_array[counts_array > 0]
    # Exact copies pile up at 1.0; a log axis keeps the bins near the threshold visible beside them.
    log = histogram.rows > 0 and (scale == "log" or (scale == "auto" and nonzero.max() > 20 * np.median(nonzero)))
    floor = LOG_FLOOR if log else 0
    if histogram.rows:
        ax.stairs(np.maximum(counts_array, floor), edges, baseline=floor, fill=True, color="#1f5fa8", alpha=0.8,
                  label=f"rows ({histogram.rows})")
    else:
        ax.text(0.5, 0.5, "no row had a neighbour to compare with", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(threshold, color="#c0392b", linestyle=":", linewidth=1.6, label=f"threshold {threshold}")
    if record_threshold < threshold:
        ax.axvline(record_threshold, color="#7f8c8d", linestyle="--", linewidth=1,
                   label=f"pairs recorded from {record_threshold}")
    ax.set_xlim(edges[0], 1.0)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=LOG_FLOOR)
    ax.set_title("best-neighbour cosine similarity per row")
    ax.set_xlabel("similarity to the most similar other row")
    ax.set_ylabel("rows")
    ax.legend(fontsize="small", loc="upper left")
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
