"""The Locus page: header, tabs, and the wiring between tabs."""

from __future__ import annotations

import gradio as gr

from ui.context import AppContext
from ui.examples import load_examples
from ui.models import ModelManager
from ui.runner import ModelRunner
from ui.tabs import model_tab, test_tab, trace_tab

TITLE = "Locus"
SUBTITLE = "Where does a language model keep a fact, and can we rewrite it there? Trace it, choose the layers, edit, test."

CSS = """
.gradio-container { max-width: 1500px !important; }
#locus-title h1 { margin-bottom: 0; }
.caption { font-size: 0.95em; color: var(--body-text-color-subdued); }
#trace-tokens .textspan { font-size: 1.1em; }
"""


def theme() -> gr.themes.Base:
    """Large, high-contrast text: the page is projected in lectures."""
    return gr.themes.Default(primary_hue="violet", text_size="lg", radius_size="sm")


def build_app(manager: ModelManager, runner: ModelRunner) -> gr.Blocks:
    """The whole page; every model operation goes through `runner` with `manager`'s model."""
    context = AppContext(manager=manager, runner=runner)
    examples = load_examples()
    with gr.Blocks(title=TITLE) as demo:
        context.components["demo"] = demo
        context.session = gr.State(None)
        gr.Markdown(f"# {TITLE}\n{SUBTITLE}", elem_id="locus-title")
        header = gr.Markdown(elem_id="model-line")
        with gr.Tabs(selected="trace", elem_id="tabs"):
            model_tab.build(context, header)
            trace_tab.build(context, examples)
            test_tab.build(context)
    demo.queue(default_concurrency_limit=1)
    return demo


def launch_options() -> dict:
    """Arguments of `demo.launch` that style the page (gradio 6 takes theme and CSS here)."""
    return {"theme": theme(), "css": CSS}
