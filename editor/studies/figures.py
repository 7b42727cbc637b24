"""Figures of edits (plotly only, in the style of `tracer.figures`): how each new fact was learned, and the
curves of a sequential (lifelong) editing run, and edit scores per layer range R."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from editor.methods.registry import method_classes
from tracer.figures import FONT, empty_figure, figures_html

LOSS_CAPTION = (
    "Each line is one requested edit: the loss of its new object at each optimisation step of the target "
    "vector (lower = the model already says the new object at the edited layer's output)."
)


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
        legend=dict(orientation="h", y=-0.25), meta={"caption": LOSS_CAPTION},
    )
    return figure


# --- sequential editing ---------------------------------------------------------------------------

METRIC_COLORS = {"ES": "#1e88e5", "PS": "#8e24aa", "NS": "#43a047"}
GENERATED_COLOR = "#90caf9"  # ES by generation: a lighter ES
RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # one per run, up to six apart
RUN_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star")
SEQUENTIAL_CAPTIONS = {
    "scores": (
        "After each batch, over every fact edited so far: ES = share of edited prompts where the new answer now beats "
        "the old one, PS = the same for reworded prompts, NS = share of prompts about other subjects that still give "
        "their own answer. Flat lines near the top mean earlier edits survive the later ones. ES-gen (light blue) is the "
        "stricter reading of ES: share of edited prompts from which the model, writing on its own, starts with the new "
        "answer; a gap below ES means the new answer wins on probability but is not what the model says."
    ),
    "perplexity": (
        "How surprised the edited model is by ordinary Wikipedia text it never saw while editing, as a multiple of "
        "the unedited model (1 = unchanged). Above the dotted line at 1.1 the edits are changing the model's "
        "language; above 2 the model counts as broken and the run stops."
    ),
    "retention": (
        "Share of 100 facts the unedited model knew, none of them edited, that the edited model still answers "
        "with the right first word."
    ),
    "norms": (
        "Size of each edited weight matrix relative to the original (1 = unchanged). A steady climb is the usual "
        "sign that sequential edits are piling up towards a collapse."
    ),
}


def _run_label(run: dict) -> str:
    settings = run.get("settings", {})
    label = str(settings.get("label") or settings.get("method", "run"))
    for name, shown in [*((cls.name, cls.title) for cls in method_classes()), ("mpes", "MPES")]:
        label = label.replace(name, shown)
    return label


def _sequential_layout(figure: go.Figure, title: str, caption: str, x_title: str, y_title: str, **axis) -> go.Figure:
    figure.update_layout(
        title=dict(text=title, x=0.02, font=dict(size=16)),
        xaxis=dict(title=x_title, rangemode="tozero"),
        yaxis=dict(title=y_title, **axis),
        height=360, margin=dict(l=10, r=10, t=56, b=50), plot_bgcolor="white", paper_bgcolor="white", font=FONT,
        legend=dict(orientation="h", y=-0.22), meta={"caption": caption},
    )
    return figure


def _curve(run: dict, value) -> tuple[list[int], list[float | None]]:
    """Edits so far (0 = unedited) and `value(row)` for the unedited model and each batch."""
    rows = [run["unedited"]] + list(run.get("batches", []))
    return [row.get("edits", 0) for row in rows], [value(row) for row in rows]


def sequential_figures(runs: list[dict]) -> list[go.Figure]:
    """Curves of one or more sequential runs (their JSON form): scores, perplexity, retention, matrix norms."""
    if not runs or not any(run.get("batches") for run in runs):
        return [empty_figure("No batch finished yet.", height=300)]
    scores, perplexity, retention, norms = go.Figure(), go.Figure(), go.Figure(), go.Figure()
    for number, run in enumerate(runs):
        label, dash = _run_label(run), RUN_DASHES[number % len(RUN_DASHES)]
        marker = dict(symbol=RUN_SYMBOLS[number % len(RUN_SYMBOLS)])
        for metric, color in METRIC_COLORS.items():
            x, y = _curve(run, lambda row, metric=metric: row.get(metric))
            scores.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{metric} ({label})", line=dict(color=color, dash=dash), marker=marker))
        x, y = _curve(run, lambda row: row.get("ES_gen"))
        if any(value is not None for value in y):  # runs of older versions have none
            scores.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"ES-gen ({label})", connectgaps=False,
                                        line=dict(color=GENERATED_COLOR, dash=dash), marker=dict(marker, color=GENERATED_COLOR)))
        x, y = _curve(run, lambda row: row.get("perplexity_ratio", 1.0))
        perplexity.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, line=dict(color="#c62828", dash=dash), marker=marker))
        x, y = _curve(run, lambda row: row.get("retention"))
        retention.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, line=dict(color="#6a3d9a", dash=dash), marker=marker))
        for layer in run["batches"][0]["norm_growth"] if run.get("batches") else []:
            x, y = _curve(run, lambda row, layer=layer: row.get("norm_growth", {}).get(layer, 1.0))
            norms.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"layer {layer} ({label})", line=dict(dash=dash), marker=marker))
    perplexity.add_hline(y=1.1, line=dict(color="#9e9e9e", dash="dot"))
    perplexity.add_hline(y=2.0, line=dict(color="#c62828", dash="dot"))
    return [
        _sequential_layout(scores, "Edit success over all edits so far", SEQUENTIAL_CAPTIONS["scores"], "edits so far",
                           "percent", range=[0, 100]),
        _sequential_layout(perplexity, "Perplexity on held-out text (x unedited)", SEQUENTIAL_CAPTIONS["perplexity"],
                           "edits so far", "x unedited", rangemode="tozero"),
        _sequential_layout(retention, "Known facts kept", SEQUENTIAL_CAPTIONS["retention"], "edits so far", "percent",
                           range=[0, 100]),
        _sequential_layout(norms, "Norm of each edited matrix (x original)", SEQUENTIAL_CAPTIONS["norms"], "edits so far",
                           "x original"),
    ]


def sequential_html(runs: list[dict]) -> str:
    """One offline HTML page with the curves of sequential runs and what each run was."""
    items = []
    for run in runs:
        settings, last = run.get("settings", {}), (run.get("batches") or [{}])[-1]
        items.append(
            f"<li><b>{html.escape(_run_label(run))}</b>: {len(run.get('batches', []))} batch(es) of "
            f"{settings.get('batch_size', '?')} on {html.escape(str(settings.get('model', '')))}, layers "
            f"{html.escape(str(settings.get('layers', '')))}; {last.get('edits', 0)} edits in "
            f"{last.get('elapsed_seconds', 0.0) / 60:.0f} min."
            + (f" <i>{html.escape(run['stopped'])}</i>" if run.get("stopped") else "") + "</li>"
        )
    intro = f"<p>Facts edited batch after batch, each batch on top of the earlier ones.</p><ul>{''.join(items)}</ul>"
    return figures_html("Sequential editing", intro, sequential_figures(runs))


# --- R measured by editing ------------------------------------------------------------------------

WINDOWS_CAPTION = (
    "Each point is one range of layers R that the same requests were edited at (x: its layers). The solid lines "
    "are how well the edits worked there (S, and its parts ES, PS, NS, in percent); the dashed green line is what "
    "causal tracing predicted for that range (the MLP effect at the last subject word, summed over R). Purple "
    "marks the R tracing recommends, orange the R that edited best; when they differ, trust the editing."
)


def windows_figure(result) -> go.Figure:
    """Edit scores (S, ES, PS, NS) per window R beside the tracing curve's value for it (editor.studies.windows.WindowsResult)."""
    if not result.windows:
        return empty_figure("No range of layers has been edited yet.", height=380)
    labels = [_range_text(window.layers) for window in result.windows]
    figure = go.Figure()
    for name, color, width in (("S", "#37474f", 3.5), ("ES", "#1e88e5", 1.5), ("PS", "#8e24aa", 1.5), ("NS", "#e53935", 1.5)):
        values = [getattr(window, name) for window in result.windows]
        figure.add_trace(go.Scatter(
            x=labels, y=values, mode="lines+markers", name=name, line=dict(color=color, width=width),
            hovertemplate="R = %{x}<br>" + name + " %{y:.1f}<extra></extra>",
        ))
    effects = [window.trace_effect for window in result.windows]
    if any(value is not None for value in effects):
        figure.add_trace(go.Scatter(
            x=labels, y=effects, mode="lines+markers", name="tracing (summed MLP effect)", yaxis="y2",
            line=dict(color="#2e7d32", dash="dash", width=2.5), hovertemplate="R = %{x}<br>tracing %{y:.4f}<extra></extra>",
        ))
    for layers, color, text in ((result.tracing_recommended, "rgba(103,58,183,0.18)", "tracing's R"),
                                (result.editing_best, "rgba(255,143,0,0.22)", "editing's best R")):
        label = _range_text(layers) if layers else None
        if label in labels:
            index = labels.index(label)
            figure.add_vrect(x0=index - 0.45, x1=index + 0.45, fillcolor=color, line_width=0, annotation_text=text,
                             annotation_position="top left" if text.startswith("tracing") else "top right")
    verdict = "agree" if result.agree else "disagree"
    title = f"R by editing: best {_range_text(result.editing_best) or '-'}, tracing {_range_text(result.tracing_recommended) or '-'}"
    if result.tracing_recommended and result.editing_best:
        title += f" ({verdict})"
    figure.update_layout(
        title=dict(text=title, x=0.02, font=dict(size=16)),
        xaxis=dict(title="edited layers R", type="category"),
        yaxis=dict(title="edit score (%)", range=[0, 101]),
        yaxis2=dict(title="tracing: summed MLP effect", overlaying="y", side="right", showgrid=False, rangemode="tozero"),
        height=420, margin=dict(l=10, r=10, t=56, b=50), plot_bgcolor="white", paper_bgcolor="white", font=FONT,
        legend=dict(orientation="h", y=-0.25), meta={"caption": WINDOWS_CAPTION},
    )
    return figure


def _range_text(layers) -> str:
    layers = list(layers)
    if not layers:
        return ""
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1 else ",".join(map(str, layers))
