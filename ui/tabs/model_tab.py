"""Model panel: what is loaded (family, layers, device, dtype, memory) and switching models."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui import captions, forms
from ui.context import MODEL_EVENTS, AppContext
from ui.controls import job_line, wire
from ui.display import loading_line, model_line, model_markdown
from ui.editing import ledger_batches
from ui.errors import friendly
from ui.forms import Form
from ui.session import SessionState


@dataclass
class ModelTab:
    info: gr.Markdown
    choice: gr.Dropdown
    switch: gr.Button
    refresh_header: Callable[[SessionState | None], str]
    ready_events: list[Any]  # page load and model switch: the model is loaded after them


def edit_batches(session: SessionState) -> int:
    ledger = session.ledgers.get(session.model_spec)
    return len(ledger_batches(ledger)) if ledger is not None else 0


# --- handlers ---------------------------------------------------------------------------------

@friendly
def show_model(ctx: AppContext, session: SessionState | None):
    """Describe the session's model at once; when it is not in memory yet, say so on one line (the seconds so far,
    never the queue: the only job ahead is the server's own load), then wait for it to load."""
    session = ctx.session_of(session)
    status = ctx.manager.status()
    if ctx.num_layers(session) is None:  # loading (start-up) or another model in memory: load it in line
        started = time.monotonic()
        line = loading_line(session.model_spec, 0)
        yield model_markdown(status), line, session
        job = ctx.submit(session, lambda job, loaded: None, name="load model", edited=False, lane="short")
        for _ in ctx.follow(job, None):  # a heartbeat twice a second: the line counts the seconds
            now = loading_line(session.model_spec, time.monotonic() - started)
            if now != line:
                line = now
                yield gr.skip(), line, gr.skip()
        status = ctx.manager.status()
    yield model_markdown(status), model_line(status, edit_batches(session)), session


@dataclass(frozen=True)
class ModelForm(Form):
    """The model to use (one of the server's: checked by the handler)."""

    model: str = forms.text("The model", limit=1_000, required=True)


@friendly
def switch_model(ctx: AppContext, form: ModelForm, session: SessionState | None, progress=gr.Progress()):
    """Use another of the server's models for this session (its traces and R are forgotten; its edits stay per model)."""
    session = ctx.session_of(session)
    spec = ctx.manager.check_allowed(form.model)
    session.model_spec = spec
    session.trace = session.original_trace = session.recommendation = session.average = session.windows = None
    session.layers = None
    ctx.run(session, lambda job, loaded: None, name="switch model", edited=False, lane="long", progress=progress)
    status = ctx.manager.status()
    return model_markdown(status), model_line(status, edit_batches(session)), session


def header_line(ctx: AppContext, session: SessionState | None) -> str:
    """The page header's model line for this session."""
    return model_line(ctx.manager.status(), edit_batches(ctx.session_of(session)))


# --- the tab -----------------------------------------------------------------------------------

def build(ctx: AppContext, header: gr.Markdown) -> ModelTab:
    manager = ctx.manager
    with gr.Tab("Model", id="model"):
        info = gr.Markdown(model_markdown(manager.status()), elem_id="model-info")
        with gr.Row():
            choice = gr.Dropdown(
                manager.specs,
                value=manager.default_spec,
                label="Model",
                info="The models this server was started with (python app.py --model M --model N ...).",
                interactive=len(manager.specs) > 1,
                elem_id="model-choice",
                scale=3,
            )
            switch = gr.Button("Use this model", elem_id="model-switch", scale=1, interactive=len(manager.specs) > 1)
        line = job_line("model-switch")  # loading another model: its progress, then done (or why not)
        gr.Markdown(captions.MODEL_PANEL)

    outputs = [info, header, ctx.session]
    load_event = ctx.components["session_ready"].then(
        ctx.bind(show_model), [ctx.session], outputs, api_visibility="private", show_progress="hidden", **MODEL_EVENTS
    )
    switch_event = wire(ctx, line, switch.click, *forms.bind(ctx, switch_model, ModelForm, dict(model=choice)), outputs,
                        api_name="switch_model", **MODEL_EVENTS)
    return ModelTab(
        info=info, choice=choice, switch=switch, refresh_header=ctx.bind(header_line), ready_events=[load_event, switch_event]
    )
