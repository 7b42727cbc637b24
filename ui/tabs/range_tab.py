"""Choose R tab: a layer range drawn over the MLP effect curve at the last subject token."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.embedded import EMBEDDED_SPEC
from core.errors import InputError
from editor.layers import outlier_flags
from tracer import figures
from tracer.figures import range_label
from tracer.recommend import packaged_recommendation, recommend_layers
from ui import captions, limits
from ui.context import AppContext
from ui.errors import friendly
from ui.session import SessionState
from ui.tabs import range_measure

SOURCES = [
    ("The packaged averages (40 known facts, instant)", "packaged"),
    ("The last trace (Trace tab)", "trace"),
    ("The averages (Averages tab)", "average"),
]
SOURCE_VALUES = [value for _, value in SOURCES]


@dataclass
class RangeTab:
    source: gr.Radio
    width: gr.Slider
    first: gr.Slider
    last: gr.Slider
    plot: gr.Plot
    explanation: gr.Markdown
    recommend: gr.Button
    recommend_event: Any
    result_json: gr.JSON
    measure: Any  # range_measure.MeasureSection


def default_source(model_spec: str) -> str:
    """Where the curve comes from on a fresh page: the packaged averages for the embedded model, else the last trace."""
    return "packaged" if model_spec == EMBEDDED_SPEC else "trace"


def recommendation_for(
    session: SessionState, source: str, width: int, flagged: dict[int, str] | None = None, loaded: Any = None
) -> Any:
    """The tracer's recommendation from the packaged averages, the last trace or the averages (InputError if there is none)."""
    if source == "packaged":
        if loaded is None:
            raise InputError("The model is still loading; try again in a moment.")
        recommendation = packaged_recommendation(loaded, width, flagged)
        if recommendation is None:
            raise InputError(
                "This model has no packaged averages (only the embedded model ships them): compute averages on the "
                "Averages tab and choose 'The averages', or choose 'The last trace'."
            )
        return recommendation
    if source == "average":
        if session.average is None:
            raise InputError("There are no averages yet: run them on the Averages tab, or choose 'The last trace'.")
        return recommend_layers(session.average, width=width, flagged_layers=flagged)
    if session.trace is None:
        raise InputError("There is no trace yet: run one on the Trace tab (or click an example) first.")
    if "mlp" not in session.trace.scores:
        raise InputError("The last trace did not include the MLP kind; trace again with MLP selected (Advanced).")
    return recommend_layers(session.trace, width=width, flagged_layers=flagged)


def chosen_text(low: int, high: int) -> str:
    """What the page says about the chosen R."""
    return f"**R = layers {range_label(low, high)}** ({high - low + 1} layers) will be edited on the Edit tab."


# --- handlers ---------------------------------------------------------------------------------

def current_curve(ctx: AppContext, session: SessionState, source_value: str, width_value: int) -> Any:
    """The recommendation to draw under the user's R, or None when there is nothing to draw from yet."""
    try:
        loaded = ctx.loaded_model(session) if source_value == "packaged" else None
        return recommendation_for(session, source_value, width_value, loaded=loaded)
    except InputError:
        return None


EMPTY_CURVE = {
    "packaged": "This model has no packaged averages: compute them on the Averages tab.",
    "trace": "Run a trace (Trace tab) to see the MLP effect curve here.",
    "average": "Compute averages (Averages tab) to see the averaged MLP effect curve here.",
}


def curve_figure(recommendation: Any, source_value: str, low: int, high: int) -> Any:
    """The curve with the user's R, or a note on what to run first."""
    if recommendation is None:
        return figures.empty_figure(EMPTY_CURVE[source_value])
    return figures.recommendation_figure(recommendation, (low, high))


@friendly
def redraw(ctx: AppContext, source_value: str, width_value: float, first_value: float, last_value: float, session: SessionState | None):
    """Move the shaded range (and remember it as this session's R)."""
    session = ctx.session_of(session)
    bounds = (0, (ctx.num_layers(session) or limits.MAX_LAYER_TEXT) - 1)
    low, high = sorted((limits.whole(first_value, "First layer of R", bounds), limits.whole(last_value, "Last layer of R", bounds)))
    source_value = limits.choice(source_value, "Curve from", SOURCE_VALUES)
    session.layers = (low, high)
    recommendation = current_curve(ctx, session, source_value, limits.whole(width_value, "Width of R", limits.WIDTH))
    return curve_figure(recommendation, source_value, low, high), chosen_text(low, high), range_label(low, high), session


@friendly
def show_curve(ctx: AppContext, source_value: str, width_value: float, first_value: float, last_value: float,
               session: SessionState | None):
    """Draw the curve when the tab opens (the packaged averages need no click), leaving the chosen R alone."""
    session = ctx.session_of(session)
    bounds = (0, (ctx.num_layers(session) or limits.MAX_LAYER_TEXT) - 1)
    low, high = sorted((limits.whole(first_value, "First layer of R", bounds), limits.whole(last_value, "Last layer of R", bounds)))
    source_value = limits.choice(source_value, "Curve from", SOURCE_VALUES)
    recommendation = current_curve(ctx, session, source_value, limits.whole(width_value, "Width of R", limits.WIDTH))
    explanation = html.escape(recommendation.explanation) if recommendation is not None else gr.skip()
    return curve_figure(recommendation, source_value, low, high), explanation


@friendly
def run_recommend(ctx: AppContext, source_value: str, width_value: float, session: SessionState | None):
    """The recommended R from the last trace or the averages, with layers whose cached key statistics look odd."""
    session = ctx.session_of(session)
    source_value = limits.choice(source_value, "Curve from", SOURCE_VALUES)
    width = limits.whole(width_value, "Width of R", limits.WIDTH)
    loaded = ctx.loaded_model(session) if source_value == "packaged" else None
    recommendation_for(session, source_value, width, loaded=loaded)  # nothing to recommend from: say so before queueing
    flagged = ctx.run(session, lambda job, loaded: outlier_flags(loaded, session.cov_tokens), name="outliers", edited=False)
    recommendation = recommendation_for(session, source_value, width, flagged, loaded=loaded)
    session.recommendation = recommendation
    low, high = min(recommendation.layers), max(recommendation.layers)
    session.layers = (low, high)
    return (
        figures.recommendation_figure(recommendation, (low, high)),
        low,
        high,
        html.escape(recommendation.explanation),  # says why, and what to be careful about (weak signal, outliers)
        recommendation.to_dict(),
        chosen_text(low, high),
        range_label(low, high),
        session,
    )


# --- the tab -----------------------------------------------------------------------------------

def build(ctx: AppContext) -> RangeTab:
    with gr.Tab("Choose R", id="range") as tab:
        gr.Markdown(captions.CHOOSE_R)
        with gr.Row():
            source = gr.Radio(SOURCES, value=default_source(ctx.manager.default_spec), label="Curve from", elem_id="range-source", scale=2)
            width = gr.Slider(1, 12, value=5, step=1, label="Width of R (layers)", elem_id="range-width", scale=2)
            recommend = gr.Button("Recommend", variant="primary", elem_id="range-recommend", scale=1)
        plot = gr.Plot(elem_id="range-plot", show_label=False)
        with gr.Row():
            first = gr.Slider(0, 29, value=2, step=1, label="First layer of R", elem_id="range-first")
            last = gr.Slider(0, 29, value=6, step=1, label="Last layer of R", elem_id="range-last")
        explanation = gr.Markdown(elem_id="range-explanation")
        chosen = gr.Markdown(elem_id="range-chosen")
        with gr.Accordion("Raw result (JSON)", open=False):
            result_json = gr.JSON(elem_id="range-json")
        measure = range_measure.build(ctx, width, first, last)

    layers_text = ctx.components["edit_layers"]  # the Edit tab's layer box (rendered there): R feeds it
    recommend_event = recommend.click(
        ctx.bind(run_recommend),
        [source, width, ctx.session],
        [plot, first, last, explanation, result_json, chosen, layers_text, ctx.session],
        api_name="recommend",
    )
    redraw_event = (ctx.bind(redraw), [source, width, first, last, ctx.session], [plot, chosen, layers_text, ctx.session])
    for trigger in (first.release, last.release, source.change):
        trigger(*redraw_event, api_visibility="private", show_progress="hidden")
    ctx.components["range_redraw"] = redraw_event
    tab.select(ctx.bind(show_curve), [source, width, first, last, ctx.session], [plot, explanation],
               api_visibility="private", show_progress="hidden", queue=False)
    return RangeTab(
        source=source, width=width, first=first, last=last, plot=plot, explanation=explanation, recommend=recommend,
        recommend_event=recommend_event, result_json=result_json, measure=measure,
    )
