"""Model panel: what is loaded (family, layers, device, dtype, memory) and switching models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui import captions
from ui.context import MODEL_QUEUE, AppContext
from ui.display import model_line, model_markdown
from ui.editing import ledger_batches
from ui.errors import friendly
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
        gr.Markdown(captions.MODEL_PANEL)

    @friendly
    def show_model(session: SessionState | None, progress=gr.Progress()):
        session = ctx.session_of(session)
        ctx.run(session, lambda job, loaded: None, name="load model", edited=False)
        status = manager.status()
        return model_markdown(status), model_line(status, edit_batches(session)), session

    @friendly
    def switch_model(spec: str, session: SessionState | None, progress=gr.Progress()):
        session = ctx.session_of(session)
        manager.check_allowed(spec)
        session.model_spec = spec
        session.trace = session.original_trace = session.recommendation = session.average = None
        session.layers = None
        ctx.run(session, lambda job, loaded: None, name="switch model", edited=False)
        status = manager.status()
        return model_markdown(status), model_line(status, edit_batches(session)), session

    outputs = [info, header, ctx.session]
    load_event = ctx.components["demo"].load(
        show_model, [ctx.session], outputs, concurrency_id=MODEL_QUEUE, api_visibility="private"
    )
    switch_event = switch.click(switch_model, [choice, ctx.session], outputs, concurrency_id=MODEL_QUEUE, api_name="switch_model")
    def refresh_header(session: SessionState | None) -> str:
        return model_line(manager.status(), edit_batches(ctx.session_of(session)))

    return ModelTab(info, choice, switch, refresh_header, [load_event, switch_event])
