"""Figures the app shows (plotly only, plain functions result -> Figure).

The trace heatmaps, average plots, R curve and HTML export are the tracer's
(`ui/trace_figures.py`); this module adds what only the live app needs: the streaming overlay
(exact cells over a faded preview), the user's own R over the recommendation, the optimisation
loss of an edit and the after-minus-before difference of a re-trace. Numbers are sent as plain lists, so the browser's plotly
can read them back (`gd._fullData[0].z`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy
import plotly.graph_objects as go

KIND_TITLES = {"hidden": "Hidden state", "mlp": "MLP", "attn": "Attention"}
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=15)
PREVIEW_FADE = "rgba(255,255,255,0.45)"


def empty_figure(message: str, height: int = 320) -> go.Figure:
    """A blank figure with a centred message."""
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font=dict(size=16, color="#607d8b"), x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(
        height=height, xaxis=dict(visible=False), yaxis=dict(visible=False), margin=dict(l=10, r=10, t=20, b=10),
        plot_bgcolor="white", paper_bgcolor="white", font=FONT,
    )
    return figure


def _matrix(result: Any, kind: str) -> numpy.ndarray:
    return numpy.asarray(result.scores[kind], dtype=float)


def _plain(matrix: numpy.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in matrix.tolist()]


def trace_heatmap(result: Any, kind: str, preview: Any = None) -> go.Figure:
    """The tracer's heatmap of one kind; while the exact trace streams in, unfinished cells show the preview, veiled.

    `preview` is the approximate result of the same prompt: where an exact cell is not computed yet
    (NaN), its estimate is drawn under a white veil, so the picture is complete from the start and
    the exact values visibly replace it.
    """
    if kind not in result.scores:
        return empty_figure(f"{KIND_TITLES[kind]} was not traced (see Advanced).")
    exact = _matrix(result, kind)
    missing = ~numpy.isfinite(exact)
    if preview is None or kind not in preview.scores or not missing.any() or preview is result:
        return _readable(tracer_heatmap(result, kind), result, kind)
    merged = copy.copy(result)
    filled = exact.copy()
    filled[missing] = _matrix(preview, kind)[missing]
    merged.scores = {**result.scores, kind: filled.tolist()}
    figure = _readable(tracer_heatmap(merged, kind), result, kind)
    veil = numpy.where(missing, 1.0, numpy.nan)
    figure.add_trace(
        go.Heatmap(
            z=_plain(veil), x=list(range(exact.shape[1])), y=list(figure.data[0].y), colorscale=[[0, PREVIEW_FADE], [1, PREVIEW_FADE]],
            showscale=False, hoverinfo="skip", xgap=1, ygap=1,
        )
    )
    done = 1.0 - float(missing.mean())
    figure.update_layout(title=dict(text=f"{KIND_TITLES[kind]}: exact {done:.0%} (faded cells: preview estimate)"))
    return figure


def tracer_heatmap(result: Any, kind: str) -> go.Figure:
    from ui.trace_figures import trace_heatmap

    return trace_heatmap(result, kind)


def _readable(figure: go.Figure, result: Any, kind: str) -> go.Figure:
    """Short axis title and larger ticks: three heatmaps sit side by side on a projected page."""
    window = result.settings.window_for(kind)
    axis = "layer" if kind == "hidden" else f"layer (centre of {window} restored)"
    figure.update_layout(xaxis_title_text=axis, yaxis_tickfont_size=15, xaxis_tickfont_size=13)
    return figure


def standalone_html(result: Any, recommendation: Any = None) -> str:
    """One offline HTML file with the trace's heatmaps (the tracer's export)."""
    from ui.trace_figures import trace_html

    return trace_html(result, recommendation)


def average_figure(average: Any, kind: str) -> go.Figure:
    """Average indirect effect by token class with 95% bands (the tracer's figure)."""
    from ui.trace_figures import average_figure as tracer_average_figure

    if kind not in average.effects:
        return empty_figure(f"{KIND_TITLES[kind]} was not averaged.")
    return tracer_average_figure(average, kind)


def loss_figure(curves: dict[str, list[float]]) -> go.Figure:
    """The optimisation loss of each request's target vector, step by step."""
    if not curves:
        return empty_figure("No loss trajectory in this batch.", height=300)
    figure = go.Figure()
    for label, losses in curves.items():
        figure.add_trace(go.Scatter(x=list(range(len(losses))), y=losses, mode="lines+markers", name=label))
    figure.update_layout(
        title=dict(text="How fast each new fact was learned (loss per step)", x=0.02, font=dict(size=16)),
        xaxis=dict(title="optimisation step"),
        yaxis=dict(title="loss", rangemode="tozero"),
        height=320, margin=dict(l=10, r=10, t=44, b=44), plot_bgcolor="white", paper_bgcolor="white", font=FONT,
        legend=dict(orientation="h", y=-0.25),
    )
    return figure


def range_figure(recommendation: Any, first: int, last: int) -> go.Figure:
    """The tracer's R curve (recommended window shaded) with the user's chosen R outlined when it differs."""
    from ui.trace_figures import recommendation_figure

    figure = recommendation_figure(recommendation)
    recommended = list(recommendation.layers)
    if (first, last) != (min(recommended), max(recommended)):
        figure.add_vrect(
            x0=first - 0.5, x1=last + 0.5, fillcolor="rgba(255,193,7,0.18)", line=dict(color="#ff8f00", width=2),
            annotation_text=f"your R = {first}-{last}" if last > first else f"your R = {first}",
            annotation_position="top right", annotation_font_size=15,
        )
    return figure


def difference_heatmap(before: Any, after: Any, kind: str) -> go.Figure:
    """After-edit minus before-edit restored probability, per (token, layer) cell (blue lower, red higher)."""
    if kind not in before.scores or kind not in after.scores:
        return empty_figure(f"{KIND_TITLES[kind]} was not traced.")
    difference = _matrix(after, kind) - _matrix(before, kind)
    limit = float(numpy.nanmax(numpy.abs(difference))) if numpy.isfinite(difference).any() else 1.0
    limit = max(limit, 1e-6)
    from ui.trace_figures import token_labels

    labels = token_labels(before.tokens, tuple(before.subject_range))
    figure = go.Figure(
        go.Heatmap(
            z=_plain(difference), x=list(range(difference.shape[1])), y=labels, colorscale="RdBu", reversescale=True,
            zmid=0.0, zmin=-limit, zmax=limit, xgap=1, ygap=1,
            colorbar=dict(title=dict(text="Δ p(answer)", side="right"), thickness=14),
            hovertemplate="token %{y}<br>layer %{x}<br>change %{z:+.3f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=dict(text=f"{KIND_TITLES[kind]}: after − before", x=0.02, font=dict(size=17)),
        height=max(300, 90 + 26 * len(labels)), margin=dict(l=10, r=10, t=44, b=44),
        xaxis=dict(title="layer", dtick=5, showgrid=False), yaxis=dict(autorange="reversed", showgrid=False),
        plot_bgcolor="white", paper_bgcolor="white", font=FONT,
    )
    return figure
