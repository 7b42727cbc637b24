"""Edit tab: a table of requests, a method over R with its own settings, diagnostics, and the history with undo and
health per batch. Everything it asks of the editor goes through ui/editing.py."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import InputError, OperationCancelled
from ui import captions, editing, forms, health_view, limits, model_state
from ui.context import MODEL_EVENTS, AppContext
from ui.controls import job_controls, job_line, wire, wire_stop
from ui.errors import friendly
from ui.forms import Form
from ui.runner import HEARTBEAT
from ui.session import SessionState

REQUEST_HEADERS = [
    "subject",
    "prompt ({} = subject)",
    "new object",
    "current answer (true object)",
    "paraphrases (;-separated, optional)",
    "neighborhood prompts (;-separated, optional)",
]
HISTORY_HEADERS = ["batch", "method", "layers", "requests", "seconds"]
METHODS = editing.method_choices()  # the registry's methods, each with its own settings
METHOD_CHOICES = [(method.label, method.name) for method in METHODS]
FORM_FIELD = "A field of the request form"
HEALTH_HISTORY = "edit-health"  # the health-per-batch table (ui/model_state.py: the edits it was measured on)


@dataclass
class EditTab:
    """What the rest of the page uses: the request form (examples fill it) and the events that change edits."""

    form: list[gr.Textbox]  # subject, prompt template, new object, paraphrases, neighbourhood prompts
    edit_events: list[Any]  # apply, undo, reset, import: the page header follows them
    refresh: tuple[Any, list, list]  # (handler, inputs, outputs) that redraw the history (after a reload)
    fit: tuple[Any, list, list]  # (handler, inputs, outputs) that show the loaded model's defaults of each method


# --- forms -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestForm(Form):
    """The request typed above the table, and the table it joins."""

    subject: str = forms.text(FORM_FIELD)
    prompt: str = forms.text(FORM_FIELD)
    target_new: str = forms.text(FORM_FIELD)
    paraphrases: str = forms.text(FORM_FIELD)
    neighbors: str = forms.text(FORM_FIELD)
    table: Any = forms.raw([])  # rows checked by the handler (the server's --max-requests)

    def row(self) -> list[str]:
        """The typed request as a table row (its current answer not known yet)."""
        return [self.subject, self.prompt, self.target_new, "", self.paraphrases, self.neighbors]


def optional_tokens(value: Any) -> int | None:
    """Covariance corpus tokens: empty or 0 = the method's default."""
    return None if value in (None, "", 0) else limits.whole(value, "Covariance corpus tokens", limits.COVARIANCE_TOKENS)


@dataclass(frozen=True)
class EditForm(Form):
    """The Edit tab's Apply: the requests (table, or the typed request when the table is empty), the method, R, the
    settings every method shares and each method's own (only the chosen method's are kept, checked)."""

    table: Any = forms.raw([])  # rows checked by the handler (the server's --max-requests)
    method: str = forms.checked(editing.method_name, editing.DEFAULT_METHOD)
    layers: str = forms.checked(editing.layer_text, "2-6")  # the model's depth is checked by the handler
    cov_tokens: int | None = forms.checked(optional_tokens)
    steps: int = forms.whole("Optimisation steps", limits.STEPS, editing.SHARED.steps)
    lr: float = forms.real("Learning rate", limits.LEARNING_RATE, editing.SHARED.lr)
    kl_factor: float = forms.real("KL weight", limits.KL_WEIGHT, editing.SHARED.kl_factor)
    clamp_norm: float = forms.real("Clamp", limits.CLAMP, editing.SHARED.clamp_norm)
    subject: str = forms.text(FORM_FIELD)
    prompt: str = forms.text(FORM_FIELD)
    target_new: str = forms.text(FORM_FIELD)
    paraphrases: str = forms.text(FORM_FIELD)
    neighbors: str = forms.text(FORM_FIELD)
    method_settings: dict = forms.raw({})  # {method: {own setting: value}}; after checking, the chosen method's only

    def checked(self) -> None:
        given = self.method_settings if isinstance(self.method_settings, dict) else {}
        self._set("method_settings", {self.method: editing.checked_method_settings(self.method, given.get(self.method))})

    @property
    def settings(self) -> dict[str, Any]:
        """The settings given for the chosen method (shared and own; None = the model family's default)."""
        shared = dict(cov_tokens=self.cov_tokens, steps=self.steps, lr=self.lr, kl_factor=self.kl_factor,
                      clamp_norm=self.clamp_norm)
        return {**shared, **self.method_settings[self.method]}

    def request_row(self) -> list[str]:
        return [self.subject, self.prompt, self.target_new, "", self.paraphrases, self.neighbors]


def table_rows(value: Any, limit: int | None = None) -> list[list[str]]:
    """The Dataframe's rows as lists of 6 strings (blank rows dropped); more than `limit` rows are refused unread."""
    if value is None:
        return []
    if isinstance(value, dict):  # gradio_client sends {"headers": [...], "data": [[...]]}
        value = value.get("data", [])
    if hasattr(value, "values") and hasattr(value, "columns"):  # a pandas DataFrame
        value = value.values.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError("The requests table must be a list of rows.")
    if limit is not None and len(value) > limit:
        raise InputError(f"The table has {len(value):,} rows; this server edits at most {limit:,} requests at once.")
    rows = []
    for row in value:
        if not isinstance(row, (list, tuple)):
            raise InputError("Each row of the requests table must be a list of cells.")
        cells = [limits.text("" if cell is None else str(cell), "A cell of the requests table") for cell in list(row)[: len(REQUEST_HEADERS)]]
        cells += [""] * (len(REQUEST_HEADERS) - len(cells))
        if any(cell.strip() for cell in cells[:3]):
            rows.append(cells)
    return rows


def history_rows(session: SessionState) -> list[list[Any]]:
    ledger = session.ledgers.get(session.model_spec)
    return [editing.batch_row(batch) for batch in editing.ledger_batches(ledger)] if ledger is not None else []


def history_choices(session: SessionState) -> gr.Dropdown:
    rows = history_rows(session)
    choices = [(f"{row[0]}: {row[3]}", str(row[0])) for row in rows]
    return gr.Dropdown(choices=choices, value=choices[-1][1] if choices else None)


def history_outputs(session: SessionState, message: str, data: dict) -> tuple:
    """(status, history table, batch choice, JSON, session) after the history changed."""
    return message, history_rows(session), history_choices(session), data, session


# --- handlers: the requests table ---------------------------------------------------------------

def answer_rows(ctx: AppContext, session: SessionState, rows: list[list[str]], progress=None) -> list[list[str]]:
    """The rows with the 'current answer' column filled by the session model's prediction."""
    if not rows:
        return rows
    requests = [editing.request_of(row) for row in rows]  # each row checked before the job

    def work(job, loaded):
        return editing.current_answers(loaded, requests)

    lane = "short" if len(rows) <= 5 else "long"
    answers = ctx.run(session, work, name="current answers", lane=lane, progress=progress)
    return [row[:3] + [answer] + row[4:] for row, answer in zip(rows, answers)]


@friendly
def add_request(ctx: AppContext, form: RequestForm, session: SessionState | None):
    """The typed request, checked and with its current answer, appended to the table (the form is cleared)."""
    session = ctx.session_of(session)
    rows = table_rows(form.table, ctx.limits.max_requests - 1)
    return rows + answer_rows(ctx, session, [form.row()]), "", "", "", "", "", session


def select_row(event: gr.SelectData) -> int:
    """The row index of a clicked table cell."""
    return event.index[0] if isinstance(event.index, (list, tuple)) else event.index


@friendly
def remove_row(value: Any, index: int | None):
    """The table without the selected row (refused when none is selected)."""
    rows = table_rows(value)
    if index is None or not 0 <= int(index) < len(rows):
        raise InputError("Click a row of the table first, then remove it.")
    return rows[: int(index)] + rows[int(index) + 1 :], None


@friendly
def refresh_answers(ctx: AppContext, value: Any, session: SessionState | None, progress=gr.Progress()):
    """Every row's current answer, predicted again (with the session's edits)."""
    session = ctx.session_of(session)
    return answer_rows(ctx, session, table_rows(value, ctx.limits.max_requests), progress), session


@friendly
def import_counterfact(ctx: AppContext, path: str | None, value: Any, session: SessionState | None):
    """CounterFact records from a JSON file appended to the table (kept for the Test tab's metrics)."""
    session = ctx.session_of(session)
    ctx.limits.check_upload(path, "CounterFact JSON file", ctx.limits.max_records_bytes)
    rows = table_rows(value, ctx.limits.max_requests)
    records, new_rows = editing.counterfact_rows(path, ctx.limits.max_requests - len(rows))
    session.records = records
    gr.Info(f"Imported {len(records)} CounterFact record(s): apply them, then see their metrics on the Test tab.")
    return rows + new_rows, session


# --- handlers: applying edits and the history -----------------------------------------------------

EDIT_OUTPUTS = 8  # status, per-request table, loss plot, per-layer table, history, batch choice, JSON, session


@friendly
def run_edit(ctx: AppContext, form: EditForm, session: SessionState | None = None, progress=gr.Progress()):
    """One batch of the table's requests (or the typed request's) by the chosen method over R, on top of earlier edits.

    Everything is checked before the job is queued (the method's settings against the model when it is
    loaded). The batch joins the session's ledger at the job's commit point: a Stop before it changes
    nothing; after it the batch is applied.
    """
    session = ctx.session_of(session)
    rows = table_rows(form.table, ctx.limits.max_requests)
    typed = form.request_row()
    if not rows and any(cell.strip() for cell in typed[:3]):
        rows = [typed]  # a filled form and an empty table: edit what was typed
    if not rows:
        raise InputError("Nothing to edit: fill in the subject, prompt and new object (or add requests to the table).")
    requests = editing.requests_from_rows(rows)
    loaded = ctx.model_of(session)  # None while loading: the job checks again
    method = editing.checked_method(loaded, form.method, form.layers, form.settings)
    if method.uses_covariance:  # a budget the method never spends is not checked
        editing.check_covariance_budget(loaded, ctx.manager.display_tokenizer(session.model_spec), form.cov_tokens)
    skip = tuple(gr.skip() for _ in range(EDIT_OUTPUTS))
    ledger = session.ledger()
    bound = editing.batch_bound(loaded, method.layers, len(requests))
    if bound is not None:  # else (still loading) the exact check before the commit still holds
        ctx.limits.check_edit_room(ledger.held_bytes(), bound)

    def work(job, loaded):
        # Not inside session.applied: the editor applies the ledger itself, after computing the
        # covariance statistics on the original weights.
        batch = editing.compute_batch(loaded, ledger, requests, form.method, form.layers, form.settings, job.progress)
        ctx.limits.check_edit_room(ledger.held_bytes(), batch.nbytes)  # the batch as computed, before it joins
        job.commit(lambda: editing.add_batch(ledger, batch, loaded, session))
        return batch

    job = ctx.submit(session, work, name="edit", edited=False)
    for item in ctx.follow(job, progress):
        if item is HEARTBEAT:
            yield skip
    batch = job.result
    session.remember_checks(rows, requests)
    if method.uses_covariance:  # the budget the range tab's outlier flags read
        session.cov_tokens = int(batch.settings.get("cov_tokens") or 0) or None
    per_request, per_layer = editing.diagnostics_tables(batch)
    yield (
        editing.batch_summary_text(batch),
        per_request,
        gr.Plot(editing.loss_plot(batch), visible=True),
        per_layer,
        history_rows(session),
        history_choices(session),
        editing.batch_dict(batch),
        session,
    )


@friendly
def run_undo(ctx: AppContext, batch_id: str | None, session: SessionState | None, progress=None):
    """Undo one batch of the session's edits (the weights of the rest are recomputed exactly)."""
    session = ctx.session_of(session)
    batch_id = limits.text(batch_id, "The batch", limit=100).strip()
    if not batch_id:
        raise InputError("There is no batch to undo: your edits history is empty.")
    if batch_id not in [str(row[0]) for row in history_rows(session)]:
        raise InputError(f"There is no batch {batch_id!r} in your history.")
    ledger = session.ledger()
    # On the runner thread: no job of this session may be using the ledger meanwhile.
    ctx.run(session, lambda job, loaded: editing.undo_batch(ledger, batch_id, session), name="undo", edited=False,
            progress=progress)
    remaining = [row[0] for row in history_rows(session)]
    message = f"Undid batch {html.escape(batch_id)}. {len(remaining)} batch(es) remain."
    return history_outputs(session, message, {"undone": batch_id, "remaining": remaining})


@friendly
def run_reset(ctx: AppContext, session: SessionState | None, progress=None):
    """Undo every edit of the session."""
    session = ctx.session_of(session)
    ledger = session.ledger()
    ctx.run(session, lambda job, loaded: editing.reset_ledger(ledger, session), name="reset", edited=False, progress=progress)
    return history_outputs(session, "All your edits were undone: the model is the original again.", {"remaining": []})


@friendly
def run_export(ctx: AppContext, session: SessionState | None, progress=None):
    """The session's ledger as a safetensors file to download."""
    session = ctx.session_of(session)
    if not session.has_edits():
        raise InputError("There are no edits to export yet.")
    folder = session.files_folder("export")
    path = ctx.run(session, lambda job, loaded: editing.export_ledger(session.ledger(), folder), name="export", edited=False,
                   progress=progress)
    return gr.File(value=path, visible=True)


@friendly
def run_import(ctx: AppContext, path: str | None, session: SessionState | None, progress=None):
    """Replace the session's edits by a ledger exported from Locus (refused for another model, checked before reading)."""
    session = ctx.session_of(session)
    ctx.limits.check_upload(path, "file of edits")
    # The header is checked before queueing when the model is loaded (and again in the job).
    editing.check_ledger_upload(path, ctx.model_of(session), ctx.limits.max_upload_bytes)

    def work(job, loaded):
        return editing.import_ledger(path, loaded, ctx.limits.max_upload_bytes, session)  # replaces the session's edits

    ctx.run(session, work, name="import edits", edited=False, progress=progress)
    count = len(history_rows(session))
    return history_outputs(session, f"Imported {count} batch(es) of edits.", {"imported": count})


@friendly
def run_health_history(ctx: AppContext, session: SessionState | None, progress=gr.Progress()):
    """Perplexity on held-out text and known-fact retention after each batch of the history, with drift warnings."""
    session = ctx.session_of(session)
    ledger = session.ledgers.get(session.model_spec)
    batch_ids = [str(batch.batch_id) for batch in editing.ledger_batches(ledger)]
    if not batch_ids:
        raise InputError("There are no edits yet: apply a batch first, then measure its health.")
    corpus, probe_count = ctx.health_corpus, ctx.health_probes
    skip = (gr.skip(), gr.skip(), gr.skip(), gr.skip())

    def work(job, loaded):
        # The Test tab's probe set (none about an edited subject): figures it measured come from the cache.
        reports = []
        for health in editing.health_history(loaded, ledger, job.progress, corpus, probe_count):
            reports.append(health)
            job.emit(list(reports))  # the table grows a row per batch
        return reports

    def outputs(reports: list, done: bool) -> tuple:
        rows = health_view.history_rows(batch_ids, reports)
        data = {"batches": [dict(report.to_dict(), batch=batch_id) for batch_id, report in zip(batch_ids, reports)]}
        summary = health_view.history_summary(batch_ids, reports)
        table = gr.Dataframe(value=rows, headers=health_view.HEALTH_HISTORY_COLUMNS, visible=True)
        return summary, table, data, session

    job = ctx.submit(session, work, name="health per batch", edited=False)
    shown: list = []
    try:
        for item in ctx.follow(job, progress):
            if item is not HEARTBEAT:
                shown = item
            yield skip if item is HEARTBEAT else outputs(item, done=False)
    except OperationCancelled:
        stopped = (f"**Stopped after {len(shown)} of {len(batch_ids)} batches: the table shows those only.** Figures "
                   "measured are remembered: *Health per batch* continues from there.")
        yield stopped, skip[1], skip[2], session
        raise
    model_state.record(session, HEALTH_HISTORY)
    yield outputs(job.result, done=True)


def refresh_history(ctx: AppContext, session: SessionState | None):
    """The history as this session has it (after a page reload brings the session back)."""
    session = ctx.session_of(session)
    return history_rows(session), history_choices(session)


def fit_method_settings(ctx: AppContext, session: SessionState | None):
    """Each method's own settings showing the loaded model's family defaults (Method.for_model(layout).settings)."""
    loaded = ctx.model_of(ctx.session_of(session))
    if loaded is None:
        return tuple(gr.skip() for choice in METHODS for _ in choice.settings)
    defaults = editing.family_defaults(loaded.layout)
    return tuple(defaults[choice.name][setting.name] for choice in METHODS for setting in choice.settings)


def show_method_settings(method: str):
    """Only the chosen method's own settings are shown."""
    return tuple(gr.Row(visible=choice.name == method) for choice in METHODS)


# --- the tab -----------------------------------------------------------------------------------

def setting_component(choice: editing.MethodChoice, setting: editing.SettingInput) -> Any:
    """An input for one of a method's own settings, empty until a model is loaded (empty = the family's default)."""
    label = f"{choice.title}: {setting.label}"
    elem_id = f"edit-{choice.name}-{setting.name}".replace("_", "-")
    if setting.kind is bool:
        return gr.Checkbox(value=setting.default, label=label, elem_id=elem_id)
    if setting.kind in (int, float):
        low, high = setting.bounds
        return gr.Number(value=None, label=label, placeholder="empty: the model's default", elem_id=elem_id,
                         precision=0 if setting.kind is int else None, minimum=low, maximum=high)
    return gr.Textbox(value=None, label=label, placeholder="empty: the model's default", elem_id=elem_id,
                      max_length=limits.MAX_LAYER_TEXT)


def method_settings_inputs() -> tuple[list[gr.Row], dict[str, dict[str, Any]]]:
    """A row per registered method with an input per own setting, shown only while that method is chosen."""
    rows, inputs = [], {}
    for choice in METHODS:
        with gr.Row(visible=choice.name == editing.DEFAULT_METHOD, elem_id=f"edit-settings-{choice.name}") as row:
            inputs[choice.name] = {setting.name: setting_component(choice, setting) for setting in choice.settings}
            if not choice.settings:
                gr.Markdown(f"{choice.title} has no settings of its own (the shared ones are under Advanced).",
                            elem_classes=["caption"])
        rows.append(row)
    return rows, inputs


def build(ctx: AppContext) -> EditTab:
    with gr.Tab("Edit", id="edit"):
        gr.Markdown(captions.EDIT)
        with gr.Row():
            subject = gr.Textbox(label="Subject", placeholder="Eiffel Tower", value="", elem_id="edit-subject", scale=2)
            template = gr.Textbox(
                label="Prompt ({} = subject)", placeholder="{} is located in the city of", value="", elem_id="edit-template", scale=3
            )
            target = gr.Textbox(label="New object", placeholder="Rome", value="", elem_id="edit-target", scale=2)
            add = gr.Button("Add request", elem_id="edit-add", scale=1)
        with gr.Row():
            paraphrases = gr.Textbox(
                label="Paraphrases to check (optional, ;-separated)",
                placeholder="The Eiffel Tower is in the city of; Where is the Eiffel Tower? It is in the city of",
                value="", elem_id="edit-paraphrases",
            )
            neighbors = gr.Textbox(
                label="Neighborhood prompts to check (optional, ;-separated: other subjects with the same answer)",
                placeholder="The Louvre is located in the city of",
                value="", elem_id="edit-neighbors",
            )
        table = gr.Dataframe(
            headers=REQUEST_HEADERS,
            datatype="str",
            type="array",
            interactive=True,
            row_count=0,
            column_count=len(REQUEST_HEADERS),
            static_columns=[3],
            wrap=True,
            column_widths=["15%", "25%", "12%", "12%", "18%", "18%"],
            label="Requests (edit cells directly; click a row to select it)",
            elem_id="edit-table",
        )
        selected_row = gr.State(None)
        with gr.Row():
            remove = gr.Button("Remove selected row", size="sm", elem_id="edit-remove")
            clear = gr.Button("Clear table", size="sm", elem_id="edit-clear")
            refresh = gr.Button("Refresh current answers", size="sm", elem_id="edit-refresh")
            import_records = gr.UploadButton(
                "Import CounterFact JSON", file_types=[".json"], size="sm", elem_id="edit-import"
            )
        table_line = job_line("edit-table")
        with gr.Row():
            method = gr.Radio(METHOD_CHOICES, value=EditForm.default("method"), label="Method", elem_id="edit-method", scale=2)
            layers = ctx.components["edit_layers"]
            layers.render()
        setting_rows, setting_inputs = method_settings_inputs()
        with gr.Accordion("Advanced (settings every method shares)", open=False):
            with gr.Row():
                cov_tokens = gr.Number(
                    value=None, precision=0, label="Covariance corpus tokens (0 or empty = default)", elem_id="edit-cov-tokens"
                )
                steps = gr.Slider(*limits.STEPS, value=EditForm.default("steps"), step=1, label="Optimisation steps",
                                  elem_id="edit-steps")
            with gr.Row():
                lr = gr.Number(value=EditForm.default("lr"), label="Learning rate", elem_id="edit-lr")
                kl_factor = gr.Number(value=EditForm.default("kl_factor"), label="KL weight (keep the subject's essence)",
                                      elem_id="edit-kl")
                clamp_norm = gr.Number(value=EditForm.default("clamp_norm"), label="Clamp ‖δ‖ ≤ this × ‖h‖",
                                       elem_id="edit-clamp")
        apply, stop, apply_line = job_controls("Apply edits", "edit-apply", "edit")
        status = gr.Markdown(elem_id="edit-status")
        gr.Markdown(captions.DIAGNOSTICS, elem_classes=["caption"])
        with gr.Row(equal_height=True):
            request_table = gr.Dataframe(label="Per request", interactive=False, elem_id="edit-diag-requests", scale=3, visible=False)
            loss_plot = gr.Plot(show_label=False, elem_id="edit-loss-plot", scale=2, visible=False)
        layer_table = gr.Dataframe(label="Per layer", interactive=False, elem_id="edit-diag-layers", visible=False)
        gr.Markdown("### History of your edits")
        history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, elem_id="edit-history", row_count=0)
        with gr.Row():
            batch_choice = gr.Dropdown([], label="Batch", elem_id="edit-batch", scale=2)
            undo = gr.Button("Undo this batch", elem_id="edit-undo", scale=1)
            reset = gr.Button("Reset (undo all)", variant="stop", elem_id="edit-reset", scale=1)
        history_line = job_line("edit-history")
        gr.Markdown(health_view.HEALTH_HISTORY_CAPTION, elem_classes=["caption"])
        health, health_stop, health_line = job_controls("Health per batch", "edit-health", "edit-health", variant="secondary")
        health_status = gr.Markdown(elem_id="edit-health-status")
        health_note = model_state.state_note(HEALTH_HISTORY, "Health per batch", "edit-health-state")
        health_table = gr.Dataframe(
            headers=health_view.HEALTH_HISTORY_COLUMNS, label="Health after each batch (⚠ = past a warning threshold)",
            interactive=False, wrap=True, elem_id="edit-health-table", visible=False,
        )
        with gr.Row():
            export_ledger = gr.Button("Export my edits", elem_id="edit-export", size="sm")
            import_ledger = gr.UploadButton("Import edits", file_types=[".safetensors"], size="sm", elem_id="edit-import-ledger")
        exported = gr.File(label="Your edits (a file to import later)", visible=False, interactive=False, elem_id="edit-exported")
        with gr.Accordion("Raw result (JSON)", open=False, elem_id="edit-json-accordion"):
            result_json = gr.JSON(elem_id="edit-json")

    # --- the requests table ------------------------------------------------------------------------
    request = dict(subject=subject, prompt=template, target_new=target, paraphrases=paraphrases, neighbors=neighbors)
    wire(
        ctx, table_line, add.click, *forms.bind(ctx, add_request, RequestForm, dict(request, table=table)),
        [table, subject, template, target, paraphrases, neighbors, ctx.session], api_visibility="private", **MODEL_EVENTS,
    )
    table.select(select_row, None, selected_row, api_visibility="private", queue=False)
    wire(ctx, table_line, remove.click, remove_row, [table, selected_row], [table, selected_row], api_visibility="private",
         concurrency_id="table")
    clear.click(lambda: [], None, table, api_visibility="private", queue=False)
    wire(ctx, table_line, refresh.click, ctx.bind(refresh_answers), [table, ctx.session], [table, ctx.session],
         api_visibility="private", **MODEL_EVENTS)
    wire(ctx, table_line, import_records.upload, ctx.bind(import_counterfact), [import_records, table, ctx.session],
         [table, ctx.session], api_visibility="private", **MODEL_EVENTS)

    # --- applying edits ----------------------------------------------------------------------------
    method.change(show_method_settings, method, setting_rows, queue=False, api_visibility="private")
    edit_outputs = [status, request_table, loss_plot, layer_table, history, batch_choice, result_json, ctx.session]
    edit_form = dict(table=table, method=method, layers=layers, cov_tokens=cov_tokens, steps=steps, lr=lr, kl_factor=kl_factor,
                     clamp_norm=clamp_norm, **request, method_settings=setting_inputs)
    edit_event = wire(ctx, apply_line, apply.click, *forms.bind(ctx, run_edit, EditForm, edit_form), edit_outputs,
                      api_name="edit", **MODEL_EVENTS)
    wire_stop(ctx, stop, apply_line)

    # --- history: undo, reset, export, import (what happened said on the line under them) ----------------------
    changed = [status, history, batch_choice, result_json, ctx.session]
    said = dict(done_from=0, **MODEL_EVENTS)
    undo_event = wire(ctx, history_line, undo.click, ctx.bind(run_undo), [batch_choice, ctx.session], changed,
                      api_name="undo", **said)
    reset_event = wire(ctx, history_line, reset.click, ctx.bind(run_reset), [ctx.session], changed, api_name="reset", **said)
    wire(ctx, history_line, export_ledger.click, ctx.bind(run_export), [ctx.session], [exported], api_visibility="private",
         **MODEL_EVENTS)
    import_event = wire(ctx, history_line, import_ledger.upload, ctx.bind(run_import), [import_ledger, ctx.session], changed,
                        api_name="import_ledger", **said)
    # --- health per batch (its note says which edits it was measured on; Refresh measures again) ----------------
    health_event = wire(
        ctx, health_line, functools.partial(gr.on, [health.click, health_note.refresh.click]), ctx.bind(run_health_history),
        [ctx.session], [health_status, health_table, result_json, ctx.session], api_name="health_history", **MODEL_EVENTS,
    )
    wire_stop(ctx, health_stop, health_line)
    model_state.refresh_on(ctx, [health_note], [health_event, edit_event, undo_event, reset_event, import_event])
    setting_outputs = [component for inputs in setting_inputs.values() for component in inputs.values()]
    return EditTab(
        form=list(request.values()), edit_events=[edit_event, undo_event, reset_event, import_event],
        refresh=(ctx.bind(refresh_history), [ctx.session], [history, batch_choice]),
        fit=(ctx.bind(fit_method_settings), [ctx.session], setting_outputs),
    )
