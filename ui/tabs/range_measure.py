"""Choose R tab, 'Measure by editing': edit the same records at a few ranges R and keep the one that edited best.

Tracing says where a fact's effect shows; editing says where changing the weights works. They can
disagree (Hase et al., NeurIPS 2023), so this section edits dev-set records (or the visitor's own
requests) at each candidate window (editor.studies.windows), draws the edit scores beside the tracing curve,
recommends R by edit score and says plainly when the two disagree. The editing and tracing are ui/ranges.py's.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import InputError, OperationCancelled
from ui import forms, limits, model_state, ranges
from ui.context import MODEL_EVENTS, AppContext
from ui.controls import job_controls, wire, wire_stop
from ui.errors import friendly
from ui.forms import Form
from ui.runner import HEARTBEAT
from ui.session import SessionState

RECORD_SOURCES = [
    ("The dev set (facts the model knows)", "devset"),
    ("My edits and imported records", "mine"),
]
RECORDS = (1, 40)  # records edited at every window
MEASURE = "measure"  # the windows figure and verdict (ui/model_state.py: which model state it was measured on)

MEASURE_INTRO = (
    "**Measure by editing.** Tracing shows where a fact's effect *shows up*; it does not promise that editing "
    "there works best. Here the same requests are really edited at a few ranges R (each time on a fresh copy of "
    "the weights, so nothing stays changed), and each edit is scored. The R that edited best is chosen for you."
)
MEASURE_CAPTION = (
    "**What am I looking at?** Along the bottom: the ranges of layers R that were tried. The solid lines say how "
    "well the edits worked at each R, in percent: *ES* = the model now gives the new answer, *PS* = it also does "
    "when the question is worded differently, *NS* = unrelated facts were left alone, and *S* (thick) sums them "
    "up. The dashed green line is tracing's prediction for the same R (right axis). Purple shading marks the R "
    "tracing recommends, orange the R that edited best. If the orange and purple bars are on different ranges, "
    "tracing and editing disagree: trust the editing, it measured the thing you want."
)


@dataclass
class MeasureSection:
    records_source: gr.Radio
    count: gr.Slider
    windows: gr.Textbox
    run: gr.Button
    stop: gr.Button
    plot: gr.Plot
    verdict: gr.Markdown
    measure_event: Any


# --- what is measured ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasureForm(Form):
    """Which records to edit, how many, the ranges R to try (empty: tracing's R and its neighbours) and R's width."""

    source: str = forms.choice("Records", [value for _, value in RECORD_SOURCES], "devset")
    count: int = forms.whole("Records to edit", RECORDS, 10)
    windows: str = forms.text("Windows", limit=limits.MAX_LAYER_TEXT)  # read against the model by the handler
    width: int = forms.whole("Width of R", limits.WIDTH, 5)


def verdict_text(result: Any, records_note: str, done: bool, *, windows_note: str = "", stopped: bool = False) -> str:
    """Plain words: which R edited best, tracing's R, and whether they disagree (`stopped`: a partial result, said so)."""
    best, traced = result.editing_best, result.tracing_recommended
    if stopped:
        lines = [f"**Stopped after {len(result.windows)} range(s), {records_note}: the figure shows those only, and R was "
                 "not changed.** Measured ranges are cached: *Measure by editing* continues from there."]
    else:
        lines = [f"{'Done' if done else 'So far'}: {len(result.windows)} range(s) edited, {records_note}."]
    if windows_note:
        lines.append(html.escape(windows_note))
    if best:
        top = result.window(best)
        lines.append(f"**Editing's best R: layers {ranges.layers_text(best)}** (S {'-' if top.S is None else f'{top.S:.1f}'}).")
    if traced:
        lines.append(f"**Tracing's R: layers {ranges.layers_text(traced)}.**")
    measured = result.window(traced) if traced else None
    if best and measured is not None and measured.edit_score is not None and not result.agree:
        lines.append(
            f"**Tracing and editing disagree:** tracing points to layers {ranges.layers_text(traced)}, but the edits worked "
            f"best at layers {ranges.layers_text(best)}. Edit at {ranges.layers_text(best)}, the layers that edited best."
        )
    elif best and result.agree:
        lines.append("Tracing and editing agree.")
    lines.append(html.escape(result.explanation()))
    warnings = sorted({warning for window in result.windows for warning in window.warnings})
    if warnings:
        lines.append("Warning: " + html.escape(" ".join(warnings[:3])))
    if done and best and not stopped:
        lines.append(f"R is now set to layers {ranges.layers_text(best)} (the sliders above and the Edit tab).")
    return "  \n".join(lines)


# --- the handler --------------------------------------------------------------------------------------------------

@friendly
def run_measure(ctx: AppContext, form: MeasureForm, session: SessionState | None, progress=gr.Progress()):
    """Edit the chosen records at each window and score them; at the end R = the window that edited best."""
    session = ctx.session_of(session)
    width = form.width
    loaded = ctx.loaded_model(session)
    num_layers = loaded.layout.num_layers
    if width > num_layers:
        raise InputError(f"Width of R must be from 1 to {num_layers} for this model, got {width}.")
    typed = ranges.checked_windows(form.windows, num_layers, width)
    records = ranges.chosen_records(loaded, session, form.source, form.count)
    recommendation = session.recommendation if session.recommendation is not None and session.recommendation.width == width else None
    mine = form.source == "mine"
    note = ranges.records_note(records, form.count, mine)
    cov_tokens = session.cov_tokens
    skip = gr.skip()

    def windows_note(result: Any) -> str:
        return ranges.around_note(result.tracing_recommended, num_layers) if typed is None else ""

    def work(job, loaded):
        return job.relay(ranges.measure_stream(loaded, records, typed, width, cov_tokens=cov_tokens,
                                               recommendation=recommendation, mine=mine, progress=job.progress))

    job = ctx.submit(session, work, name="measurement of R by editing", edited=False)
    shown = None
    try:
        for item in ctx.follow(job, progress):
            if item is HEARTBEAT:
                yield skip, skip, skip, skip, skip, skip
                continue
            session.windows = shown = item.result
            verdict = verdict_text(item.result, note, item.done, windows_note=windows_note(item.result))
            yield ranges.windows_figure(item.result), verdict, skip, skip, skip, session
    except OperationCancelled:
        if shown is not None:  # the partial figure stays, labelled; R is not changed
            yield skip, verdict_text(shown, note, False, windows_note=windows_note(shown), stopped=True), skip, skip, skip, session
        raise
    result = job.result
    session.windows = result
    if mine:  # your records: measured again when your edits change
        model_state.record(session, MEASURE)
    else:
        model_state.record_original(session, MEASURE)
    best = result.editing_best
    verdict = verdict_text(result, note, True, windows_note=windows_note(result))
    if not best:
        yield ranges.windows_figure(result), verdict, skip, skip, skip, session
        return
    low, high = min(best), max(best)
    session.layers = (low, high)
    yield ranges.windows_figure(result), verdict, low, high, ranges.range_label(low, high), session


# --- the section --------------------------------------------------------------------------------------------------

def build(ctx: AppContext, width: gr.Slider, first: gr.Slider, last: gr.Slider) -> MeasureSection:
    """The 'Measure by editing' section (inside the Choose R tab); R feeds the sliders and the Edit tab's layer box."""
    with gr.Accordion("Measure by editing", open=False, elem_id="measure-section") as section:
        gr.Markdown(MEASURE_INTRO)
        with gr.Row():
            records_source = gr.Radio(RECORD_SOURCES, value="devset", label="Records to edit", elem_id="measure-source", scale=2)
            count = gr.Slider(*RECORDS, value=MeasureForm.default("count"), step=1, label="How many records", elem_id="measure-count", scale=2)
            windows = gr.Textbox(
                label="Ranges R to try", placeholder="empty: tracing's R and R moved up to 2 layers; or 'all', or 1-5,2-6",
                max_length=limits.MAX_LAYER_TEXT, elem_id="measure-windows", scale=2,
            )
        run, stop, progress_line = job_controls("Measure by editing", "measure-run", "measure")
        plot = gr.Plot(ranges.empty_figure("Press 'Measure by editing' to edit at a few ranges R.", height=380),
                       elem_id="measure-plot", show_label=False)
        gr.Markdown(MEASURE_CAPTION, elem_id="measure-caption")
        verdict = gr.Markdown(elem_id="measure-verdict")
        note = model_state.state_note(MEASURE, "Measure by editing", "measure-state")

    layers_text = ctx.components["edit_layers"]  # the Edit tab's layer box: the best R feeds it
    measure_form = dict(source=records_source, count=count, windows=windows, width=width)
    measure_event = wire(
        ctx, progress_line, functools.partial(gr.on, [run.click, note.refresh.click]),
        *forms.bind(ctx, run_measure, MeasureForm, measure_form),
        [plot, verdict, first, last, layers_text, ctx.session],
        api_name="measure_windows",
        **MODEL_EVENTS,
    )
    wire_stop(ctx, stop, progress_line)
    model_state.refresh_on(ctx, [note], [measure_event, section.expand])
    return MeasureSection(
        records_source=records_source, count=count, windows=windows, run=run, stop=stop, plot=plot, verdict=verdict,
        measure_event=measure_event,
    )
