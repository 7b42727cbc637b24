"""Averages tab: average indirect effect by token class over N facts the model knows."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui import captions, figures
from ui.context import MODEL_QUEUE, AppContext
from ui.display import percent
from ui.errors import friendly
from ui.runner import HEARTBEAT, follow
from ui.session import SessionState
from ui.tabs.trace_tab import KIND_CHOICES, KINDS


@dataclass
class AveragesTab:
    count: gr.Slider
    run: gr.Button
    status: gr.Markdown
    plots: dict[str, gr.Plot]
    average_event: Any


def average_status(result: Any) -> str:
    """One paragraph on what was averaged."""
    parts = [f"Averaged over **{result.n} facts** the model knows"]
    total = getattr(result, "total_effect", None)
    if total is not None:
        mean = total.get("mean") if isinstance(total, dict) else total
        if mean is not None:
            parts.append(f"average total effect (clean − blurred) **{percent(float(mean))}**")
    return html.escape(", ".join(parts)).replace("**", "**") + "."


def build(ctx: AppContext) -> AveragesTab:
    with gr.Tab("Averages", id="averages"):
        gr.Markdown(captions.AVERAGES)
        with gr.Row():
            count = gr.Slider(2, 279, value=20, step=1, label="Facts to average (N)", elem_id="avg-count", scale=3)
            kinds = gr.CheckboxGroup(KIND_CHOICES, value=list(KINDS), label="What to restore", scale=2)
            samples = gr.Slider(1, 50, value=10, step=1, label="Noise samples", scale=2)
        with gr.Row():
            run = gr.Button("Compute averages", variant="primary", elem_id="avg-run", scale=3)
            stop = gr.Button("Stop", variant="stop", elem_id="avg-stop", scale=1)
        status = gr.Markdown(
            "Averages are cached: a second run (or a restart) continues where the last one stopped.", elem_id="avg-status"
        )
        plots: dict[str, gr.Plot] = {}
        with gr.Row(equal_height=True):
            for kind in KINDS:
                plots[kind] = gr.Plot(elem_id=f"avg-plot-{kind}", show_label=False, min_width=320)

    @friendly
    def run_average(n: float, kind_list: list[str], sample_count: float, session: SessionState | None, progress=gr.Progress()):
        from tracer.trace import TraceSettings

        session = ctx.session_of(session)
        settings = TraceSettings(kinds=tuple(kind_list or ()), samples=int(sample_count))
        settings.validate()
        skip = tuple(gr.skip() for _ in range(len(KINDS) + 2))

        def work(job, loaded):
            from tracer.average import average_traces

            return average_traces(loaded, int(n), settings, progress=job.progress)

        job = ctx.submit(session, work, name="averages", edited=False)
        for item in follow(job, progress):
            if item is HEARTBEAT:
                yield skip
        result = job.result
        session.average = result
        yield (average_status(result), *(figures.average_figure(result, kind) for kind in KINDS), session)

    average_event = run.click(
        run_average,
        [count, kinds, samples, ctx.session],
        [status, *(plots[kind] for kind in KINDS), ctx.session],
        api_name="average",
        concurrency_id=MODEL_QUEUE,
    )
    stop.click(None, None, None, cancels=[average_event], api_visibility="private")
    return AveragesTab(count, run, status, plots, average_event)
