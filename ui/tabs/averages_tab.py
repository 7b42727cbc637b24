"""Averages tab: average indirect effect by token class over N facts the model knows."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.facts import load_known_facts
from core.kinds import KINDS
from tracer import figures
from tracer.average import average_traces_stream
from tracer.trace import TraceSettings
from ui import captions, limits
from ui.context import MODEL_EVENTS, AppContext, stop_jobs
from ui.controls import job_controls
from ui.display import percent
from ui.errors import friendly
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
        f"{figures.kind_title(kind)} strongest at the {best[0]} (layer {best[1]}, {percent(best[2])})"
        for kind in result.kinds
        for best in [result.best(kind)]
        if best[1] >= 0
    )
    head = "Done." if done else f"{fraction:.0%} ·"
    return (
        f"{head} **{result.n_facts} facts** the model knows · average total effect {percent(result.total_effect)} "
        f"± {percent(result.total_effect_half_width)} (clean {percent(result.high_mean)}, blurred {percent(result.low_mean)}).  \n"
        f"{html.escape(kinds)}. *{html.escape(message)}*"
    )


# --- handlers ---------------------------------------------------------------------------------

@friendly
def run_average(ctx: AppContext, n: float, kind_list: list[str], sample_count: float, session: SessionState | None, progress=gr.Progress()):
    """Average traces over `n` known facts (cached, resumable), redrawing the curves when a fact was added."""
    session = ctx.session_of(session)
    count = limits.whole(n, "Facts to average", (2, len(load_known_facts())))
    kind_list = kind_list if isinstance(kind_list, (list, tuple)) else [kind_list]
    settings = TraceSettings(
        kinds=tuple(limits.choice(kind, "What to restore", KINDS) for kind in kind_list or ()),
        samples=limits.whole(sample_count, "Noise samples", limits.SAMPLES),
    )
    settings.validate()
    skip = tuple(gr.skip() for _ in range(len(KINDS) + 2))

    def work(job, loaded):
        return job.relay(average_traces_stream(loaded, count, settings, pool=ctx.pool))

    job = ctx.submit(session, work, name="averages", edited=False)
    drawn = None  # (facts, done) of the curves on screen: redraw only when a fact was added
    for item in ctx.follow(job, progress):
        if item is HEARTBEAT:
            yield skip
            continue
        session.average = item.result
        status = average_status(item.result, item.fraction, item.message, item.done)
        if drawn == (item.result.n_facts, item.done):
            yield (status, *skip[1:-1], session)
            continue
        drawn = (item.result.n_facts, item.done)
        yield (status, *(figures.average_figure(item.result, kind) for kind in KINDS), session)
    session.average = job.result


# --- the tab -----------------------------------------------------------------------------------

def build(ctx: AppContext) -> AveragesTab:
    with gr.Tab("Averages", id="averages"):
        gr.Markdown(captions.AVERAGES)
        with gr.Row():
            count = gr.Slider(2, 279, value=20, step=1, label="Facts to average (N)", elem_id="avg-count", scale=3)
            kinds = gr.CheckboxGroup(figures.KIND_CHOICES, value=list(KINDS), label="What to restore", scale=2)
            samples = gr.Slider(1, 50, value=10, step=1, label="Noise samples", scale=2)
        run, stop, progress_line = job_controls("Compute averages", "avg-run", "avg")
        status = gr.Markdown(
            "Averages are cached: a second run (or a restart) continues where the last one stopped.", elem_id="avg-status"
        )
        plots: dict[str, gr.Plot] = {}
        with gr.Row(equal_height=True):
            for kind in KINDS:
                plots[kind] = gr.Plot(elem_id=f"avg-plot-{kind}", show_label=False, min_width=320)

    average_event = run.click(
        ctx.bind(run_average),
        [count, kinds, samples, ctx.session],
        [status, *(plots[kind] for kind in KINDS), ctx.session],
        api_name="average",
        show_progress_on=[progress_line],
        **MODEL_EVENTS,
    )
    stop.click(ctx.bind(stop_jobs), [ctx.session], [progress_line], queue=False, api_visibility="private")
    return AveragesTab(count=count, run=run, status=status, plots=plots, average_event=average_event)
