"""Averages tab: average indirect effect by token class over N facts the model knows (the tracer through ui/averages.py)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import OperationCancelled
from ui import averages, captions, forms, limits, model_state
from ui.averages import KINDS
from ui.context import MODEL_EVENTS, AppContext
from ui.controls import job_controls, wire, wire_stop
from ui.display import percent
from ui.errors import friendly
from ui.forms import Form
from ui.runner import HEARTBEAT
from ui.session import SessionState


@dataclass
class AveragesTab:
    count: gr.Slider
    run: gr.Button
    status: gr.Markdown
    plots: dict[str, gr.Plot]
    average_event: Any


def average_status(result: Any, fraction: float, message: str, done: bool) -> str:
    """What was averaged so far, in one paragraph."""
    if result.n_facts == 0:
        return f"{html.escape(message)}…"
    kinds = ", ".join(
        f"{averages.kind_title(kind)} strongest at the {best[0]} (layer {best[1]}, {percent(best[2])})"
        for kind in result.kinds
        for best in [result.best(kind)]
        if best[1] >= 0
    )
    head = "Done." if done else "So far:"
    return (
        f"{head} **{result.n_facts} facts** the model knows · average total effect {percent(result.total_effect)} "
        f"± {percent(result.total_effect_half_width)} (clean {percent(result.high_mean)}, blurred {percent(result.low_mean)}).  \n"
        f"{html.escape(kinds)}. *{html.escape(message)}*"
    )


# --- the form and the handler -------------------------------------------------------------------

def fact_count(value: Any) -> int:
    return limits.whole(value, "Facts to average", (2, averages.known_fact_count()))


AVERAGES = "averages"  # the curves (ui/model_state.py: always on the original weights)


@dataclass(frozen=True)
class AverageForm(Form):
    count: int = forms.checked(fact_count, 20)
    kinds: tuple[str, ...] = forms.choices("What to restore", KINDS, KINDS)
    samples: int = forms.whole("Noise samples", limits.SAMPLES, 10)


def stopped_status(result: Any, count: int) -> str:
    """The status after a Stop: the curves on screen are a partial average, and say over how many facts."""
    if result is None or result.n_facts == 0:
        return "Stopped before the first fact was averaged: the curves above are from before."
    return (f"**Stopped after {result.n_facts} of {count} facts: the curves show the average over those "
            f"{result.n_facts} only.** They are cached: *Compute averages* continues from there.")


@friendly
def run_average(ctx: AppContext, form: AverageForm, session: SessionState | None, progress=gr.Progress()):
    """Average traces over `form.count` known facts (cached, resumable), redrawing the curves when a fact was added."""
    session = ctx.session_of(session)
    settings = averages.average_settings(form.kinds, form.samples)
    skip = tuple(gr.skip() for _ in range(len(KINDS) + 2))

    def work(job, loaded):
        averages.check_fact_count(loaded, form.count)  # more facts than the model knows: refused, never cut short
        return job.relay(averages.average_stream(loaded, form.count, settings, pool=ctx.pool))

    job = ctx.submit(session, work, name="averages", edited=False)
    drawn = None  # (facts, done) of the curves on screen: redraw only when a fact was added
    shown = None  # the partial average on screen
    try:
        for item in ctx.follow(job, progress):
            if item is HEARTBEAT:
                yield skip
                continue
            session.average = shown = item.result
            status = average_status(item.result, item.fraction, item.message, item.done)
            if drawn == (item.result.n_facts, item.done):
                yield (status, *skip[1:-1], session)
                continue
            drawn = (item.result.n_facts, item.done)
            yield (status, *averages.figures_of(item.result), session)
    except OperationCancelled:
        yield (stopped_status(shown, form.count), *skip[1:-1], session)  # the partial curves stay, labelled
        raise
    session.average = job.result
    model_state.record_original(session, AVERAGES)


# --- the tab -----------------------------------------------------------------------------------

def build(ctx: AppContext) -> AveragesTab:
    with gr.Tab("Averages", id="averages"):
        gr.Markdown(captions.AVERAGES)
        with gr.Row():
            count = gr.Slider(2, 279, value=AverageForm.default("count"), step=1, label="Facts to average (N)",
                              elem_id="avg-count", scale=3)
            kinds = gr.CheckboxGroup(averages.KIND_CHOICES, value=list(AverageForm.default("kinds")), label="What to restore",
                                     scale=2)
            samples = gr.Slider(*limits.SAMPLES, value=AverageForm.default("samples"), step=1, label="Noise samples", scale=2,
                                elem_id="avg-samples")
        run, stop, progress_line = job_controls("Compute averages", "avg-run", "avg")
        status = gr.Markdown(
            "Averages are cached: a second run (or a restart) continues where the last one stopped.", elem_id="avg-status"
        )
        note = model_state.state_note(AVERAGES, "Compute averages", "avg-state")
        plots: dict[str, gr.Plot] = {}
        with gr.Row(equal_height=True):
            for kind in KINDS:
                plots[kind] = gr.Plot(elem_id=f"avg-plot-{kind}", show_label=False, min_width=320)

    average_event = wire(
        ctx, progress_line, run.click,
        *forms.bind(ctx, run_average, AverageForm, dict(count=count, kinds=kinds, samples=samples)),
        [status, *(plots[kind] for kind in KINDS), ctx.session],
        api_name="average",
        **MODEL_EVENTS,
    )
    wire_stop(ctx, stop, progress_line)
    model_state.refresh_on(ctx, [note], [average_event])
    return AveragesTab(count=count, run=run, status=status, plots=plots, average_event=average_event)
