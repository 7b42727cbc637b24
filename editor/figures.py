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
