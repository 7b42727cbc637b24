"""Figures of traces, averages and the R curve, plus a standalone offline HTML export (plotly only).

Plain functions `result -> plotly.graph_objects.Figure`, in the paper's colours (hidden states
purple, MLP green, attention red), used by the CLI's `--html` and by the app. Every figure carries
a short plain-words caption ("what am I looking at") in `figure.layout.meta["caption"]`;
`figure_caption(figure)` returns it. Numbers are sent as plain lists (NaN as None), so the
browser's plotly can read them back (`gd._fullData[0].z`).

Units follow the trace's metric everywhere (colour bars, hover text, captions): a probability is shown
in percent, a log probability and a logit difference as plain numbers; `format_score` is the one way to
write a score in words. A probability is drawn on the kind's sequential scale (white = 0); a logit
difference or log probability, which has no natural zero, on a diverging scale centred on the corrupted
run's score (white = no effect; the kind's colour above it, blue below).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy
import plotly.graph_objects as go
import plotly.io
import plotly.offline

from core.kinds import HEADS, KINDS
from tracer.modes import corruption_words, metric_label, metric_name

KIND_NAMES = {"hidden": "hidden state", "mlp": "MLP", "attn": "attention", HEADS: "single attention heads"}
KIND_COLORSCALES = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds", HEADS: "Oranges"}
KIND_LINE_COLORS = {"hidden": "#6a3d9a", "mlp": "#2e7d32", "attn": "#c62828"}
CLASS_COLORS = {
    "first subject token": "#9e9e9e",
    "middle subject tokens": "#ff9800",
    "last subject token": "#e53935",
    "first token after the subject": "#1e88e5",
    "further tokens": "#8e24aa",
    "last token": "#43a047",
}
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=16)
PREVIEW_OPACITY = 0.45  # unfinished cells show the preview's estimate, faded
# Diverging scales (logit difference, log probability): blue below the corrupted run's score, white at it, the kind's
# colour above (the ends of the kind's sequential scale).
BELOW_COLORS = ("#2166ac", "#92c5de")
KIND_ABOVE_COLORS = {"hidden": ("#9e9ac8", "#3f007d"), "mlp": ("#74c476", "#00441b"), "attn": ("#fb6a4a", "#67000d"),
                     HEADS: ("#fd8d3c", "#7f2704")}
DIVERGING_METRICS = ("logit-diff", "logprob")
# d3 formats of a score and of a change of score, per metric (plotly's hover text and colour bar ticks)
SCORE_FORMATS = {"prob": ".1%", "logprob": ".2f", "logit-diff": "+.2f"}
CHANGE_FORMATS = {"prob": "+.1%", "logprob": "+.2f", "logit-diff": "+.2f"}
TICK_FORMATS = {"prob": ".0%", "logprob": "", "logit-diff": "+"}


def kind_title(kind: str) -> str:
    """'hidden' -> 'Hidden state', 'mlp' -> 'MLP', 'attn' -> 'Attention'."""
    name = KIND_NAMES[kind]
    return name[0].upper() + name[1:]


KIND_CHOICES = [(kind_title(kind), kind) for kind in KINDS]  # (label, value) pairs for checkboxes


# --- units ---------------------------------------------------------------------------------------

def format_score(metric: str, value: float | None, signed: bool = False) -> str:
    """A score in its unit: 0.702 -> '70.2%' (probability), '−0.35' (log probability), '+4.84' (logit difference).

    `signed` writes a change of score (a difference, an indirect effect): '+12.3 points' for probabilities.
    """
    if value is None or not math.isfinite(value):
        return "–"
    if metric == "prob":
        if signed:
            return f"{value * 100:+.1f} points".replace("-", "−")
        if 0 < abs(value) < 0.001:
            return f"{value * 100:.2g}%"
        return f"{value * 100:.1f}%"
    text = f"{value:+.2f}" if signed or metric == "logit-diff" else f"{value:.2f}"
    return text.replace("-", "−")


def unit_words(metric: str) -> str:
    """How a metric's numbers read: for captions and notes."""
    return {
        "prob": "in percent",
        "logprob": "natural log of the probability: 0 = certain, more negative = less likely",
        "logit-diff": "in logits: above 0 = the answer beats the counterfactual answer",
    }.get(metric, "")


def diverging(metric: str) -> bool:
    """Is this metric drawn on a diverging scale centred on the corrupted run's score?"""
    return metric in DIVERGING_METRICS


def kind_colorscale(kind: str, metric: str) -> Any:
    """The colour scale of a heatmap of `kind`: the kind's sequential scale, or a diverging one for `metric`."""
    if not diverging(metric):
        return KIND_COLORSCALES[kind]
    above = KIND_ABOVE_COLORS[kind]
    return [[0.0, BELOW_COLORS[0]], [0.25, BELOW_COLORS[1]], [0.5, "#f7f7f7"], [0.75, above[0]], [1.0, above[1]]]


def color_range(metric: str, values: numpy.ndarray, low: float, high: float, approximate: bool = False) -> dict:
    """zmin/zmax (and zmid) of a heatmap: [low, high] widened to the values for a probability (the values' own range for
    an approximate preview); symmetric around `low` (the corrupted run) for the diverging metrics."""
    finite = values[numpy.isfinite(values)]
    if diverging(metric):
        spread = float(numpy.abs(finite - low).max()) if finite.size else 0.0
        if not approximate:
            spread = max(spread, abs(high - low))
        spread = max(spread, 1e-6)
        return dict(zmin=low - spread, zmax=low + spread, zmid=low)
    if approximate and finite.size:  # estimates on their own range: on the clean run's scale they look blank
        zmin, zmax = float(finite.min()), float(finite.max())
    else:
        zmin = min(float(low), float(finite.min())) if finite.size else float(low)
        zmax = max(float(high), float(finite.max())) if finite.size else float(high)
    return dict(zmin=zmin, zmax=max(zmax, zmin + 1e-9))


def colorbar(label: str, metric: str, low: float | None = None) -> dict:
    """A colour bar titled with the score's formula, ticks in the metric's unit."""
    bar = dict(title=dict(text=label, side="right"), thickness=14, tickformat=TICK_FORMATS.get(metric, ""))
    if low is not None and diverging(metric):
        bar["title"]["text"] = f"{label}<br><sub>white = corrupted run ({format_score(metric, low)})</sub>"
    return bar


def hover_text(metric: str, low: float, row: str, estimate: str = "") -> str:
    """Hover text of a trace heatmap cell: the restored score and the indirect effect, in the metric's unit
    (`customdata[1]` holds the effect)."""
    name = metric_name(metric)
    return (
        f"{row}<br>layer %{{x}}<br>{estimate}restored {name} %{{z:{SCORE_FORMATS[metric]}}}"
        f"<br>{estimate}indirect effect %{{customdata[1]:{CHANGE_FORMATS[metric]}}}"
        f" (corrupted run: {format_score(metric, low)})<extra></extra>"
    )


def add_caption_note(figure: go.Figure, note: str) -> go.Figure:
    """Append a sentence (e.g. the model state the figure was computed on) to the figure's caption."""
    caption = figure_caption(figure)
    meta = dict(figure.layout.meta) if isinstance(figure.layout.meta, dict) else {}
    meta["caption"] = f"{caption} {note}".strip()
    figure.update_layout(meta=meta)
    return figure


# --- captions ----------------------------------------------------------------------------------

def score_words(metric: str = "prob") -> str:
    """What the colour measures, in plain words, with its unit."""
    return {
        "logit-diff": (
            "how far the answer's logit rises above the counterfactual answer's (logit difference, in logits), "
            "white at the corrupted run's value, the kind's colour above it and blue below it"
        ),
        "logprob": (
            "how likely the answer becomes again (log probability: 0 = certain), white at the corrupted run's "
            "value, the kind's colour above it and blue below it"
        ),
    }.get(metric, "how likely the answer becomes again (its probability, in percent)")


def heatmap_caption(
    kind: str, window: int = 10, approximate: bool = False, metric: str = "prob", corruption: str = "the noise"
) -> str:
    """What a trace heatmap of `kind` shows, in plain words (`corruption`: how the subject was corrupted)."""
    what = {
        "hidden": "the model's whole internal state (the residual stream) after one layer",
        "mlp": f"the MLP (feed-forward) outputs of {window} neighbouring layers centred on this one",
        "attn": f"the attention outputs of {window} neighbouring layers centred on this one",
    }[kind]
    corrupted = "blurred with noise" if corruption == "the noise" else corruption
    text = (
        f"Each square is one word of the prompt (row; * marks the subject) at one layer (column). "
        f"The subject was {corrupted} so the model lost the answer; then {what} was copied back from the "
        f"clean run at that word only. The colour is {score_words(metric)}: {_strong(metric)} = this piece "
        f"carries the fact."
    )
    if approximate:
        text += " Approximate preview: a first-order estimate (attribution patching), replaced by exact values."
    return text


def _strong(metric: str) -> str:
    return "deep colour (above the corrupted run)" if diverging(metric) else "dark"


def heads_caption(positions: str = "last", metric: str = "prob", corruption: str = "the noise", approximate: bool = False) -> str:
    """What a heads x layers heatmap shows, in plain words."""
    where = "at the last word only" if positions == "last" else "at every word"
    corrupted = "blurred with noise" if corruption == "the noise" else corruption
    text = (
        f"Each square is one attention head (row) in one layer (column). The subject was {corrupted} so the model "
        f"lost the answer; then that single head's output was copied back from the clean run {where}, in that layer "
        f"only. The colour is {score_words(metric)}: {_strong(metric)} = this head carries the fact to the answer."
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


def difference_caption(kind: str, metric: str = "prob") -> str:
    """What an after-minus-before heatmap shows."""
    unit = "in percentage points" if metric == "prob" else ("in logits" if metric == "logit-diff" else "in log probability")
    return (
        f"The same trace on your edited model minus the original, {KIND_NAMES[kind]} restorations, as the change of "
        f"the restored {metric_name(metric)} ({unit}): red squares bring the answer back more after your edits, "
        f"blue ones less."
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


def plain(matrix: Any) -> list[list[float | None]]:
    """A matrix as nested lists of floats, NaN/inf as None (JSON-safe, readable back in the browser)."""
    return [[float(v) if math.isfinite(v) else None for v in row] for row in numpy.asarray(matrix, dtype=float).tolist()]


def _layout(figure: go.Figure, caption: str, **changes) -> go.Figure:
    figure.update_layout(
        plot_bgcolor="white", paper_bgcolor="white", font=FONT, margin=dict(l=10, r=10, t=38, b=42),
        meta={"caption": caption}, **changes,
    )
    return figure


def _title(text: str, size: int = 18) -> dict:
    return dict(text=text, x=0.02, font=dict(size=size))


def empty_figure(message: str, height: int = 320) -> go.Figure:
    """A blank figure with a centred message."""
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font=dict(size=16, color="#607d8b"), x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(
        height=height, xaxis=dict(visible=False), yaxis=dict(visible=False), margin=dict(l=10, r=10, t=20, b=10),
        plot_bgcolor="white", paper_bgcolor="white", font=FONT,
    )
    return figure


def _heatmap_height(rows: int) -> int:
    return max(280, 80 + 22 * rows)


# --- trace heatmaps ----------------------------------------------------------------------------

def trace_heatmap(result, kind: str, preview=None) -> go.Figure:
    """The restored score (the metric) for every (token, layer) cell of one kind; NaN (not computed yet) cells are blank.

    `preview`, the approximate result of the same prompt, fills the cells the exact trace has not
    reached yet, faded and on its own colour range (its estimates are not on the exact scale), so
    the picture is complete from the start and the exact values visibly replace it.
    """
    if kind not in result.scores:
        return empty_figure(f"{kind_title(kind)} was not traced (see Advanced).", height=_heatmap_height(len(result.tokens)))
    scores = numpy.asarray(result.scores[kind], dtype=float)
    labels = token_labels(result.tokens, tuple(result.subject_range))
    window = result.settings.window_for(kind)
    approximate = bool(result.approximate)
    tokens = [[label] * scores.shape[1] for label in labels]
    metric = result.settings.metric
    low = float(result.low)
    figure = go.Figure(
        go.Heatmap(
            z=plain(scores),
            x=list(range(scores.shape[1])),
            y=labels,
            customdata=numpy.dstack([numpy.asarray(tokens, dtype=object), numpy.asarray(plain(scores - result.low), dtype=object)]).tolist(),
            colorscale=kind_colorscale(kind, metric),
            **color_range(metric, scores, low, float(result.high), approximate),
            xgap=1,
            ygap=1,
            colorbar=colorbar(result_label(result), metric, low),
            hovertemplate=hover_text(metric, low, "token %{customdata[0]}", "estimated " if approximate else ""),
        )
    )
    restored = {"hidden": "the hidden state", "mlp": "MLPs", "attn": "attention"}[kind]
    title = f"Preview: restoring {restored}" if approximate else f"Restoring {restored}"
    missing = ~numpy.isfinite(scores)
    if preview is not None and preview is not result and kind in preview.scores and missing.any():
        estimates = numpy.where(missing, numpy.asarray(preview.scores[kind], dtype=float), numpy.nan)
        figure.add_trace(
            go.Heatmap(
                z=plain(estimates), x=list(range(scores.shape[1])), y=labels, colorscale=kind_colorscale(kind, metric),
                **color_range(metric, estimates, float(preview.low), float(preview.high), approximate=True),
                opacity=PREVIEW_OPACITY, showscale=False, xgap=1, ygap=1,
                hovertemplate=f"token %{{y}}<br>layer %{{x}}<br>preview estimate %{{z:{SCORE_FORMATS[metric]}}} "
                              "(exact value coming)<extra></extra>",
            )
        )
        title = f"{kind_title(kind)}: exact {1.0 - float(missing.mean()):.0%}, faded = preview"
    axis = "layer (one restored)" if kind == "hidden" else f"layer (centre of {window} restored)"
    return _layout(
        figure,
        heatmap_caption(kind, window, approximate, metric, corruption_of(result)),
        title=_title(title),
        height=_heatmap_height(len(labels)),
        xaxis=dict(title=axis, dtick=5, showgrid=False, tickfont_size=15),
        yaxis=dict(autorange="reversed", showgrid=False, tickfont_size=16),
    )


def result_label(result) -> str:
    """The score's formula for a result: 'p(Paris)', 'log p(Paris)', 'logit(Paris) − logit(Rome)'."""
    return metric_label(result.settings.metric, result.answer, getattr(result, "contrast", ""))


def corruption_of(result) -> str:
    """How the result's subject was corrupted, in plain words ("the noise" for ROME's noise)."""
    settings = result.settings
    if settings.corruption == "noise":
        return "the noise"
    return corruption_words(settings.corruption, getattr(result, "replacements", []), settings.samples)


def heads_heatmap(result, preview=None) -> go.Figure:
    """Restored score of every (head, layer) cell: heads x layers; NaN cells blank, the preview's estimates faded."""
    if not getattr(result, "head_scores", None):
        return empty_figure("Single heads were not traced (choose heads under What to restore).", height=360)
    scores = numpy.asarray(result.head_scores, dtype=float)
    heads, layers = scores.shape
    labels = [f"head {head}" for head in range(heads)]
    metric, approximate = result.settings.metric, bool(result.approximate)
    low = float(result.low)
    figure = go.Figure(
        go.Heatmap(
            z=plain(scores), x=list(range(layers)), y=labels, customdata=numpy.dstack(
                [numpy.asarray([labels] * layers, dtype=object).T, numpy.asarray(plain(scores - result.low), dtype=object)]
            ).tolist(),
            colorscale=kind_colorscale(HEADS, metric), **color_range(metric, scores, low, float(result.high), approximate),
            xgap=1, ygap=1, colorbar=colorbar(result_label(result), metric, low),
            hovertemplate=hover_text(metric, low, "%{y}", "estimated " if approximate else ""),
        )
    )
    missing = ~numpy.isfinite(scores)
    title = "Preview: restoring single heads" if approximate else "Restoring single attention heads"
    if preview is not None and preview is not result and getattr(preview, "head_scores", None) and missing.any():
        estimates = numpy.where(missing, numpy.asarray(preview.head_scores, dtype=float), numpy.nan)
        figure.add_trace(go.Heatmap(
            z=plain(estimates), x=list(range(layers)), y=labels, colorscale=kind_colorscale(HEADS, metric),
            **color_range(metric, estimates, float(preview.low), float(preview.high), approximate=True),
            opacity=PREVIEW_OPACITY, showscale=False, xgap=1, ygap=1,
            hovertemplate=f"%{{y}}<br>layer %{{x}}<br>preview estimate %{{z:{SCORE_FORMATS[metric]}}} "
                          "(exact value coming)<extra></extra>",
        ))
        title = f"Single heads: exact {1.0 - float(missing.mean()):.0%}, faded = preview"
    where = "last token" if result.settings.head_positions == "last" else "every token"
    return _layout(
        figure,
        heads_caption(result.settings.head_positions, metric, corruption_of(result), approximate),
        title=_title(title),
        height=_heatmap_height(heads),
        xaxis=dict(title=f"layer (one head restored at the {where})", dtick=5, showgrid=False, tickfont_size=15),
        yaxis=dict(autorange="reversed", showgrid=False, tickfont_size=14),
    )


def trace_figures(result) -> dict[str, go.Figure]:
    """{kind: heatmap} for every traced kind (and "heads": the heads x layers heatmap when heads were traced)."""
    figures = {kind: trace_heatmap(result, kind) for kind in result.kinds}
    if getattr(result, "head_scores", None):
        figures[HEADS] = heads_heatmap(result)
    return figures


def difference_heatmap(before, after, kind: str) -> go.Figure:
    """After-edit minus before-edit restored probability, per (token, layer) cell (blue lower, red higher)."""
    if kind not in before.scores or kind not in after.scores:
        return empty_figure(f"{kind_title(kind)} was not traced.")
    difference = numpy.asarray(after.scores[kind], dtype=float) - numpy.asarray(before.scores[kind], dtype=float)
    limit = float(numpy.nanmax(numpy.abs(difference))) if numpy.isfinite(difference).any() else 1.0
    limit = max(limit, 1e-6)
    labels = token_labels(before.tokens, tuple(before.subject_range))
    metric = before.settings.metric
    figure = go.Figure(
        go.Heatmap(
            z=plain(difference), x=list(range(difference.shape[1])), y=labels, colorscale="RdBu", reversescale=True,
            zmid=0.0, zmin=-limit, zmax=limit, xgap=1, ygap=1,
            colorbar=dict(title=dict(text=f"Δ {result_label(before)}", side="right"), thickness=14,
                          tickformat=CHANGE_FORMATS[metric].replace(".1", ".0")),
            hovertemplate=(f"token %{{y}}<br>layer %{{x}}<br>change of the restored {metric_name(metric)} "
                           f"%{{z:{CHANGE_FORMATS[metric]}}}<extra></extra>"),
        )
    )
    return _layout(
        figure,
        difference_caption(kind, metric),
        title=_title(f"{kind_title(kind)}: after − before", size=17),
        height=_heatmap_height(len(labels)),
        xaxis=dict(title="layer", dtick=5, showgrid=False),
        yaxis=dict(autorange="reversed", showgrid=False),
    )


# --- averages ----------------------------------------------------------------------------------

def average_figure(average, kind: str) -> go.Figure:
    """Average indirect effect per layer, one line per token class, with 95% bands."""
    if kind not in average.effects:
        return empty_figure(f"{kind_title(kind)} was not averaged.", height=420)
    figure = go.Figure()
    for name, curve in average.effects[kind].items():
        if not curve.count:
            continue
        mean, lower, upper = average.curve(kind, name)
        layers = list(range(len(mean)))
        color = CLASS_COLORS.get(name, "#555555")
        red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
        figure.add_trace(go.Scatter(
            x=layers + layers[::-1], y=plain([upper])[0] + plain([lower])[0][::-1], fill="toself",
            fillcolor=f"rgba({red},{green},{blue},0.15)", line=dict(width=0), hoverinfo="skip", showlegend=False,
        ))
        figure.add_trace(go.Scatter(
            x=layers, y=plain([mean])[0], mode="lines", name=f"{name} (n={curve.count})", line=dict(color=color, width=2.5),
            hovertemplate=name + "<br>layer %{x}<br>average indirect effect %{y:.4f}<extra></extra>",
        ))
    if average.n_facts:
        title = (
            f"Average effect of {KIND_NAMES[kind]}, {average.n_facts} facts "
            f"(ATE {average.total_effect:.3f} ± {average.total_effect_half_width:.3f})"
        )
    else:
        title = f"Average effect of {KIND_NAMES[kind]}: no fact traced yet"
    return _layout(
        figure,
        average_caption(kind),
        title=_title(title, size=15),
        height=420,
        xaxis=dict(title="layer", dtick=5),
        yaxis=dict(title=f"average indirect effect on {metric_label(average.settings.metric, 'answer', 'a′')}"),
        legend=dict(orientation="h", y=-0.22),
    )


# --- the R recommendation ----------------------------------------------------------------------

def range_label(first: int, last: int) -> str:
    """'2-6', or '4' for a single layer."""
    return f"{first}-{last}" if last > first else f"{first}"


def recommendation_figure(recommendation, chosen: tuple[int, int] | None = None) -> go.Figure:
    """The MLP effect curve at the last subject token, its interval, the recommended window and flagged layers.

    `chosen` (first, last) outlines the user's own R when it differs from the recommendation.
    """
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
        annotation_text=f"R = {range_label(first, last)}", annotation_position="top left",
    )
    if chosen is not None and tuple(chosen) != (first, last):
        low, high = chosen
        figure.add_vrect(
            x0=low - 0.5, x1=high + 0.5, fillcolor="rgba(255,193,7,0.18)", line=dict(color="#ff8f00", width=2),
            annotation_text=f"your R = {range_label(low, high)}", annotation_position="top right", annotation_font_size=15,
        )
    for layer in recommendation.flagged_layers:
        figure.add_vline(x=layer, line=dict(color="#ef6c00", dash="dot"), annotation_text=f"layer {layer}: outlier keys",
                         annotation_position="bottom right", annotation_font_size=11)
    return _layout(
        figure,
        recommendation_caption(),
        title=_title(f"Recommended R: layers {range_label(first, last)} (width {recommendation.width})"),
        height=400,
        xaxis=dict(title="layer", dtick=2),
        yaxis=dict(title=f"indirect effect on {metric_label(getattr(recommendation, 'metric', 'prob'), 'answer', 'a′')}"),
        legend=dict(orientation="h", y=-0.22),
    )


# --- standalone HTML ---------------------------------------------------------------------------

def figures_html(title: str, intro_html: str, figures: list[go.Figure]) -> str:
    """One offline HTML page (plotly.js embedded): a title, an introduction, and each figure with its caption."""
    parts = [
        f"<figure>{plotly.io.to_html(figure, full_html=False, include_plotlyjs=False)}"
        f"<figcaption>{html.escape(figure_caption(figure))}</figcaption></figure>"
        for figure in figures
    ]
    style = "body{font-family:Inter,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;color:#222}figcaption{color:#555;margin:0 0 2em}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>{intro_html}{''.join(parts)}</body></html>"
    )


def trace_html(result, recommendation=None) -> str:
    """One offline HTML page: the trace's facts, its heatmaps and their captions (and the R curve when given)."""
    figures = list(trace_figures(result).values())
    if recommendation is not None:
        figures.append(recommendation_figure(recommendation))
    begin, end = result.subject_range
    settings = result.settings
    label = html.escape(result_label(result))
    if settings.corruption == "noise":
        corruption = (f"{settings.samples} noise samples, noise level {result.noise_level:.4g} "
                      f"({html.escape(str(settings.noise))}, {settings.noise_type})")
    else:
        corruption = f"the subject {html.escape(corruption_of(result))}"
    if settings.corruption == "resample" and result.replacements:
        corruption += f" ({html.escape(', '.join(result.replacements))})"
    if getattr(result, "corruption_note", ""):
        corruption += f" ({html.escape(result.corruption_note)})"
    metric = settings.metric
    facts = (
        f"<p>Prompt <b>{html.escape(result.prompt)}</b>, subject <b>{html.escape(result.subject)}</b> "
        f"(tokens {begin}-{end - 1}), answer <b>{html.escape(result.answer)}</b>.</p>"
        f"<p>Clean {label} = {format_score(metric, result.high)}; with the subject corrupted = "
        f"{format_score(metric, result.low)} (total effect {format_score(metric, result.total_effect, signed=True)}; "
        f"{html.escape(metric_name(metric))}, {html.escape(unit_words(metric))}). {corruption}, "
        f"window {settings.window}, seed {settings.seed}, model {html.escape(result.model)}"
        f"{', approximate preview' if result.approximate else ''}.</p>"
    )
    return figures_html("Causal trace", facts, figures)
