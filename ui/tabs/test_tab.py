"""Test tab: before vs after for any prompt; checks of every edit; CounterFact metrics; re-trace; model health."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import InputError, OperationCancelled
from ui import captions, editing, health_view, limits, model_state, testing, tracing
from ui.context import MODEL_EVENTS, AppContext
from ui.controls import job_controls, job_line, wire, wire_stop
from ui.display import display_token, label_value, percent
from ui.errors import friendly
from ui.plots import export_buttons
from ui.runner import HEARTBEAT
from ui.session import SessionState

COMPARE, CHECKS, HEALTH = "test-compare", "test-checks", "test-health"  # outputs whose model state is shown


def predictions_dict(predictions: list[Any], generation: str) -> dict:
    return {"top": [p.to_dict() for p in predictions], "generation": generation}


# --- the CounterFact scores table: editing.metrics_rows with success by generation after S -----------------------

GENERATION_KEYS = [("ES by generation", "ES_gen"), ("PS by generation", "PS_gen"), ("NS by generation", "NS_gen")]
_AFTER_S = editing.METRIC_COLUMNS.index("S") + 1
METRIC_COLUMNS = [*editing.METRIC_COLUMNS[:_AFTER_S], *[title for title, _ in GENERATION_KEYS], *editing.METRIC_COLUMNS[_AFTER_S:]]


def metrics_rows(before: Any, after: Any) -> list[list[Any]]:
    """editing.metrics_rows with ES/PS/NS by greedy generation (SPEC 6) after S (percent; None where not measured)."""
    rows = []
    for row, scores in zip(editing.metrics_rows(before, after), (before, after)):
        generated = [None if getattr(scores, key) is None else round(getattr(scores, key), 1) for _, key in GENERATION_KEYS]
        rows.append([*row[:_AFTER_S], *generated, *row[_AFTER_S:]])
    return rows


# --- handlers ---------------------------------------------------------------------------------

@friendly
def run_compare(ctx: AppContext, prompt_text: str, k: float, new_tokens: float, session: SessionState | None, progress=None):
    """Top-k next tokens and a greedy continuation, on the original model and with the session's edits."""
    session = ctx.session_of(session)
    ctx.limits.check_prompt_tokens(None, prompt_text)  # its length in characters, before anything else
    if not prompt_text.strip():
        raise InputError("The prompt is empty: type a sentence that the model should complete.")
    count = limits.whole(k, "Top-k", limits.TOP_K)
    tokens = limits.whole(new_tokens, "Generated tokens", limits.GENERATED_TOKENS)
    ctx.limits.check_prompt_tokens(ctx.manager.display_tokenizer(session.model_spec), prompt_text)

    def work(job, loaded):
        job.progress(0.1, "Original model…")
        before = testing.predictions_and_continuation(loaded, prompt_text, count, tokens)
        job.progress(0.5, "With your edits…")
        with session.applied(loaded):
            after = testing.predictions_and_continuation(loaded, prompt_text, count, tokens)
        return before, after

    before, after = ctx.run(session, work, name="compare", edited=False, progress=progress)
    model_state.record(session, COMPARE)
    edited = session.has_edits()
    if not edited:
        note = "You have no edits yet, so both sides show the original model. Apply an edit on the **Edit** tab."
    elif before[0][0].token != after[0][0].token:
        note = (
            f"Your edits change the top prediction: **{html.escape(display_token(before[0][0].token))}** "
            f"({percent(before[0][0].probability)}) → **{html.escape(display_token(after[0][0].token))}** "
            f"({percent(after[0][0].probability)})."
        )
    else:
        note = (
            f"Same top prediction before and after: **{html.escape(display_token(after[0][0].token))}** "
            f"({percent(before[0][0].probability)} → {percent(after[0][0].probability)})."
        )
    data = {
        "prompt": prompt_text,
        "edited": edited,
        "before": predictions_dict(*before),
        "after": predictions_dict(*after),
    }
    return label_value(before[0]), label_value(after[0]), before[1], after[1], note, data, session


def refresh_compare(ctx: AppContext, prompt_text: str, k: float, new_tokens: float, session: SessionState | None):
    """After an edit, undo, reset or import: the comparison shown is computed again at once (a prediction is cheap), with
    its model-state note; nothing when none is shown, or when the prompt box no longer holds a valid prompt (the note
    then stays marked, with Refresh)."""
    unchanged = (gr.skip(),) * 9
    if session is None or not model_state.is_stale(session, COMPARE):
        return unchanged
    try:
        values = run_compare(ctx, prompt_text, k, new_tokens, session)
    except gr.Error:
        return unchanged
    session = values[-1]
    return (*values, model_state.note_html(session, COMPARE, "Compare original and edited"), gr.Button(visible=False))


@friendly
def run_checks(ctx: AppContext, session: SessionState | None, progress=None):
    """Rewrite / paraphrase / neighbourhood checks of every applied edit, and CounterFact metrics, before and after."""
    session = ctx.session_of(session)
    edits = editing.applied_records(session)
    imported = list(session.records)
    if not edits and not imported:
        raise InputError("There is nothing to check yet: apply an edit on the Edit tab (or import CounterFact records).")

    def work(job, loaded):
        job.progress(0.05, "Original model…")
        records = editing.with_true_objects(loaded, edits) + imported
        before = editing.score(loaded, records)
        job.safe_point()
        job.progress(0.5, "With your edits…")
        with session.applied(loaded):
            after = editing.score(loaded, records)
        return records, before, after

    records, before, after = ctx.run(session, work, name="check edits", edited=False, lane="long", progress=progress)
    model_state.record(session, CHECKS)
    count = len(edits)
    rows = editing.check_rows(records[:count], before[:count], after[:count])
    metric_slice = slice(count, None) if imported else slice(0, count)
    pre, post = editing.summary(before[metric_slice]), editing.summary(after[metric_slice])
    which = f"the {len(imported)} imported CounterFact record(s)" if imported else f"your {count} edit(s)"
    summary = (
        f"Scores over {which}: efficacy {percent_or_dash(pre.ES)} → **{percent_or_dash(post.ES)}**, "
        f"paraphrases {percent_or_dash(pre.PS)} → **{percent_or_dash(post.PS)}**, "
        f"neighborhood {percent_or_dash(pre.NS)} → **{percent_or_dash(post.NS)}** "
        "(higher is better for all three; the neighborhood should stay high)."
    )
    data = {
        "edits": [dict(zip(editing.CHECK_COLUMNS, row)) for row in rows],
        "metrics_over": "imported" if imported else "edits",
        "pre": pre.to_dict(),
        "post": post.to_dict(),
    }
    return (
        summary,
        gr.Dataframe(value=rows, headers=editing.CHECK_COLUMNS, visible=bool(rows)),
        gr.Dataframe(value=metrics_rows(pre, post), headers=METRIC_COLUMNS, visible=True),
        data,
        session,
    )


@friendly
def run_retrace(ctx: AppContext, session: SessionState | None, progress=gr.Progress()):
    """The last trace again with the session's edits, shown as after-minus-before heatmaps (units of its metric), and
    the model state it was computed on (remembered by the page, to mark it after the next change)."""
    session = ctx.session_of(session)
    last = session.trace
    if last is None:
        raise InputError("There is no trace to repeat: run one on the Trace tab first.")
    if not session.has_edits():
        raise InputError("You have no edits yet, so the model is unchanged: apply an edit on the Edit tab first.")
    before, after, state, reused = ctx.run(session, tracing.retrace_work(session, last), name="re-trace", edited=False,
                                           lane="long", progress=progress)
    if not reused:
        session.original_trace = before
    figures = list(tracing.difference_figures(before, after, state).values())
    columns = [gr.Column(visible=True) for _ in figures]  # each plot with its PNG/SVG buttons, hidden until the first re-trace
    shown = tracing.Shown(form=None, result=after, stage="retrace", state=state)
    return (tracing.retrace_summary(before, after, state), *figures, *columns, gr.Markdown(value="", visible=False),
            gr.Button(visible=False), shown, session)


def mark_retrace_stale(ctx: AppContext, shown: Any, session: SessionState | None):
    """The note over the re-trace (and its button) when it was computed on other weights than the session's now."""
    note = tracing.stale_note(shown, ctx.session_of(session), "These differences")
    return gr.Markdown(value=note, visible=bool(note)), gr.Button(visible=bool(note))


def session_ledger(session: SessionState) -> Any:
    """The session's ledger for its model when it holds edits, else None."""
    ledger = session.ledgers.get(session.model_spec)
    return ledger if editing.ledger_batches(ledger) else None


@friendly
def run_health(ctx: AppContext, session: SessionState | None, progress=None):
    """Perplexity on held-out text and known-fact retention, original vs with the session's edits, with drift warnings.

    Streams the original model's figures first (cached afterwards), then the edited model's.
    """
    session = ctx.session_of(session)
    ledger = session_ledger(session)
    skip = (gr.skip(), gr.skip(), gr.skip(), gr.skip())

    def work(job, loaded):
        return testing.health_original_then_edited(loaded, ledger, job.progress, job.emit, ctx.health_corpus, ctx.health_probes)

    job = ctx.submit(session, work, name="model health", edited=False)
    shown = None
    try:
        for item in ctx.follow(job, progress):
            if item is HEARTBEAT:
                yield skip
                continue
            shown = item
            rows = health_view.health_rows(item)
            status = f"{health_view.original_text(item.unedited)}  \nNow measuring the model with your edits…"
            yield status, gr.Dataframe(value=rows, headers=health_view.HEALTH_COLUMNS, visible=True), item.to_dict(), session
    except OperationCancelled:
        if shown is not None:  # the original model's figures stay, labelled
            yield (f"{health_view.original_text(shown.unedited)}  \n**Stopped before the model with your edits was "
                   "measured: the table shows the original model only.**", skip[1], skip[2], session)
        raise
    model_state.record(session, HEALTH)
    report = job.result
    yield (
        health_view.health_summary(report),
        gr.Dataframe(value=health_view.health_rows(report), headers=health_view.HEALTH_COLUMNS, visible=True),
        report.to_dict(),
        session,
    )


# --- the tab -----------------------------------------------------------------------------------

@dataclass
class TestTab:
    """What the rest of the page uses: the events whose results depend on the session's edits."""

    compare_event: Any
    after_change: list[tuple[Any, list, list, dict]]  # (handler, inputs, outputs, options) after an edit, undo, reset, import


def build(ctx: AppContext) -> TestTab:
    with gr.Tab("Test", id="test") as tab:
        gr.Markdown(captions.TEST_COMPARE)
        with gr.Row():
            prompt = gr.Textbox(
                label="Any prompt", value="The Eiffel Tower is located in the city of", elem_id="test-prompt", scale=4
            )
            top_k = gr.Slider(*limits.TOP_K, value=5, step=1, label="Top-k", scale=1, elem_id="test-topk")
            length = gr.Slider(*limits.GENERATED_TOKENS, value=20, step=1, label="Generated tokens", scale=1,
                               elem_id="test-length")
        compare = gr.Button("Compare original and edited", variant="primary", elem_id="test-compare")
        compare_line = job_line("test-compare")
        compare_note = model_state.state_note(COMPARE, "Compare original and edited", "test-compare-state")
        with gr.Row(equal_height=True):
            with gr.Column():
                gr.Markdown("### Original model")
                before_label = gr.Label(label="Next token (original)", elem_id="test-before-top", show_label=False)
                before_text = gr.Textbox(label="Greedy continuation (original)", lines=3, elem_id="test-before-text")
            with gr.Column():
                gr.Markdown("### With your edits")
                after_label = gr.Label(label="Next token (edited)", elem_id="test-after-top", show_label=False)
                after_text = gr.Textbox(label="Greedy continuation (edited)", lines=3, elem_id="test-after-text")
        summary = gr.Markdown(elem_id="test-summary")
        with gr.Accordion("Raw result (JSON)", open=False):
            compare_json = gr.JSON(elem_id="test-json")

        gr.Markdown("---")
        gr.Markdown(captions.TEST_CHECKS)
        check, check_stop, check_line = job_controls("Check my edits", "test-check", "test-check")
        check_note = model_state.state_note(CHECKS, "Check my edits", "test-check-state")
        check_summary = gr.Markdown(elem_id="test-check-summary")
        checks_table = gr.Dataframe(label="Each edit", interactive=False, wrap=True, elem_id="test-checks", visible=False)
        metrics_table = gr.Dataframe(
            label="CounterFact metrics in percent (imported records, else your edits)", interactive=False,
            elem_id="test-metrics", visible=False,
        )
        with gr.Accordion("Raw result (JSON)", open=False):
            check_json = gr.JSON(elem_id="test-check-json")

        gr.Markdown("---")
        gr.Markdown(captions.TEST_RETRACE)
        retrace, retrace_stop, retrace_line = job_controls(
            "Re-trace the last trace with my edits", "test-retrace", "test-retrace", variant="secondary"
        )
        retrace_status = gr.Markdown(elem_id="test-retrace-status")
        with gr.Row():
            retrace_stale = gr.Markdown(visible=False, elem_id="test-retrace-stale")
            retrace_again = gr.Button("Refresh", visible=False, variant="primary", size="sm", elem_id="test-retrace-refresh",
                                      scale=0, min_width=120)
        retrace_plots, retrace_columns = {}, {}
        with gr.Row(equal_height=True):
            for kind in tracing.KINDS:
                with gr.Column(min_width=320, visible=False, elem_id=f"test-diff-{kind}-box") as retrace_columns[kind]:
                    retrace_plots[kind] = gr.Plot(show_label=False, elem_id=f"test-diff-{kind}")
                    export_buttons(f"test-diff-{kind}")
        retrace_shown = gr.State(None)

        gr.Markdown("---")
        gr.Markdown(health_view.HEALTH_CAPTION)
        health, health_stop, health_line = job_controls("Measure model health", "test-health", "test-health")
        health_note = model_state.state_note(HEALTH, "Measure model health", "test-health-state")
        health_status = gr.Markdown(elem_id="test-health-status")
        health_table = gr.Dataframe(
            headers=health_view.HEALTH_COLUMNS, label="Model health (⚠ = past a warning threshold)", interactive=False,
            elem_id="test-health-table", visible=False,
        )
        with gr.Accordion("Raw result (JSON)", open=False):
            health_json = gr.JSON(elem_id="test-health-json")

    compare_outputs = [before_label, after_label, before_text, after_text, summary, compare_json, ctx.session]
    compare_inputs = [prompt, top_k, length, ctx.session]
    compare_event = wire(ctx, compare_line, functools.partial(gr.on, [compare.click, compare_note.refresh.click]),
                         ctx.bind(run_compare), compare_inputs, compare_outputs, api_name="predict", **MODEL_EVENTS)
    submit_event = wire(ctx, compare_line, prompt.submit, ctx.bind(run_compare), compare_inputs, compare_outputs,
                        api_visibility="private", **MODEL_EVENTS)
    # --- checks of every edit and CounterFact metrics (Refresh: again, after a change of the edits) ---------------
    check_event = wire(
        ctx, check_line, functools.partial(gr.on, [check.click, check_note.refresh.click]), ctx.bind(run_checks),
        [ctx.session], [check_summary, checks_table, metrics_table, check_json, ctx.session], api_name="evaluate",
        **MODEL_EVENTS,
    )
    wire_stop(ctx, check_stop, check_line)
    # --- re-trace with the edits and show the difference -------------------------------------------------
    retrace_outputs = [retrace_status, *retrace_plots.values(), *retrace_columns.values(), retrace_stale, retrace_again, retrace_shown, ctx.session]
    wire(ctx, retrace_line, functools.partial(gr.on, [retrace.click, retrace_again.click]), ctx.bind(run_retrace),
         [ctx.session], retrace_outputs, api_name="retrace", **MODEL_EVENTS)
    wire_stop(ctx, retrace_stop, retrace_line)
    # --- model health: perplexity and retention, original vs edited -------------------------------------
    health_event = wire(
        ctx, health_line, functools.partial(gr.on, [health.click, health_note.refresh.click]), ctx.bind(run_health),
        [ctx.session], [health_status, health_table, health_json, ctx.session], api_name="health", **MODEL_EVENTS,
    )
    wire_stop(ctx, health_stop, health_line)
    # --- which model state each output was computed on: after its own event, and whenever the tab opens ---------
    notes = [compare_note, check_note, health_note]
    model_state.refresh_on(ctx, [compare_note], [compare_event, submit_event])
    model_state.refresh_on(ctx, [check_note], [check_event])
    model_state.refresh_on(ctx, [health_note], [health_event])
    model_state.refresh_on(ctx, notes, [tab.select])
    after_change = [
        (ctx.bind(mark_retrace_stale), [retrace_shown, ctx.session], [retrace_stale, retrace_again], dict(queue=False)),
        (ctx.bind(refresh_compare), compare_inputs, [*compare_outputs, compare_note.note, compare_note.refresh],
         dict(show_progress="hidden", **MODEL_EVENTS)),
    ]
    return TestTab(compare_event=compare_event, after_change=after_change)


def percent_or_dash(value: float | None) -> str:
    """A metric already in percent, or a dash where it does not apply."""
    return "–" if value is None else f"{value:.0f}%"
