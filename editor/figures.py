"""Figures of edits (plotly only, in the style of `tracer.figures`): how each new fact was learned."""

from __future__ import annotations

import plotly.graph_objects as go

from tracer.figures import FONT, empty_figure

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


WINDOWS_CAPTION = (
    "Each point is one range of layers R that the same requests were edited at (x: its layers). The solid lines "
    "are how well the edits worked there (S, and its parts ES, PS, NS, in percent); the dashed green line is what "
    "causal tracing predicted for that range (the MLP effect at the last subject word, summed over R). Purple "
    "marks the R tracing recommends, orange the R that edited best; when they differ, trust the editing."
)


def windows_figure(result) -> go.Figure:
    """Edit scores (S, ES, PS, NS) per window R beside the tracing curve's value for it (editor.windows.WindowsResult)."""
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
