"""Trace tab: prompt, subject (highlighted as typed), answer; preview, then exact cells streaming in.

Every output says the model state it was computed on (ui/tracing.py); after an edit, undo, reset or import the top
prediction is computed again at once and the heatmaps are marked as computed before the change, with a Refresh
button. Stop leaves the last complete heatmaps. The address bar carries the trace's settings (a link reopens them).
"""

from __future__ import annotations

import functools
import html
import json
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import InputError, LocusError, OperationCancelled
from ui import captions, forms, limits, tracing
from ui.context import MODEL_EVENTS, AppContext, stop_jobs
from ui.downloads import trace_downloads
from ui.errors import as_gradio_error, friendly
from ui.examples import Example
from ui.plots import export_buttons, named
from ui.runner import HEARTBEAT, QueueStatus
from ui.session import SessionState
from ui.tracing import HEADS, KINDS, Shown, TraceForm

STREAM_INTERVAL_S = 0.7  # at most this often a partial heatmap goes to the browser
SUBJECT_COLOR = "#b39ddb"
TOKEN_COLOR = "#eceff1"


@dataclass
class TraceTab:
    prompt: gr.Textbox
    subject: gr.Textbox
    answer: gr.Textbox
    kinds: gr.CheckboxGroup
    samples: gr.Slider
    noise: gr.Textbox
    window: gr.Slider
    seed: gr.Number
    noise_type: gr.Radio
    corruption: gr.Radio
    replacement: gr.Textbox
    metric: gr.Radio
    head_positions: gr.Radio
    status: gr.Markdown
    plots: dict[str, gr.Plot]
    result_json: gr.JSON
    downloads: list[gr.DownloadButton]
    run: gr.Button
    trace_event: Any
    example_event: Any
    example_fill: Any
    submit_event: Any
    refresh_typing: list[tuple[Any, list, list, dict]]  # (handler, inputs, outputs, options) to rerun once the model is ready
    after_change: list[tuple[Any, list, list, dict]]  # (handler, inputs, outputs, options) after an edit, undo, reset, import


# --- handlers (module level: each takes the app context first, then the component values) ------

def show_tokens(ctx: AppContext, prompt_text: str, subject_text: str, session: SessionState | None):
    """The prompt's tokens with the subject highlighted, and a hint (uses a private tokenizer copy, no model job)."""
    session = ctx.session_of(session)
    tokenizer = ctx.manager.display_tokenizer(session.model_spec)
    if tokenizer is None:
        return [], "The model is still loading…"
    return tracing.highlighted_tokens(tokenizer, prompt_text, subject_text)


def show_prediction(ctx: AppContext, prompt_text: str, answer_text: str, session: SessionState | None):
    """The model's top next token after the prompt (with the session's edits), the model state it was computed on,
    and the typed answer's probability.

    While the model is busy with another job, the line says so at once (the last prediction, of another input or
    other weights, is not left standing); the answer replaces it when the job has run.
    """
    session = ctx.session_of(session)
    if not prompt_text or not prompt_text.strip():
        yield "", session
        return
    try:
        ctx.limits.check_prompt_tokens(ctx.manager.display_tokenizer(session.model_spec), prompt_text)
        limits.text(answer_text, "The answer", limit=200)
    except InputError as error:
        yield html.escape(str(error)), session
        return
    try:
        job = ctx.submit(session, tracing.prediction_work(session, prompt_text, answer_text), name="top prediction",
                         lane="short")
        status = ctx.runner.queue_status(job)
        if status is not None and status.running is not None:
            yield prediction_waiting(status, session), session
        for _ in ctx.follow(job, None):
            yield gr.skip(), gr.skip()  # still waiting: the line keeps saying so
        top, chosen, state = job.result
    except LocusError as error:
        yield html.escape(str(error)), session
        return
    yield tracing.prediction_text(top, chosen, state), session


def refresh_prediction(ctx: AppContext, prompt_text: str, answer_text: str, session: SessionState | None):
    """After an edit, undo, reset or import: the prediction line says at once that it is computed again, then shows
    the new weights' answer (never the old weights' answer as current)."""
    session = ctx.session_of(session)
    if prompt_text and prompt_text.strip():
        yield tracing.prediction_pending(session), session
    yield from show_prediction(ctx, prompt_text, answer_text, session)


def prediction_waiting(status: QueueStatus, session: SessionState) -> str:
    """The prediction line while its job waits: what runs now, and when the prediction will."""
    return tracing.prediction_pending(session, status.describe())


def mark_stale(ctx: AppContext, shown: Shown | None, session: SessionState | None):
    """The note over the heatmaps (and its Refresh button) when they were computed on other weights than now."""
    note = tracing.stale_note(shown, ctx.session_of(session))
    return gr.Markdown(value=note, visible=bool(note)), gr.Button(visible=bool(note))


def heads_shown(kinds: list[str] | None):
    """The heads heatmap's box is shown only while single heads are chosen (no empty box otherwise)."""
    return gr.Column(visible=HEADS in (kinds or []))


def trace_started(kinds: list[str] | None):
    """Trace or Preview pressed: the heads heatmap's box shown if heads are traced; the note of an example or link
    cleared (the status speaks now)."""
    return heads_shown(kinds), ""


SKIP = object()  # an output left as it is


def trace_outputs(*, status: Any = SKIP, plots: dict | None = None, data: Any = SKIP, downloads: dict | None = None,
                  stale: str | None = None, shown: Any = SKIP, session: Any = SKIP) -> tuple:
    """The values of TRACE_OUTPUTS: status, hidden, mlp, attn, JSON, 3 downloads, heads, stale note, Refresh, shown,
    session (`stale` "" hides the note)."""
    def value(item: Any) -> Any:
        return gr.skip() if item is SKIP else item

    plots = plots or {}
    files = [gr.DownloadButton(value=downloads[key], interactive=True) if downloads else gr.skip() for key in ("json", "csv", "html")]
    note = (gr.skip(), gr.skip()) if stale is None else (gr.Markdown(value=stale, visible=bool(stale)), gr.Button(visible=bool(stale)))
    return (
        value(status), *(plots.get(kind, gr.skip()) for kind in KINDS), value(data), *files, plots.get(HEADS, gr.skip()),
        *note, value(shown), value(session),
    )


def drawn(result: Any, state: Any, preview: Any = None, name: str = "") -> dict:
    """The four heatmaps of a result, their downloads named after the subject."""
    return {kind: named(figure, f"trace-{result.subject}-{kind}{'-' + name if name else ''}")
            for kind, figure in tracing.heatmaps(result, preview, state).items()}


def checked_form(ctx: AppContext, session: SessionState, form: TraceForm):
    """The tracer's settings of the form, the window within the model, the subject found in the prompt (before any
    job is queued)."""
    tracing.check_subject(ctx.manager.display_tokenizer(session.model_spec), form)
    return form.settings(ctx.num_layers(session))


@friendly
def run_trace(ctx: AppContext, form: TraceForm, shown: Shown | None = None, session: SessionState | None = None,
              progress=gr.Progress()):
    """Preview first, then the exact trace's cells as they finish (at most every STREAM_INTERVAL_S), then downloads.

    Stopped, the last complete heatmaps stay (or the partial ones, labelled so) and the status says "Stopped".
    """
    session = ctx.session_of(session)
    settings = checked_form(ctx, session, form)
    job = ctx.submit(session, tracing.trace_work(session, form.prompt, form.subject, settings), name="trace")
    preview, latest, last_sent, waiting = None, None, 0.0, None
    try:
        for item in ctx.follow(job, progress):
            if item is not HEARTBEAT:
                waiting = item
            if waiting is None or (time.monotonic() - last_sent < STREAM_INTERVAL_S and item is not HEARTBEAT):
                yield trace_outputs()
                continue
            stage, result, state = waiting
            waiting, latest = None, (result, state)
            if stage == "preview":
                preview = result
            last_sent = time.monotonic()
            yield trace_outputs(status=tracing.status_markdown(result, stage=stage, state=state),
                                plots=drawn(result, state, preview, "partial"), stale="", session=session)
    except OperationCancelled:
        yield stopped_outputs(shown, latest, preview)
        return
    except Exception as error:  # the failure's message in the page; the heatmaps of the last complete result back
        if latest is not None:
            yield stopped_outputs(shown, None, None, status=SKIP)
        raise as_gradio_error(error) from None
    preview, result, state = job.result
    session.trace, session.trace_edited = result, bool(state.batches)
    if not state.batches:
        session.original_trace = result
    paths = trace_downloads(result, session.files_folder("trace"), tracing.result_dict(result, state))
    yield trace_outputs(
        status=tracing.status_markdown(result, stage="done", state=state), plots=drawn(result, state),
        data=tracing.result_dict(result, state), downloads=paths, stale="",
        shown=Shown(form=form, result=result, stage="trace", state=state), session=session,
    )


def stopped_outputs(shown: Shown | None, latest: tuple | None, preview: Any, status: Any = None) -> tuple:
    """After Stop: the last complete result's heatmaps again, or the partial ones (labelled so), and "Stopped"."""
    partial, state = latest if latest is not None else (None, None)
    if status is None:
        status = tracing.stopped_markdown(shown, partial, state)
    if shown is not None:
        return trace_outputs(status=status, plots=drawn(shown.result, shown.state))
    if partial is not None:
        return trace_outputs(status=status, plots=drawn(partial, state, preview, "partial"))
    return trace_outputs(status=status)


@friendly
def run_preview(ctx: AppContext, form: TraceForm, shown: Shown | None = None, session: SessionState | None = None,
                progress=gr.Progress()):
    """Only the approximate preview (well under a second on the embedded model): for slow machines and lectures."""
    session = ctx.session_of(session)
    settings = checked_form(ctx, session, form)
    preview, state = ctx.run(session, tracing.preview_work(session, form.prompt, form.subject, settings), name="preview",
                             progress=progress)
    return trace_outputs(
        status=tracing.status_markdown(preview, stage="preview only", state=state), plots=drawn(preview, state),
        data=tracing.result_dict(preview, state), stale="",
        shown=Shown(form=form, result=preview, stage="preview", state=state), session=session,
    )


def refresh_trace(ctx: AppContext, shown: Shown | None, session: SessionState | None, progress=gr.Progress()):
    """Refresh: the heatmaps on screen computed again, with the same settings, on the session's weights now."""
    if shown is None or shown.form is None:
        raise gr.Error("There is nothing to refresh: run a trace first.")
    if shown.stage == "preview":
        yield run_preview(ctx, shown.form, shown, session, progress)
        return
    yield from run_trace(ctx, shown.form, shown, session, progress)


def describe_example(examples: list[Example], prompt_text: str, subject_text: str) -> str:
    """The note of the example whose prompt and subject these are ("" for typed text)."""
    for example in examples:
        if example.prompt == prompt_text and example.subject == subject_text:
            return f"*{html.escape(example.note)}*"
    return ""


FORM_FIELDS = TraceForm.field_names()


def open_link(query: str | None):
    """The page opened from a link (`?prompt=...&subject=...&metric=...`): its trace settings filled in (Advanced
    opened when they differ from the defaults), and a line saying so (and what in it could not be used)."""
    form, problems = tracing.form_of_query(query or "")
    if form is None:
        return (*(gr.skip() for _ in FORM_FIELDS), gr.skip(), gr.skip())
    values = [list(value) if isinstance(value, tuple) else value for value in (getattr(form, name) for name in FORM_FIELDS)]
    note = "Settings from the link are filled in: press **Trace** (or **Preview**) to compute them."
    if problems:
        note += "  \n" + "  \n".join(f"Not used from the link: {html.escape(problem)}" for problem in problems)
    return (*values, gr.Accordion(open=form.advanced_changed()), note)


URL_JS = """
(...values) => {
  const names = %s, defaults = %s;
  const params = new URLSearchParams(window.location.search);
  names.forEach((name, index) => {
    let value = values[index];
    value = Array.isArray(value) ? value.join(',') : (value === null || value === undefined ? '' : String(value));
    if (index >= 2 && value === defaults[index]) { params.delete(name); } else { params.set(name, value); }
  });
  window.history.replaceState(null, '', window.location.pathname + '?' + params.toString());
  return [];
}
"""


def url_js() -> str:
    """Client-side: the address bar set to the trace's settings (prompt and subject always, the rest when not default)."""
    names = [tracing.param_of(name) for name in FORM_FIELDS]
    defaults = [",".join(value) if isinstance(value, tuple) else "" if value is None else str(value)
                for value in (TraceForm.default(name) for name in FORM_FIELDS)]
    return URL_JS % (json.dumps(names), json.dumps(defaults))


# --- the tab -----------------------------------------------------------------------------------

def build(ctx: AppContext, examples: list[Example]) -> TraceTab:
    with gr.Tab("Trace", id="trace"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Row(elem_classes=["compact-row"]):
                    prompt = gr.Textbox(
                        label="Prompt", value=examples[0].prompt if examples else "",
                        placeholder="The Eiffel Tower is located in the city of", elem_id="trace-prompt", scale=4,
                    )
                    subject = gr.Textbox(
                        label="Subject", value=examples[0].subject if examples else "", placeholder="Eiffel Tower",
                        elem_id="trace-subject", scale=2,
                    )
                    answer = gr.Textbox(label="Answer", placeholder="(top prediction)", elem_id="trace-answer",
                                        scale=2)
                with gr.Row(elem_classes=["compact-row"]):
                    tokens = gr.HighlightedText(
                        label="Tokens (subject highlighted)", color_map={"subject": SUBJECT_COLOR, "token": TOKEN_COLOR},
                        show_legend=False, show_inline_category=False, combine_adjacent=False, elem_id="trace-tokens", scale=3,
                    )
                    with gr.Column(scale=2):
                        token_hint = gr.Markdown(elem_id="trace-token-hint")
                        prediction = gr.Markdown(elem_id="trace-prediction")
            with gr.Column(scale=1, min_width=250, elem_id="trace-buttons"):
                run = gr.Button("Trace", variant="primary", elem_id="trace-run")
                with gr.Row(elem_classes=["compact-row"]):
                    preview_only = gr.Button("Preview", elem_id="trace-preview", min_width=100)
                    stop = gr.Button("Stop", variant="secondary", elem_id="trace-stop", min_width=80)
                progress_line = gr.Markdown(elem_id="trace-progress", elem_classes=["progress-line"])
                example_notes = gr.Markdown(elem_id="trace-example-note", elem_classes=["caption"])
        example_set = gr.Examples(
            [[example.prompt, example.subject, example.answer] for example in examples],
            inputs=[prompt, subject, answer],
            example_labels=[example.label.replace(" (project page)", "") for example in examples],
            label="Examples (one click traces them)", elem_id="trace-examples",
        )
        status = gr.Markdown(elem_id="trace-status")
        with gr.Row(elem_classes=["compact-row"]):
            stale = gr.Markdown(visible=False, elem_id="trace-stale")
            refresh = gr.Button("Refresh", visible=False, variant="primary", size="sm", elem_id="trace-refresh", scale=0,
                                min_width=120)
        plots: dict[str, gr.Plot] = {}
        with gr.Row(equal_height=False, elem_id="trace-plots"):
            for kind in KINDS:
                with gr.Column(min_width=320):
                    plots[kind] = gr.Plot(label=tracing.KIND_TITLES[kind], elem_id=f"trace-plot-{kind}", show_label=False)
                    export_buttons(f"trace-plot-{kind}")
                    gr.Markdown(captions.HEATMAP[kind], elem_classes=["caption"])
        gr.Markdown(captions.TRACE_INTRO, elem_classes=["caption"], elem_id="trace-intro")
        with gr.Accordion("Advanced", open=False, elem_id="trace-advanced") as advanced:
            with gr.Row():
                kinds = gr.CheckboxGroup(tracing.TRACE_KIND_CHOICES, value=list(KINDS), label="What to restore", elem_id="trace-kinds")
                samples = gr.Slider(1, 50, value=10, step=1, label="Noise samples", elem_id="trace-samples")
                window = gr.Slider(1, 30, value=10, step=1, label="Window (layers, MLP and attention)", elem_id="trace-window")
            with gr.Row():
                noise = gr.Textbox(
                    value="3x", label="Noise (3x = three times the embeddings' spread, or a number)", elem_id="trace-noise"
                )
                noise_type = gr.Radio(tracing.NOISE_TYPE_CHOICES, value="gaussian", label="Noise type", elem_id="trace-noise-type")
                seed = gr.Number(value=1, precision=0, label="Seed", elem_id="trace-seed")
            with gr.Row():
                corruption = gr.Radio(tracing.CORRUPTION_CHOICES, value="noise", label="How the subject is corrupted",
                                      elem_id="trace-corruption")
                replacement = gr.Textbox(
                    value=tracing.AUTO, elem_id="trace-replacement",
                    label="Replacement subject (replace: as many tokens as yours; auto = a known subject of the same kind)",
                )
            with gr.Row():
                metric = gr.Radio(tracing.METRIC_CHOICES, value="prob", label="Score of the answer", elem_id="trace-metric")
                head_positions = gr.Radio(
                    tracing.HEAD_POSITION_CHOICES, value="last", label="Single heads restored at", elem_id="trace-head-positions"
                )
            gr.Markdown(captions.TRACE_MODES, elem_classes=["caption"])
        with gr.Column(visible=False, elem_id="trace-heads-box") as heads_box:
            heads_plot = gr.Plot(label=tracing.KIND_TITLES[HEADS], elem_id="trace-plot-heads", show_label=False)
            export_buttons("trace-plot-heads")
            gr.Markdown(captions.HEADS_HEATMAP, elem_classes=["caption"])
        with gr.Row():
            download_json = gr.DownloadButton("Download JSON", interactive=False, elem_id="trace-download-json", size="sm")
            download_csv = gr.DownloadButton("Download CSV", interactive=False, elem_id="trace-download-csv", size="sm")
            download_html = gr.DownloadButton(
                "Download interactive HTML", interactive=False, elem_id="trace-download-html", size="sm"
            )
        with gr.Accordion("Raw result (JSON)", open=False):
            result_json = gr.JSON(elem_id="trace-json")
        shown = gr.State(None)  # this page's heatmaps: Shown (what computed them, on which weights)
        link_query = gr.Textbox(visible=False)

    # --- typing: tokens highlighted as typed, the model's top prediction shown -------------------
    typing = dict(concurrency_id="typing", concurrency_limit=1, show_progress="hidden", trigger_mode="always_last")
    for component in (prompt, subject):
        component.change(ctx.bind(show_tokens), [prompt, subject, ctx.session], [tokens, token_hint], api_visibility="private", **typing)
    predict = dict(api_visibility="private", show_progress="hidden", trigger_mode="always_last", **MODEL_EVENTS)
    for component in (prompt, answer):
        component.change(ctx.bind(show_prediction), [prompt, answer, ctx.session], [prediction, ctx.session], **predict)
    refresh_typing = [  # each in its typing event's queue, so an answer about older text never lands after a newer one
        (ctx.bind(show_tokens), [prompt, subject, ctx.session], [tokens, token_hint], typing),
        (ctx.bind(show_prediction), [prompt, answer, ctx.session], [prediction, ctx.session], predict),
    ]

    # --- the trace --------------------------------------------------------------------------------
    components = dict(prompt=prompt, subject=subject, answer=answer, kinds=kinds, samples=samples, noise=noise, window=window,
                      seed=seed, noise_type=noise_type, corruption=corruption, replacement=replacement, metric=metric,
                      head_positions=head_positions)
    form_inputs = [components[name] for name in FORM_FIELDS]
    outputs = [status, plots["hidden"], plots["mlp"], plots["attn"], result_json, download_json, download_csv, download_html,
               heads_plot, stale, refresh, shown, ctx.session]
    trace, inputs = forms.bind(ctx, run_trace, TraceForm, components, {"shown": shown})
    shown_progress = dict(show_progress_on=[progress_line], **MODEL_EVENTS)  # progress and errors under the buttons
    private = dict(api_visibility="private", queue=False)
    address = dict(js=url_js(), **private)
    trace_event = run.click(trace, inputs, outputs, api_name="trace", **shown_progress)
    preview_only.click(*forms.bind(ctx, run_preview, TraceForm, components, {"shown": shown}), outputs, api_name="preview",
                       **shown_progress)
    submit_event = prompt.submit(trace, inputs, outputs, api_visibility="private", **shown_progress)
    for button in (run, preview_only):
        button.click(None, form_inputs, None, **address)
        button.click(trace_started, [kinds], [heads_box, example_notes], **private)
    prompt.submit(None, form_inputs, None, **address)
    example_event = example_set.load_input_event.then(
        functools.partial(describe_example, examples), [prompt, subject], [example_notes], **private
    ).then(None, form_inputs, None, **address).then(heads_shown, [kinds], [heads_box], **private).then(
        trace, inputs, outputs, api_visibility="private", **shown_progress
    )
    refresh.click(ctx.bind(refresh_trace), [shown, ctx.session], outputs, api_visibility="private", **shown_progress)
    stop.click(ctx.bind(stop_jobs), [ctx.session], [status], **private)

    # --- a link opens these settings -----------------------------------------------------------------
    ctx.components["demo"].load(
        open_link, [link_query], [*form_inputs, advanced, example_notes], js="() => [window.location.search]", **private,
    )
    after_change = [
        (ctx.bind(mark_stale), [shown, ctx.session], [stale, refresh], dict(queue=False)),
        (ctx.bind(refresh_prediction), [prompt, answer, ctx.session], [prediction, ctx.session],
         dict(show_progress="hidden", **MODEL_EVENTS)),
    ]
    return TraceTab(
        prompt=prompt, subject=subject, answer=answer, kinds=kinds, samples=samples, noise=noise, window=window, seed=seed,
        noise_type=noise_type, corruption=corruption, replacement=replacement, metric=metric, head_positions=head_positions,
        status=status, plots=plots, result_json=result_json,
        downloads=[download_json, download_csv, download_html], run=run, trace_event=trace_event,
        example_event=example_event, example_fill=example_set.load_input_event, submit_event=submit_event,
        refresh_typing=refresh_typing, after_change=after_change,
    )
