"""Figures the app shows (plotly only, plain functions result -> Figure).

The trace heatmaps, average plots, R curve and HTML export come from the tracer's
`ui/trace_figures.py` where it offers them; this module adds what only the live app needs:
the streaming overlay (exact cells over a faded preview), the before/after difference and the
layer-range shading of the Choose R tab. Numbers are sent as plain lists, so the browser's plotly
can read them back (`gd._fullData[0].z`).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy
import plotly.graph_objects as go

KIND_TITLES = {"hidden": "Hidden state", "mlp": "MLP", "attn": "Attention"}
KIND_COLORS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
KIND_LINE_COLORS = {"hidden": "#6a3d9a", "mlp": "#2e7d32", "attn": "#c62828"}
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=15)
PREVIEW_FADE = "rgba(255,255,255,0.6)"


def empty_figure(message: str, height: int = 320) -> go.Figure:
    """A blank figure with a centred message."""
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font=dict(size=16, color="#607d8b"), x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(
        height=height, xaxis=dict(visible=False), yaxis=dict(visible=False), margin=dict(l=10, r=10, t=20, b=10),
        plot_bgcolor="white", paper_bgcolor="white", font=FONT,
    )
    return figure


def token_labels(tokens: list[str], subject_range: tuple[int, int]) -> list[str]:
    """Y-axis labels: visible tokens, the subject's marked with '*' as in the paper, made unique."""
    begin, end = subject_range
    labels = []
    for index, token in enumerate(tokens):
        text = token.replace("\n", "⏎").strip() or "␣"
        text = f"{text}*" if begin <= index < end else text
        labels.append(text + "\u200b" * labels.count(text) if text in labels else text)
    return labels


def _matrix(result: Any, kind: str) -> numpy.ndarray:
    return numpy.asarray(result.scores[kind], dtype=float)


def _plain(matrix: numpy.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in matrix.tolist()]


def trace_heatmap(result: Any, kind: str, preview: Any = None, height: int | None = None) -> go.Figure:
    """Restored probability of the answer for every (token, layer) cell of one kind.

    While the exact trace streams in, `preview` (an approximate result of the same prompt) fills
    the cells not computed yet, under a white veil, so the picture is complete from the start.
    """
    if kind not in result.scores:
        return empty_figure(f"{KIND_TITLES[kind]} was not traced (see Advanced).")
    exact = _matrix(result, kind)
    missing = ~numpy.isfinite(exact)
    shown = exact.copy()
    approximate = bool(getattr(result, "approximate", False))
    if preview is not None and kind in preview.scores and missing.any():
        shown[missing] = _matrix(preview, kind)[missing]
    labels = token_labels(result.tokens, tuple(result.subject_range))
    layers = list(range(shown.shape[1]))
    effect = shown - result.low
    hover = numpy.where(
        missing if preview is not None else numpy.zeros_like(missing),
        "approximate (preview)",
        "approximate (preview)" if approximate else "exact",
    )
    finite = shown[numpy.isfinite(shown)]
    zmin = min(float(result.low), float(finite.min())) if finite.size else 0.0
    zmax = max(float(finite.max()), zmin + 1e-6) if finite.size else 1.0
    figure = go.Figure(
        go.Heatmap(
            z=_plain(shown),
            x=layers,
            y=labels,
            colorscale=KIND_COLORS[kind],
            zmin=zmin,
            zmax=zmax,
            customdata=numpy.dstack([_nan_to_none(effect), hover]).tolist(),
            hovertemplate=(
                "token %{y}<br>layer %{x}<br>restored p(answer) = %{z:.3f}"
                "<br>indirect effect = %{customdata[0]:.3f}<br>%{customdata[1]}<extra></extra>"
            ),
            colorbar=dict(title=dict(text="p(answer)", side="right"), thickness=14),
            xgap=1,
            ygap=1,
        )
    )
    if preview is not None and missing.any():
        veil = numpy.where(missing, 1.0, numpy.nan)
        figure.add_trace(
            go.Heatmap(
                z=_plain(veil), x=layers, y=labels, colorscale=[[0, PREVIEW_FADE], [1, PREVIEW_FADE]],
                showscale=False, hoverinfo="skip", xgap=1, ygap=1,
            )
        )
    window = result.settings.window_for(kind) if hasattr(result.settings, "window_for") else 1
    title = f"{KIND_TITLES[kind]}" + (f" (window {window})" if kind != "hidden" else "")
    if approximate:
        title += " · approximate"
    figure.update_layout(
        title=dict(text=title, x=0.02, font=dict(size=17)),
        height=height or max(300, 90 + 26 * len(labels)),
        margin=dict(l=10, r=10, t=44, b=44),
        xaxis=dict(title="layer", dtick=5, showgrid=False),
        yaxis=dict(autorange="reversed", showgrid=False, tickfont=dict(size=14)),
        plot_bgcolor="white",
        paper_bgcolor="white",
        font=FONT,
    )
    return figure


def _nan_to_none(matrix: numpy.ndarray) -> numpy.ndarray:
    values = matrix.astype(object)
    values[~numpy.isfinite(matrix.astype(float))] = None
    return values


def standalone_html(result: Any) -> str:
    """One offline HTML file with the three heatmaps (plotly.js inlined) and the trace's facts."""
    try:  # the tracer's export, when it offers one
        from ui.trace_figures import standalone_html as tracer_html  # type: ignore[attr-defined]

        return tracer_html(result)
    except ImportError:
        pass
    import plotly.io

    parts = []
    for index, kind in enumerate(result.kinds):
        parts.append(
            plotly.io.to_html(trace_heatmap(result, kind), full_html=False, include_plotlyjs="inline" if index == 0 else False)
        )
    head = (
        f"<h1>Causal trace: {html.escape(result.prompt)}</h1><p>Subject <b>{html.escape(result.subject)}</b>, "
        f"answer <b>{html.escape(result.answer)}</b>, clean p = {result.high:.4f}, corrupted p = {result.low:.4f}, "
        f"model {html.escape(result.model)}.</p>"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Locus trace</title></head><body>{head}{''.join(parts)}</body></html>"


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
    """The MLP effect curve at the last subject token with its interval, and the chosen R shaded."""
    curve = [float(v) for v in recommendation.curve]
    layers = list(range(len(curve)))
    figure = go.Figure()
    interval = getattr(recommendation, "interval", None)
    if interval is not None:
        low, high = [float(v) for v in interval[0]], [float(v) for v in interval[1]]
        figure.add_trace(go.Scatter(x=layers + layers[::-1], y=high + low[::-1], fill="toself", fillcolor="rgba(46,125,50,0.15)",
                                    line=dict(width=0), hoverinfo="skip", name="95% interval"))
    figure.add_trace(go.Scatter(x=layers, y=curve, mode="lines+markers", line=dict(color=KIND_LINE_COLORS["mlp"], width=3),
                                name="MLP effect at last subject token",
                                hovertemplate="layer %{x}<br>effect %{y:.3f}<extra></extra>"))
    figure.add_vrect(x0=first - 0.5, x1=last + 0.5, fillcolor="rgba(103,58,183,0.18)", line_width=0,
                     annotation_text=f"R = {first}–{last}" if last > first else f"R = {first}",
                     annotation_position="top left", annotation_font_size=15)
    recommended = list(getattr(recommendation, "layers", []) or [])
    if recommended and (min(recommended), max(recommended)) != (first, last):
        figure.add_vrect(x0=min(recommended) - 0.5, x1=max(recommended) + 0.5, line=dict(color="#673ab7", dash="dot", width=2),
                         fillcolor="rgba(0,0,0,0)", annotation_text="recommended", annotation_position="bottom right")
    figure.update_layout(
        height=380, margin=dict(l=10, r=10, t=30, b=44), plot_bgcolor="white", paper_bgcolor="white", font=FONT,
        xaxis=dict(title="layer", dtick=2), yaxis=dict(title="indirect effect on p(answer)"),
        legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
    )
    return figure


def difference_heatmap(before: Any, after: Any, kind: str) -> go.Figure:
    """After-edit minus before-edit restored probability, per (token, layer) cell (blue lower, red higher)."""
    if kind not in before.scores or kind not in after.scores:
        return empty_figure(f"{KIND_TITLES[kind]} was not traced.")
    difference = _matrix(after, kind) - _matrix(before, kind)
    limit = float(numpy.nanmax(numpy.abs(difference))) if numpy.isfinite(difference).any() else 1.0
    limit = max(limit, 1e-6)
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
