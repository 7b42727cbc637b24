"""Trace tab: prompt, subject (highlighted as typed), answer; preview, then exact cells streaming in."""

from __future__ import annotations

import contextlib
import copy
import functools
import html
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import InputError, LocusError
from core.kinds import HEADS, KINDS, TRACE_KINDS
from core.predict import next_token_probabilities, top_tokens
from core.tokens import encode_prompt, target_token_ids
from tracer import figures
from tracer.modes import AUTO, CORRUPTIONS, HEAD_POSITIONS, METRICS, corruption_words
from tracer.noise import NOISE_TYPES
from tracer.preview import preview_trace
from tracer.problem import MAX_TRACE_TOKENS
from tracer.trace import TraceSettings, trace_stream
from ui import captions, limits
from ui.context import MODEL_EVENTS, AppContext, stop_jobs
from ui.display import display_token, percent
from ui.downloads import trace_downloads
from ui.errors import friendly
from ui.examples import Example
from ui.runner import HEARTBEAT, QueueStatus
from ui.session import SessionState

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
    refresh_typing: list[tuple[Any, list, list]]  # (handler, inputs, outputs) to rerun once the model is ready


def highlighted_tokens(tokenizer: Any, prompt: str, subject: str) -> tuple[list[tuple[str, str]], str]:
    """The prompt's tokens, the subject's marked, and a hint when the subject can't be found."""
    if not prompt or not prompt.strip():
        return [], "Type a prompt that the model should complete, e.g. *The Eiffel Tower is located in the city of*."
    try:
        encoded = encode_prompt(tokenizer, prompt)
    except LocusError as error:
        return [], html.escape(str(error))
    begin = end = -1
    hint = f"{len(encoded)} tokens."
    if subject and subject.strip():
        try:
            begin, end = encoded.subject_range(subject)
            hint = f"{len(encoded)} tokens; the subject covers {end - begin} of them (highlighted)."
        except LocusError as error:
            hint = html.escape(str(error))
    else:
        hint = f"{len(encoded)} tokens. Now type the subject: the words of the prompt that name the thing."
    return [
        (token, "subject" if begin <= index < end else "token") for index, token in enumerate(encoded.tokens)
    ], hint


CORRUPTION_CHOICES = [
    ("noise on the subject's words (ROME)", "noise"),
    ("replace the subject (one counterfactual subject)", "replace"),
    ("resample (another known subject per sample)", "resample"),
]
METRIC_CHOICES = [("probability (ROME)", "prob"), ("logit difference", "logit-diff"), ("log probability", "logprob")]
HEAD_POSITION_CHOICES = [("the last token", "last"), ("every token from the subject on", "all")]
TRACE_KIND_CHOICES = [*figures.KIND_CHOICES, (figures.kind_title(HEADS), HEADS)]


def settings_from_inputs(
    answer: str,
    kinds: list[str],
    samples: Any,
    noise: str,
    window: Any,
    seed: Any,
    noise_type: str,
    num_layers: int | None = None,
    corruption: str | None = "noise",
    replacement: str | None = AUTO,
    metric: str | None = "prob",
    head_positions: str | None = "last",
) -> TraceSettings:
    """A TraceSettings from the form, every value within its bounds (InputError with a plain message)."""
    kinds = kinds if isinstance(kinds, (list, tuple)) else [kinds]
    corruption = limits.choice(corruption or "noise", "Corruption", CORRUPTIONS)
    replacement = limits.text(replacement if replacement is not None else AUTO, "Replacement subject", limit=200).strip() or AUTO
    settings = TraceSettings(
        kinds=tuple(limits.choice(kind, "What to restore", TRACE_KINDS) for kind in kinds or ()),
        corruption=corruption,
        replacement=replacement if corruption == "replace" else None,
        metric=limits.choice(metric or "prob", "Metric", METRICS),
        head_positions=limits.choice(head_positions or "last", "Heads restored at", HEAD_POSITIONS),
        samples=limits.whole(samples, "Noise samples", limits.SAMPLES),
        noise=limits.text(noise, "Noise", limit=40).strip() or "3x",
        noise_type=limits.choice(noise_type or "gaussian", "Noise type", NOISE_TYPES),
        window=limits.whole(window, "Window", (1, num_layers or limits.MAX_LAYER_TEXT)),
        seed=limits.whole(seed if seed not in (None, "") else 1, "Seed", limits.SEED),
        answer=limits.text(answer, "The answer", limit=200).strip() or None,
    )
    settings.validate()
    return settings


def checked_prompt(ctx: AppContext, session: SessionState, prompt_text: Any, subject_text: Any) -> tuple[str, str]:
    """(prompt, subject) refused at once when too long, empty, or when the subject is not in the prompt."""
    prompt_text = limits.text(prompt_text, "The prompt")
    subject_text = limits.text(subject_text, "The subject", limit=500)
    if not prompt_text.strip():
        raise InputError("The prompt is empty: type a sentence that the model should complete.")
    if not subject_text.strip():
        raise InputError("The subject is empty: type the words of the prompt that name the subject.")
    tokenizer = ctx.manager.display_tokenizer(session.model_spec)
    if tokenizer is not None:  # with the model still loading, the job checks the same once it runs
        encode_prompt(tokenizer, prompt_text, max_tokens=MAX_TRACE_TOKENS).subject_range(subject_text)
    return prompt_text, subject_text


def checked_request(ctx: AppContext, session: SessionState, prompt_text: Any, subject_text: Any, *form: Any) -> tuple[str, str, TraceSettings]:
    """(prompt, subject, settings) of a trace or preview request, every input checked before any job is queued.

    `form`: answer, kinds, samples, noise, window, seed, noise type, corruption, replacement, metric, head positions.
    """
    prompt_text, subject_text = checked_prompt(ctx, session, prompt_text, subject_text)
    answer, kinds, samples, noise, window, seed, noise_type, *modes = form
    settings = settings_from_inputs(answer, kinds, samples, noise, window, seed, noise_type, ctx.num_layers(session), *modes)
    return prompt_text, subject_text, settings


def status_markdown(result: Any, *, stage: str, edited: bool) -> str:
    """What the status line says about a (partial) trace."""
    model_state = " on **your edited model**" if edited else ""
    settings = result.settings
    if settings.metric == "prob":
        clean, corrupted = percent(result.high), percent(result.low)
    else:
        clean, corrupted = f"{result.high:.3f}", f"{result.low:.3f}"
    corruption = corruption_words(settings.corruption, getattr(result, "replacements", []), settings.samples)
    head = (
        f"Answer followed: **{html.escape(display_token(result.answer))}** · score: {html.escape(figures.result_label(result))} · "
        f"clean run {clean} · with the subject {html.escape(corruption)} {corrupted}{model_state}"
    )
    if stage == "preview":
        return f"{head}  \nApproximate preview shown; computing the exact trace…"
    if stage == "preview only":
        return f"{head}  \nApproximate preview (attribution patching) in {result.elapsed:.2f} s: press *Trace* for exact values."
    if stage == "exact":
        return f"{head}  \nExact trace {result.fraction_done():.0%} done (faded cells are still the preview)."
    return f"{head}  \nExact trace done in {result.elapsed:.1f} s ({result.settings.samples} noise samples)."


# --- handlers (module level: each takes the app context first, then the component values) ------

def show_tokens(ctx: AppContext, prompt_text: str, subject_text: str, session: SessionState | None):
    """The prompt's tokens with the subject highlighted, and a hint (uses a private tokenizer copy, no model job)."""
    session = ctx.session_of(session)
    tokenizer = ctx.manager.display_tokenizer(session.model_spec)
    if tokenizer is None:
        return [], "The model is still loading…"
    return highlighted_tokens(tokenizer, prompt_text, subject_text)


def show_prediction(ctx: AppContext, prompt_text: str, answer_text: str, session: SessionState | None):
    """The model's top next token after the prompt (with the session's edits), and the typed answer's probability.

    While the model is busy with another job, the line says so at once (the last prediction, of another
    input, is not left standing); the answer replaces it when the job has run.
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

    def work(job, loaded):
        probabilities = next_token_probabilities(loaded, prompt_text)
        top = top_tokens(loaded, probabilities, 1)[0]
        chosen = None
        if answer_text and answer_text.strip():
            ids = target_token_ids(loaded.tokenizer, answer_text.strip(), prompt=prompt_text)
            chosen = (loaded.tokenizer.decode(ids[:1]), float(probabilities[ids[0]]))
        return top, chosen

    try:
        job = ctx.submit(session, work, name="top prediction", lane="short")
        status = ctx.runner.queue_status(job)
        if status is not None and status.running is not None:
            yield prediction_waiting(status), session
        for _ in ctx.follow(job, None):
            yield gr.skip(), gr.skip()  # still waiting: the line keeps saying so
        top, chosen = job.result
    except LocusError as error:
        yield html.escape(str(error)), session
        return
    edited = " (with your edits)" if session.has_edits() else ""
    text = f"Model's top prediction{edited}: **{html.escape(display_token(top.token))}** ({percent(top.probability)})."
    if chosen is not None:
        text += f"  \nYour answer starts with **{html.escape(display_token(chosen[0]))}**: {percent(chosen[1])}."
    else:
        text += " Leave *Answer* empty to trace it."
    yield text, session


def prediction_waiting(status: QueueStatus) -> str:
    """The prediction line while its job waits: what runs now, and when the prediction will."""
    return f"⏳ *Top prediction: {html.escape(status.describe())}*"


TRACE_OUTPUTS = 10  # status, three heatmaps, JSON, three downloads, the heads heatmap, session


@friendly
def run_trace(
    ctx: AppContext,
    prompt_text: str,
    subject_text: str,
    answer_text: str,
    kind_list: list[str],
    sample_count: float,
    noise_text: str,
    window_size: float,
    seed_value: float,
    noise_kind: str,
    corruption: str = "noise",
    replacement: str = AUTO,
    metric: str = "prob",
    head_positions: str = "last",
    session: SessionState | None = None,
    progress=gr.Progress(),
):
    """Preview first, then the exact trace's cells as they finish (at most every STREAM_INTERVAL_S), then downloads."""
    session = ctx.session_of(session)
    prompt_text, subject_text, settings = checked_request(
        ctx, session, prompt_text, subject_text, answer_text, kind_list, sample_count, noise_text, window_size, seed_value,
        noise_kind, corruption, replacement, metric, head_positions,
    )
    edited = session.has_edits()
    skip = tuple(gr.skip() for _ in range(TRACE_OUTPUTS))

    def work(job, loaded):
        job.progress(0.0, "Approximate preview…")
        preview = preview_trace(loaded, prompt_text, subject_text, settings)
        job.emit(("preview", preview))
        final, filled = None, -1.0
        with contextlib.closing(trace_stream(loaded, prompt_text, subject_text, settings)) as stream:
            for update in stream:
                final = update.result
                job.progress(update.fraction, f"Exact trace: {update.message}")
                if update.result.fraction_done() != filled:  # new cells (not only a block run): a new heatmap
                    filled = update.result.fraction_done()
                    job.emit(("exact", copy.deepcopy(update.result)))
                job.safe_point()  # other visitors' short jobs may run here
        return preview, final

    job = ctx.submit(session, work, name="trace")
    preview = None
    last_sent = 0.0
    waiting = None
    for item in ctx.follow(job, progress):
        if item is not HEARTBEAT:
            waiting = item
        if waiting is None or (time.monotonic() - last_sent < STREAM_INTERVAL_S and item is not HEARTBEAT):
            yield skip
            continue
        stage, result = waiting
        waiting = None
        if stage == "preview":
            preview = result
        last_sent = time.monotonic()
        yield (
            status_markdown(result, stage=stage, edited=edited),
            *(figures.trace_heatmap(result, kind, preview=preview) for kind in KINDS),
            *skip[:4],
            figures.heads_heatmap(result, preview=preview),
            session,
        )
    preview, result = job.result
    session.trace, session.trace_edited = result, edited
    if not edited:
        session.original_trace = result
    paths = trace_downloads(result, session.files_folder("trace"))
    yield (
        status_markdown(result, stage="done", edited=edited),
        *(figures.trace_heatmap(result, kind) for kind in KINDS),
        result.to_dict(),
        gr.DownloadButton(value=paths["json"], interactive=True),
        gr.DownloadButton(value=paths["csv"], interactive=True),
        gr.DownloadButton(value=paths["html"], interactive=True),
        figures.heads_heatmap(result),
        session,
    )


@friendly
def run_preview(
    ctx: AppContext,
    prompt_text: str,
    subject_text: str,
    answer_text: str,
    kind_list: list[str],
    sample_count: float,
    noise_text: str,
    window_size: float,
    seed_value: float,
    noise_kind: str,
    corruption: str = "noise",
    replacement: str = AUTO,
    metric: str = "prob",
    head_positions: str = "last",
    session: SessionState | None = None,
    progress=gr.Progress(),
):
    """Only the approximate preview (well under a second on the embedded model): for slow machines and lectures."""
    session = ctx.session_of(session)
    prompt_text, subject_text, settings = checked_request(
        ctx, session, prompt_text, subject_text, answer_text, kind_list, sample_count, noise_text, window_size, seed_value,
        noise_kind, corruption, replacement, metric, head_positions,
    )
    edited = session.has_edits()
    preview = ctx.run(
        session, lambda job, loaded: preview_trace(loaded, prompt_text, subject_text, settings), name="preview", progress=progress
    )
    return (
        status_markdown(preview, stage="preview only", edited=edited),
        *(figures.trace_heatmap(preview, kind) for kind in KINDS),
        preview.to_dict(),
        *(gr.skip() for _ in range(3)),
        figures.heads_heatmap(preview),
        session,
    )


def describe_example(examples: list[Example], prompt_text: str, subject_text: str) -> str:
    """The note of the example whose prompt and subject these are ("" for typed text)."""
    for example in examples:
        if example.prompt == prompt_text and example.subject == subject_text:
            return f"*{html.escape(example.note)}*"
    return ""


# --- the tab -----------------------------------------------------------------------------------

def build(ctx: AppContext, examples: list[Example]) -> TraceTab:
    with gr.Tab("Trace", id="trace"):
        gr.Markdown(captions.TRACE_INTRO)
        with gr.Row():
            prompt = gr.Textbox(
                label="Prompt",
                value=examples[0].prompt if examples else "",
                placeholder="The Eiffel Tower is located in the city of",
                elem_id="trace-prompt",
                scale=4,
            )
            subject = gr.Textbox(
                label="Subject",
                value=examples[0].subject if examples else "",
                placeholder="Eiffel Tower",
                elem_id="trace-subject",
                scale=2,
            )
            answer = gr.Textbox(
                label="Answer (empty = the model's top prediction)",
                placeholder="(top prediction)",
                elem_id="trace-answer",
                scale=2,
            )
        with gr.Row():
            tokens = gr.HighlightedText(
                label="Tokens (subject highlighted)",
                color_map={"subject": SUBJECT_COLOR, "token": TOKEN_COLOR},
                show_legend=False,
                show_inline_category=False,
                combine_adjacent=False,
                elem_id="trace-tokens",
                scale=3,
            )
            with gr.Column(scale=2):
                token_hint = gr.Markdown(elem_id="trace-token-hint")
                prediction = gr.Markdown(elem_id="trace-prediction")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                kinds = gr.CheckboxGroup(TRACE_KIND_CHOICES, value=list(KINDS), label="What to restore", elem_id="trace-kinds")
                samples = gr.Slider(1, 50, value=10, step=1, label="Noise samples", elem_id="trace-samples")
                window = gr.Slider(1, 30, value=10, step=1, label="Window (layers, MLP and attention)", elem_id="trace-window")
            with gr.Row():
                noise = gr.Textbox(
                    value="3x", label="Noise (3x = three times the embeddings' spread, or a number)", elem_id="trace-noise"
                )
                noise_type = gr.Radio(["gaussian", "uniform"], value="gaussian", label="Noise type")
                seed = gr.Number(value=1, precision=0, label="Seed")
            with gr.Row():
                corruption = gr.Radio(CORRUPTION_CHOICES, value="noise", label="How the subject is corrupted", elem_id="trace-corruption")
                replacement = gr.Textbox(
                    value=AUTO, label="Replacement subject (replace: as many tokens as yours; auto = one from the known facts)",
                    elem_id="trace-replacement",
                )
            with gr.Row():
                metric = gr.Radio(METRIC_CHOICES, value="prob", label="Score of the answer", elem_id="trace-metric")
                head_positions = gr.Radio(
                    HEAD_POSITION_CHOICES, value="last", label="Single heads restored at", elem_id="trace-head-positions"
                )
            gr.Markdown(captions.TRACE_MODES, elem_classes=["caption"])
        with gr.Row():
            run = gr.Button("Trace", variant="primary", elem_id="trace-run", scale=3)
            preview_only = gr.Button("Preview (instant)", elem_id="trace-preview", scale=2)
            stop = gr.Button("Stop", variant="stop", elem_id="trace-stop", scale=1)
        progress_line = gr.Markdown(elem_id="trace-progress", elem_classes=["progress-line"])
        example_set = gr.Examples(
            [[example.prompt, example.subject, example.answer] for example in examples],
            inputs=[prompt, subject, answer],
            example_labels=[example.label for example in examples],
            label="Examples (one click traces them)",
            elem_id="trace-examples",
        )
        example_notes = gr.Markdown(elem_id="trace-example-note")
        status = gr.Markdown(elem_id="trace-status")
        plots: dict[str, gr.Plot] = {}
        with gr.Row(equal_height=True):
            for kind in KINDS:
                with gr.Column(min_width=320):
                    plots[kind] = gr.Plot(label=figures.kind_title(kind), elem_id=f"trace-plot-{kind}", show_label=False)
                    gr.Markdown(captions.HEATMAP[kind], elem_classes=["caption"])
        heads_plot = gr.Plot(label=figures.kind_title(HEADS), elem_id="trace-plot-heads", show_label=False)
        gr.Markdown(captions.HEADS_HEATMAP, elem_classes=["caption"])
        with gr.Row():
            download_json = gr.DownloadButton("Download JSON", interactive=False, elem_id="trace-download-json", size="sm")
            download_csv = gr.DownloadButton("Download CSV", interactive=False, elem_id="trace-download-csv", size="sm")
            download_html = gr.DownloadButton(
                "Download interactive HTML", interactive=False, elem_id="trace-download-html", size="sm"
            )
        with gr.Accordion("Raw result (JSON)", open=False):
            result_json = gr.JSON(elem_id="trace-json")

    # --- typing: tokens highlighted as typed, the model's top prediction shown -------------------
    typing = dict(concurrency_id="typing", concurrency_limit=1, show_progress="hidden", trigger_mode="always_last")
    for component in (prompt, subject):
        component.change(ctx.bind(show_tokens), [prompt, subject, ctx.session], [tokens, token_hint], api_visibility="private", **typing)
    for component in (prompt, answer):
        component.change(
            ctx.bind(show_prediction),
            [prompt, answer, ctx.session],
            [prediction, ctx.session],
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
            **MODEL_EVENTS,
        )
    refresh_typing = [
        (ctx.bind(show_tokens), [prompt, subject, ctx.session], [tokens, token_hint]),
        (ctx.bind(show_prediction), [prompt, answer, ctx.session], [prediction, ctx.session]),
    ]

    # --- the trace --------------------------------------------------------------------------------
    inputs = [prompt, subject, answer, kinds, samples, noise, window, seed, noise_type, corruption, replacement, metric,
              head_positions, ctx.session]
    outputs = [status, plots["hidden"], plots["mlp"], plots["attn"], result_json, download_json, download_csv, download_html,
               heads_plot, ctx.session]
    trace = ctx.bind(run_trace)
    shown = dict(show_progress_on=[progress_line], **MODEL_EVENTS)  # progress and errors under the buttons
    trace_event = run.click(trace, inputs, outputs, api_name="trace", **shown)
    preview_only.click(ctx.bind(run_preview), inputs, outputs, api_name="preview", **shown)
    submit_event = prompt.submit(trace, inputs, outputs, api_visibility="private", **shown)
    example_event = example_set.load_input_event.then(
        functools.partial(describe_example, examples), [prompt, subject], [example_notes], queue=False, api_visibility="private"
    ).then(trace, inputs, outputs, api_visibility="private", **shown)
    stop.click(ctx.bind(stop_jobs), [ctx.session], [status], queue=False, api_visibility="private")
    return TraceTab(
        prompt=prompt, subject=subject, answer=answer, kinds=kinds, samples=samples, noise=noise, window=window, seed=seed,
        noise_type=noise_type, corruption=corruption, replacement=replacement, metric=metric, head_positions=head_positions,
        status=status, plots=plots, result_json=result_json,
        downloads=[download_json, download_csv, download_html], run=run, trace_event=trace_event,
        example_event=example_event, example_fill=example_set.load_input_event, submit_event=submit_event,
        refresh_typing=refresh_typing,
    )
