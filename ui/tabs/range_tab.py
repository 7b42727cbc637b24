"""Choose R tab: a layer range drawn over the MLP effect curve at the last subject token."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import InputError
from ui import captions, forms, limits, ranges
from ui.context import AppContext
from ui.controls import job_line, wire
from ui.errors import friendly
from ui.forms import Form
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


def chosen_text(low: int, high: int) -> str:
    """What the page says about the chosen R."""
    return f"**R = layers {ranges.range_label(low, high)}** ({high - low + 1} layers) will be edited on the Edit tab."


# --- forms ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecommendForm(Form):
    """Where the curve comes from and how wide R is."""

    source: str = forms.choice("Curve from", SOURCE_VALUES, "trace")
    width: int = forms.whole("Width of R", limits.WIDTH, 5)


@dataclass(frozen=True)
class RangeForm(Form):
    """The curve's source and width, and the R the sliders chose (checked against the model by `bounds`)."""

    source: str = forms.choice("Curve from", SOURCE_VALUES, "trace")
    width: int = forms.whole("Width of R", limits.WIDTH, 5)
    first: int = forms.whole("First layer of R", limits.LAYER, 2)
    last: int = forms.whole("Last layer of R", limits.LAYER, 6)

    def bounds(self, num_layers: int | None) -> tuple[int, int]:
        """(low, high) of R, within the model's layers when it is loaded."""
        layers = (0, (num_layers or limits.LAYER[1] + 1) - 1)
        low, high = limits.whole(self.first, "First layer of R", layers), limits.whole(self.last, "Last layer of R", layers)
        return min(low, high), max(low, high)


# --- handlers ---------------------------------------------------------------------------------

def current_curve(ctx: AppContext, session: SessionState, source: str, width: int) -> Any:
    """The recommendation to draw under the user's R, or None when there is nothing to draw from yet."""
    try:
        loaded = ctx.loaded_model(session) if source == "packaged" else None
        return ranges.recommendation_for(session, source, width, loaded=loaded)
    except InputError:
        return None


@friendly
def redraw(ctx: AppContext, form: RangeForm, session: SessionState | None):
    """Move the shaded range (and remember it as this session's R)."""
    session = ctx.session_of(session)
    low, high = form.bounds(ctx.num_layers(session))
    session.layers = (low, high)
    recommendation = current_curve(ctx, session, form.source, form.width)
    return ranges.curve_figure(recommendation, form.source, low, high), chosen_text(low, high), ranges.range_label(low, high), session


@friendly
def show_curve(ctx: AppContext, form: RangeForm, session: SessionState | None):
    """Draw the curve when the tab opens (the packaged averages need no click), leaving the chosen R alone."""
    session = ctx.session_of(session)
    low, high = form.bounds(ctx.num_layers(session))
    recommendation = current_curve(ctx, session, form.source, form.width)
    explanation = html.escape(recommendation.explanation) if recommendation is not None else gr.skip()
    return ranges.curve_figure(recommendation, form.source, low, high), explanation


@friendly
def run_recommend(ctx: AppContext, form: RecommendForm, session: SessionState | None):
    """The recommended R from the last trace or the averages, with layers whose cached key statistics look odd."""
    session = ctx.session_of(session)
    source, width = form.source, form.width
    loaded = ctx.loaded_model(session) if source == "packaged" else None
    ranges.recommendation_for(session, source, width, loaded=loaded)  # nothing to recommend from: say so before queueing
    flagged = ctx.run(session, lambda job, loaded: ranges.outlier_flags(loaded, session.cov_tokens), name="outliers", edited=False)
    recommendation = ranges.recommendation_for(session, source, width, flagged, loaded=loaded)
    session.recommendation = recommendation
    low, high = min(recommendation.layers), max(recommendation.layers)
    session.layers = (low, high)
    return (
        ranges.recommendation_figure(recommendation, (low, high)),
        low,
        high,
        html.escape(recommendation.explanation),  # says why, and what to be careful about (weak signal, outliers)
        recommendation.to_dict(),
        chosen_text(low, high),
        ranges.range_label(low, high),
        session,
    )


# --- the tab -----------------------------------------------------------------------------------

def build(ctx: AppContext) -> RangeTab:
    with gr.Tab("Choose R", id="range") as tab:
        gr.Markdown(captions.CHOOSE_R)
        with gr.Row():
            source = gr.Radio(SOURCES, value=ranges.default_source(ctx.manager.default_spec), label="Curve from",
                              elem_id="range-source", scale=2)
            width = gr.Slider(*limits.WIDTH, value=RangeForm.default("width"), step=1, label="Width of R (layers)",
                              elem_id="range-width", scale=2)
            recommend = gr.Button("Recommend", variant="primary", elem_id="range-recommend", scale=1)
        recommend_line = job_line("range-recommend")  # a refusal ("trace first") is said here, next to the button
        plot = gr.Plot(elem_id="range-plot", show_label=False)
        with gr.Row():
            first = gr.Slider(0, 29, value=RangeForm.default("first"), step=1, label="First layer of R", elem_id="range-first")
            last = gr.Slider(0, 29, value=RangeForm.default("last"), step=1, label="Last layer of R", elem_id="range-last")
        explanation = gr.Markdown(elem_id="range-explanation")
        chosen = gr.Markdown(elem_id="range-chosen")
        with gr.Accordion("Raw result (JSON)", open=False):
            result_json = gr.JSON(elem_id="range-json")
        measure = range_measure.build(ctx, width, first, last)

    layers_text = ctx.components["edit_layers"]  # the Edit tab's layer box (rendered there): R feeds it
    recommend_event = wire(
        ctx, recommend_line, recommend.click,
        *forms.bind(ctx, run_recommend, RecommendForm, dict(source=source, width=width)),
        [plot, first, last, explanation, result_json, chosen, layers_text, ctx.session],
        api_name="recommend",
    )
    chosen_range = dict(source=source, width=width, first=first, last=last)
    redraw_event = (*forms.bind(ctx, redraw, RangeForm, chosen_range), [plot, chosen, layers_text, ctx.session])
    for trigger in (first.release, last.release, source.change):
        trigger(*redraw_event, api_visibility="private", show_progress="hidden")
    ctx.components["range_redraw"] = redraw_event
    tab.select(*forms.bind(ctx, show_curve, RangeForm, chosen_range), [plot, explanation],
               api_visibility="private", show_progress="hidden", queue=False)
    return RangeTab(
        source=source, width=width, first=first, last=last, plot=plot, explanation=explanation, recommend=recommend,
        recommend_event=recommend_event, result_json=result_json, measure=measure,
    )
