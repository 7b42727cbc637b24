"""The Locus page: header, tabs, and the wiring between tabs."""

from __future__ import annotations

import functools
import json
import secrets
from typing import Any

import gradio as gr

from core.facts import known_facts_cache_path, load_known_facts
from editor.layers import layers_text
from editor.methods.settings import default_layers
from ui.context import MODEL_EVENTS, AppContext
from ui.examples import Example, load_examples
from ui.limits import Limits
from ui.models import ModelManager
from ui.plots import EXPORT_JS, PLOT_CSS
from ui.runner import ModelRunner
from ui.session import SessionState
from ui.sessions import KEEP_NOTE, SessionStore
from ui.tabs import averages_tab, edit_tab, model_tab, range_tab, test_tab, trace_tab

TITLE = "Locus"
SUBTITLE = "Where does a language model keep a fact, and can we rewrite it there? Trace it, choose the layers, edit, test."

CSS = """
.gradio-container { max-width: 100% !important; padding-left: 2.5vw !important; padding-right: 2.5vw !important; }
#locus-head { align-items: center; flex-wrap: nowrap; }
#locus-title { flex: 0 1 auto !important; min-width: 0 !important; }
#model-line { flex: 1 1 auto !important; }
#locus-brand { display: flex; align-items: baseline; gap: 0 1em; flex-wrap: wrap; }
#locus-brand h1 { margin: 0; font-size: 2em; font-weight: 700; }
#locus-brand span { color: var(--body-text-color-subdued); font-size: 0.9em; }
@media (max-width: 1500px) { #locus-brand span { display: none; } }
#model-line p { margin: 0; }
#model-line { text-align: right; font-size: 0.9em; }
#trace-buttons button { min-height: 2.6em; }
.caption { font-size: 0.95em; color: var(--body-text-color-subdued); }
#trace-tokens .textspan { font-size: 1.1em; }
.progress-line { min-height: 2.4em; }
#trace-progress { min-height: 1.2em; }
#trace-example-note p { margin: 0; }
#trace-examples button { font-size: 0.9em; padding: 2px 10px; }
#trace-stale, #test-retrace-stale { color: var(--body-text-color); }
#trace-status p { margin: 0.1em 0; }
""" + PLOT_CSS


def theme() -> gr.themes.Base:
    """Large, high-contrast text: the page is projected in lectures."""
    return gr.themes.Default(primary_hue="violet", text_size="lg", radius_size="sm", spacing_size="sm")


def build_app(manager: ModelManager, runner: ModelRunner, limits: Limits | None = None, pool: Any = None,
              sessions: SessionStore | None = None) -> gr.Blocks:
    """The whole page: model work on `runner` with `manager`'s model (averages on `pool`); `sessions` closed by its giver."""
    context = AppContext(manager=manager, runner=runner, limits=limits or Limits(), sessions=sessions or SessionStore(),
                         pool=pool)
    examples = load_examples()
    with gr.Blocks(title=TITLE, delete_cache=(3600, 24 * 3600)) as demo:
        context.components["demo"] = demo
        context.session = gr.State(None)
        # The browser keeps only a random key; the session (and its edits) stays on the server.
        browser_key = gr.BrowserState(None, storage_key="locus-session", secret=secrets.token_hex(16))
        with gr.Row(elem_id="locus-head", equal_height=False):
            gr.HTML(f"<div id='locus-brand'><h1>{TITLE}</h1><span>{SUBTITLE}</span></div>", elem_id="locus-title", scale=2)
            header = gr.Markdown(elem_id="model-line", scale=3)
        context.components["session_ready"] = demo.load(
            context.bind(restore_session), [browser_key, context.session], [context.session, browser_key],
            queue=False, api_visibility="private",
        )
        # Rendered on the Edit tab; the Choose R tab writes the chosen R into it.
        context.components["edit_layers"] = gr.Textbox(
            value="2-6", label="Layers R (from the Choose R tab; e.g. 2-6 or 3,4,5)", elem_id="edit-layers", render=False, scale=2
        )
        with gr.Tabs(selected="trace", elem_id="tabs"):
            model = model_tab.build(context, header)
            trace = trace_tab.build(context, examples)
            averages = averages_tab.build(context)
            ranges = range_tab.build(context)
            edit = edit_tab.build(context)
            test = test_tab.build(context)
        gr.Markdown(KEEP_NOTE, elem_id="keep-note", elem_classes=["caption"])
        wire_tabs(context, trace, ranges, edit, examples)
        wire_model_changes(context, model, header, trace, test, edit)
        wire_model_ready(context, model, trace, averages, ranges, edit)
        context.components["session_ready"].then(*edit.refresh, queue=False, api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    return demo


def wire_tabs(
    context: AppContext,
    trace: trace_tab.TraceTab,
    ranges: range_tab.RangeTab,
    edit: edit_tab.EditTab,
    examples: list,
) -> None:
    """Events that cross tabs: a finished trace redraws the R curve; an example fills the Edit tab's fields."""
    redraw, inputs, outputs = context.components["range_redraw"]
    for event in (trace.trace_event, trace.example_event, trace.submit_event):
        event.then(redraw, inputs, outputs, api_visibility="private", show_progress="hidden")

    trace.example_fill.then(
        functools.partial(example_edit, examples), [trace.prompt, trace.subject], edit.form,
        queue=False, api_visibility="private",
    )


def wire_model_changes(context: AppContext, model: model_tab.ModelTab, header: gr.Markdown, trace: trace_tab.TraceTab,
                       test: test_tab.TestTab, edit: edit_tab.EditTab) -> None:
    """One model state per page: after an edit, undo, reset or import the header says the new state, the Trace tab's
    top prediction and the Test tab's comparison are computed again at once, and the heatmaps and the re-trace are
    marked as computed before it."""
    for event in edit.edit_events:
        event.then(model.refresh_header, [context.session], [header], queue=False, api_visibility="private")
        for handler, inputs, outputs, options in [*trace.after_change, *test.after_change]:
            event.then(handler, inputs, outputs, api_visibility="private", **options)


def example_edit(examples: list[Example], prompt: str, subject: str):
    """The Edit tab's form filled with the suggested edit of the example just clicked (unchanged otherwise)."""
    for example in examples:
        if example.prompt == prompt and example.subject == subject and example.edit:
            return example.edit_fields
    return (gr.skip(),) * 5


def model_facts(loaded) -> dict:
    """What the page adapts to once a model is loaded: its layers, the editor's default R, the facts it knows."""
    layers = default_layers(loaded.layout)
    facts = {"layers": loaded.layout.num_layers, "default_layers": [min(layers), max(layers)], "known_facts": None}
    path = known_facts_cache_path(loaded)
    if path.is_file():
        facts["known_facts"] = len(json.loads(path.read_text())["facts"])
    else:
        facts["known_facts"] = len(load_known_facts())
    return facts


def wire_model_ready(
    context: AppContext,
    model: model_tab.ModelTab,
    trace: trace_tab.TraceTab,
    averages: averages_tab.AveragesTab,
    ranges: range_tab.RangeTab,
    edit: edit_tab.EditTab,
) -> None:
    """Once the model is loaded (page load, model switch): fit the controls to it (each editing method's own settings
    show the model family's defaults) and refresh typed-text hints."""
    outputs = [ranges.first, ranges.last, trace.window, averages.count, context.components["edit_layers"], context.session]
    for event in model.ready_events:
        chained = event.then(context.bind(fit_controls), [context.session], outputs, api_visibility="private",
                             show_progress="hidden", **MODEL_EVENTS)
        chained.then(*edit.fit, api_visibility="private", show_progress="hidden", queue=False)
        redraw, redraw_inputs, redraw_outputs = context.components["range_redraw"]
        chained = chained.then(redraw, redraw_inputs, redraw_outputs, api_visibility="private", show_progress="hidden")
        for handler, inputs, handler_outputs, options in trace.refresh_typing:
            chained = chained.then(handler, inputs, handler_outputs, **options)


def restore_session(ctx: AppContext, key: str | None, session: SessionState | None):
    """The visitor's session: the one this page already has, or the one the browser's key names (after a reload)."""
    if isinstance(session, SessionState):
        ctx.sessions.touch(session)
        if not session.ended:
            return session, gr.skip()
    key, session = ctx.sessions.restore(key, ctx.manager.default_spec)
    return session, key


def fit_controls(ctx: AppContext, session: SessionState | None):
    """The layer sliders, window and fact count fitted to the loaded model; the session's R (or the default)."""
    session = ctx.session_of(session)
    facts = ctx.run(session, lambda job, loaded: model_facts(loaded), name="model facts", edited=False)
    last_layer = facts["layers"] - 1
    if session.layers is None:
        session.layers = tuple(facts["default_layers"])
    first, last = session.layers
    known = facts["known_facts"]
    return (
        gr.Slider(maximum=last_layer, value=first),
        gr.Slider(maximum=last_layer, value=last),
        gr.Slider(maximum=facts["layers"]),
        gr.Slider(maximum=max(2, known), value=min(20, max(2, known))),
        layers_text(range(first, last + 1)),
        session,
    )


def launch_options() -> dict:
    """Arguments of `demo.launch` that style the page (gradio 6 takes theme and CSS here)."""
    return {"theme": theme(), "css": CSS, "head": EXPORT_JS}
