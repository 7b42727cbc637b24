"""Plotly figures of traces, averages and the R recommendation, plus a standalone offline HTML export.

Plain functions `result -> plotly.graph_objects.Figure`, in the paper's colors (hidden states
purple, MLP green, attention red). Every figure carries a short plain-words caption ("what am I
looking at") in `figure.layout.meta["caption"]`; `figure_caption(figure)` returns it, and the
`*_caption` functions give the same text without building a figure.
"""

from __future__ import annotations

import html
import math

import numpy
import plotly.graph_objects as go
import plotly.io
import plotly.offline

KIND_NAMES = {"hidden": "hidden state", "mlp": "MLP", "attn": "attention"}
KIND_COLORSCALES = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
KIND_LINE_COLORS = {"hidden": "#6a3d9a", "mlp": "#2e7d32", "attn": "#c62828"}
CLASS_COLORS = {
    "first subject token": "#9e9e9e",
    "middle subject tokens": "#ff9800",
    "last subject token": "#e53935",
    "first token after the subject": "#1e88e5",
    "further tokens": "#8e24aa",
    "last token": "#43a047",
}
FONT = dict(family="Helvetica, Arial, sans-serif", size=14)


# --- captions ----------------------------------------------------------------------------------

def heatmap_caption(kind: str, window: int = 10, approximate: bool = False) -> str:
    """What a trace heatmap of `kind` shows, in plain words."""
    what = {
        "hidden": "the model's whole internal state (the residual stream) after one layer",
        "mlp": f"the MLP (feed-forward) outputs of {window} neighbouring layers centred on this one",
        "attn": f"the attention outputs of {window} neighbouring layers centred on this one",
    }[kind]
    text = (
        f"Each square is one word of the prompt (row; * marks the subject) at one layer (column). "
        f"The subject was blurred with noise so the model lost the answer; then {what} was copied back from the "
        f"clean run at that word only. The colour is how likely the answer becomes again: dark = this piece "
        f"carries the fact."
    )
    if approximate:
        text += " Approximate preview: a first-order estimate (attribution patching), replaced by exact values."
    return text


def average_caption(kind: str) -> str:
    """What an average-effect line plot shows."""
    return (
        f"Average over many facts the model knows: for each kind of word, how much restoring the {KIND_NAMES[kind]} "
        f"at each layer brings the answer back (average indirect effect). Bands are 95% intervals."
    )


def recommendation_caption() -> str:
    """What the R curve shows."""
    return (
        "How much restoring the MLPs around each layer at the last subject word brings the answer back. "
        "The shaded window is the range R of adjacent layers with the largest total: MEMIT edits there."
    )


def figure_caption(figure: go.Figure) -> str:
    """The plain-words caption stored on a figure made here ("" for other figures)."""
    meta = figure.layout.meta
    return meta.get("caption", "") if isinstance(meta, dict) else ""


# --- helpers -----------------------------------------------------------------------------------

def token_labels(tokens: list[str], subject_range: tuple[int, int]) -> list[str]:
    """Y labels: visible tokens, subject tokens marked with '*' as in the paper, made unique for plotly."""
    begin, end = subject_range
    labels: list[str] = []
    for index, token in enumerate(tokens):
        text = token.replace("\n", "⏎").strip() or "␣"
        text = f"{text}*" if begin <= index < end else text
        while text in labels:
            text += "\u200b"
        labels.append(text)
    return labels


def _plain(matrix: numpy.ndarray) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in numpy.asarray(matrix, dtype=float).tolist()]


def _layout(figure: go.Figure, caption: str, **changes) -> go.Figure:
    figure.update_layout(
        plot_bgcolor="white", paper_bgcolor="white", font=FONT, margin=dict(l=10, r=10, t=56, b=50),
        meta={"caption": caption}, **changes,
    )
    return figure


# --- trace heatmaps ----------------------------------------------------------------------------

def trace_heatmap(result, kind: str) -> go.Figure:
    """Restored p(answer) for every (token, layer) cell of one kind; NaN (not computed yet) cells are blank."""
    scores = numpy.asarray(result.scores[kind], dtype=float)
    labels = token_labels(result.tokens, tuple(result.subject_range))
    window = result.settings.window_for(kind)
    approximate = bool(result.approximate)
    effects = scores - result.low
    tokens = [[label] * scores.shape[1] for label in labels]
    finite = scores[numpy.isfinite(scores)]
    zmin = min(float(result.low), float(finite.min())) if finite.size else float(result.low)
    zmax = max(float(result.high), float(finite.max())) if finite.size else float(result.high)
    estimate = "estimated " if approximate else ""
    figure = go.Figure(
        go.Heatmap(
            z=_plain(scores),
            x=list(range(scores.shape[1])),
            y=labels,
            customdata=numpy.dstack([numpy.asarray(tokens, dtype=object), numpy.asarray(_plain(effects), dtype=object)]).tolist(),
            colorscale=KIND_COLORSCALES[kind],
            zmin=zmin,
            zmax=max(zmax, zmin + 1e-9),
            xgap=1,
            ygap=1,
            colorbar=dict(title=dict(text=f"p({result.answer.strip() or result.answer})", side="right"), thickness=14),
            hovertemplate=(
                "token %{customdata[0]}<br>layer %{x}<br>" + estimate + "restored probability %{z:.4f}"
                "<br>" + estimate + "indirect effect %{customdata[1]:+.4f}<extra></extra>"
            ),
        )
    )
    restored = "state" if kind == "hidden" else ("MLP" if kind == "mlp" else "Attn")
    title = f"Impact of restoring {restored} after corrupted input"
    if approximate:
        title = "Approximate preview · " + title
    axis = "single restored layer" if kind == "hidden" else f"center of interval of {window} restored {restored} layers"
    return _layout(
        figure,
        heatmap_caption(kind, window, approximate),
        title=dict(text=title, x=0.02, font=dict(size=16)),
        height=max(300, 110 + 26 * len(labels)),
        xaxis=dict(title=f"{axis} within {result.model}", dtick=5, showgrid=False),
        yaxis=dict(autorange="reversed", showgrid=False),
    )


def trace_figures(result) -> dict[str, go.Figure]:
    """{kind: heatmap} for every traced kind."""
    return {kind: trace_heatmap(result, kind) for kind in result.kinds}


# --- averages ----------------------------------------------------------------------------------

def average_figure(average, kind: str) -> go.Figure:
    """Average indirect effect per layer, one line per token class, with 95% bands."""
    figure = go.Figure()
    for name, curve in average.effects[kind].items():
        if not curve.count:
            continue
        mean, lower, upper = average.curve(kind, name)
        layers = list(range(len(mean)))
        color = CLASS_COLORS.get(name, "#555555")
        red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
        figure.add_trace(go.Scatter(
            x=layers + layers[::-1], y=_plain([upper])[0] + _plain([lower])[0][::-1], fill="toself",
            fillcolor=f"rgba({red},{green},{blue},0.15)", line=dict(width=0), hoverinfo="skip", showlegend=False,
        ))
        figure.add_trace(go.Scatter(
            x=layers, y=_plain([mean])[0], mode="lines", name=f"{name} (n={curve.count})", line=dict(color=color, width=2.5),
            hovertemplate=name + "<br>layer %{x}<br>average indirect effect %{y:.4f}<extra></extra>",
        ))
    if average.n_facts:
        title = (
            f"Average indirect effect of {KIND_NAMES[kind]} over {average.n_facts} facts "
            f"(ATE {average.total_effect:.3f} ± {average.total_effect_half_width:.3f})"
        )
    else:
        title = f"Average indirect effect of {KIND_NAMES[kind]}: no fact traced yet"
    return _layout(
        figure,
        average_caption(kind),
        title=dict(text=title, x=0.02, font=dict(size=15)),
        height=420,
        xaxis=dict(title="layer", dtick=5),
        yaxis=dict(title="average indirect effect on p(answer)"),
        legend=dict(orientation="h", y=-0.22),
    )


# --- the R recommendation ----------------------------------------------------------------------

def recommendation_figure(recommendation) -> go.Figure:
    """The MLP effect curve at the last subject token, its interval, the chosen window and flagged layers."""
    curve = recommendation.curve
    layers = list(range(len(curve)))
    figure = go.Figure()
    if recommendation.lower is not None and recommendation.upper is not None:
        figure.add_trace(go.Scatter(
            x=layers + layers[::-1], y=list(recommendation.upper) + list(recommendation.lower)[::-1], fill="toself",
            fillcolor="rgba(46,125,50,0.15)", line=dict(width=0), hoverinfo="skip", name="95% interval",
        ))
    figure.add_trace(go.Scatter(
        x=layers, y=curve, mode="lines+markers", line=dict(color=KIND_LINE_COLORS["mlp"], width=3),
        name="MLP effect at the last subject token", hovertemplate="layer %{x}<br>effect %{y:.4f}<extra></extra>",
    ))
    first, last = recommendation.layers[0], recommendation.layers[-1]
    figure.add_vrect(
        x0=first - 0.5, x1=last + 0.5, fillcolor="rgba(103,58,183,0.18)", line_width=0,
        annotation_text=f"R = {first}-{last}" if last > first else f"R = {first}", annotation_position="top left",
    )
    for layer in recommendation.flagged_layers:
        figure.add_vline(x=layer, line=dict(color="#ef6c00", dash="dot"), annotation_text=f"layer {layer}: outlier keys",
                         annotation_position="bottom right", annotation_font_size=11)
    return _layout(
        figure,
        recommendation_caption(),
        title=dict(text=f"Recommended R: layers {first}-{last} (width {recommendation.width})", x=0.02, font=dict(size=16)),
        height=400,
        xaxis=dict(title="layer", dtick=2),
        yaxis=dict(title="indirect effect on p(answer)"),
        legend=dict(orientation="h", y=-0.22),
    )


# --- standalone HTML ---------------------------------------------------------------------------

def trace_html(result, recommendation=None) -> str:
    """One offline HTML page: the trace's facts, its heatmaps (plotly.js embedded) and their captions."""
    parts = []
    figures = list(trace_figures(result).values())
    if recommendation is not None:
        figures.append(recommendation_figure(recommendation))
    for figure in figures:
        parts.append(
            f"<figure>{plotly.io.to_html(figure, full_html=False, include_plotlyjs=False)}"
            f"<figcaption>{html.escape(figure_caption(figure))}</figcaption></figure>"
        )
    begin, end = result.subject_range
    facts = (
        f"<p>Prompt <b>{html.escape(result.prompt)}</b>, subject <b>{html.escape(result.subject)}</b> "
        f"(tokens {begin}-{end - 1}), answer <b>{html.escape(result.answer)}</b>.</p>"
        f"<p>Clean p(answer) = {result.high:.4f}; with the subject corrupted = {result.low:.4f} "
        f"(total effect {result.total_effect:.4f}). {result.settings.samples} noise samples, noise level "
        f"{result.noise_level:.4g} ({html.escape(str(result.settings.noise))}, {result.settings.noise_type}), "
        f"window {result.settings.window}, seed {result.settings.seed}, model {html.escape(result.model)}"
        f"{', approximate preview' if result.approximate else ''}.</p>"
    )
    style = "body{font-family:Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;color:#222}figcaption{color:#555;margin:0 0 2em}"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Locus causal trace</title>"
        f"<style>{style}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"
        f"<h1>Causal trace</h1>{facts}{''.join(parts)}</body></html>"
    )


standalone_html = trace_html
