"""The Edit tab's service: everything the tab asks of the editor (requests, methods and their settings, the
ledger, CounterFact, health, checks), so ui/tabs/edit_tab.py imports only Gradio, ui.* and core.errors.

Only arranging: table rows <-> EditRequest, batch -> table rows, checks -> table rows, a method's own
settings -> the inputs the page draws for them. Layer text, method dispatch and every computation are the
editor's (and the tracer's for predictions).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import InputError
from core.loading import LoadedModel
from core.predict import generate_greedy, predict_next_tokens
from core.progress import Progress, derived
from editor.edits.batch import EditBatch
from editor.edits.ledger import EditLedger, batch_bytes_bound
from editor.edits.ledger_file import check_ledger_file
from editor.edits.requests import EditRequest, validate_requests
from editor.evaluation.counterfact import CounterFactRecord, load_records
from editor.evaluation.evaluate import Scores, score_records, summarize
from editor.evaluation.health import PROBE_COUNT, health_history_stream, probe_facts
from editor.layers import layers_text, parse_layers
from editor.methods.base import EditMethod
from editor.methods.registry import METHOD_NAMES, method_class, method_classes, method_for
from editor.methods.settings import EditSettings
from editor.statistics.budget import check_budget, corpus_tokens
from editor.studies.figures import loss_figure
from ui import limits

# --- ledger --------------------------------------------------------------------------------------

def new_ledger() -> EditLedger:
    """An empty EditLedger for one session (bound to a model at its first batch)."""
    return EditLedger()


def ledger_batches(ledger: Any) -> list[Any]:
    """The applied batches of a ledger, oldest first."""
    if ledger is None:
        return []
    return list(getattr(ledger, "batches", []) or [])


def bump_ledger_version(session: Any) -> None:
    """Count a change of the session's edits (its outputs computed before are marked so: ui/model_state.py)."""
    if session is not None:
        session.ledger_version += 1


def add_batch(ledger: Any, batch: Any, loaded: Any, session: Any = None) -> None:
    """Append a computed batch (records the original weights' digests; call with no ledger applied)."""
    ledger.add(batch, loaded)
    bump_ledger_version(session)


def undo_batch(ledger: Any, batch_id: str, session: Any = None) -> Any:
    undone = ledger.undo(str(batch_id))
    bump_ledger_version(session)
    return undone


def reset_ledger(ledger: Any, session: Any = None) -> None:
    ledger.reset()
    bump_ledger_version(session)


def export_ledger(ledger: EditLedger, folder: Path) -> str:
    """Write the ledger (safetensors with JSON metadata) into `folder`; returns the file's path."""
    return str(ledger.save(folder / "locus-edits.safetensors"))


def import_ledger(path: str | None, loaded: LoadedModel, max_bytes: int, session: Any = None) -> EditLedger:
    """A ledger read from a file exported by Locus: its header checked first, refused when made for another model.
    With `session`, it replaces the session's edits of its model."""
    if not path:
        raise InputError("Choose a file of edits exported from Locus (.safetensors).")
    check_ledger_file(path, loaded, max_bytes)
    ledger = EditLedger.load(path, loaded)
    if session is not None:
        session.ledgers[session.model_spec] = ledger
        bump_ledger_version(session)
    return ledger


# --- requests --------------------------------------------------------------------------------------

def split_prompts(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def request_of(row: list[str]) -> EditRequest:
    """The row's request, validated (InputError unless it is usable; the new object may still be empty)."""
    return EditRequest(subject=row[0], prompt=row[1], target_new=row[2] or "?").validated()


def requests_from_rows(rows: list[list[str]]) -> list[Any]:
    """Validated EditRequests of the table (current answer as the true object when known)."""
    requests = [
        EditRequest(subject=row[0], prompt=row[1], target_new=row[2], target_true=(row[3].strip() or None))
        for row in rows
    ]
    return validate_requests(requests)


ANSWER_TOKENS = 5
_FIRST_WORD = re.compile(r"[^\W_][\w'-]*")


def current_answer(loaded: Any, prompt: str) -> str:
    """What the model says now after `prompt`: the first word of its greedy continuation (else its top token)."""
    match = _FIRST_WORD.search(generate_greedy(loaded, prompt, ANSWER_TOKENS))
    return match.group(0) if match else predict_next_tokens(loaded, prompt, 1)[0].token.strip()


def current_answers(loaded: LoadedModel, requests: list[EditRequest]) -> list[str]:
    """The current answer after each request's filled-in prompt."""
    return [current_answer(loaded, request.text) for request in requests]


def counterfact_rows(path: str | None, limit: int) -> tuple[list[CounterFactRecord], list[list[str]]]:
    """CounterFact records of a JSON file (validated by the editor), at most `limit`, and the table rows they make."""
    if not path:
        raise InputError("Choose a CounterFact JSON file.")
    records = load_records(path)
    if len(records) > limit:
        raise InputError(f"The file has {len(records):,} records; the table can take {max(limit, 0):,} more here.")
    rows = [
        [r.subject, r.prompt, r.target_new, r.target_true, "; ".join(r.paraphrase_prompts), "; ".join(r.neighborhood_prompts)]
        for r in records
    ]
    return records, rows


# --- methods and their own settings -----------------------------------------------------------------

SHARED = EditSettings()  # the settings every method shares, at their defaults (the page's initial values)
DEFAULT_METHOD = METHOD_NAMES[0]  # the first registered method is the page's initial choice
# Words for settings the page knows; any other setting of a new method is shown by its name.
SETTING_WORDS = {
    "mom2_weight": "λ, weight of the covariance (higher: safer, weaker)",
    "nullspace_threshold": "null-space threshold (eigenvalues of C below it span the space the update may use)",
    "l2": "l2, ridge term of the projected solve (higher: weaker)",
    "norm_lambda": "norm constraint, weight of ‖Δ‖² (higher: smaller updates)",
    "early_stop_steps": "early stop: steps after the new object leads on every prompt (0: off)",
}


@dataclass(frozen=True)
class SettingInput:
    """One setting of a method's own, as the page asks for it."""

    name: str  # the field of the method's settings dataclass
    kind: type  # int, float or bool are numbers and a tick box; anything else is text (read as `--set NAME=VALUE`)
    default: Any  # the dataclass default; the page shows the model family's (`family_defaults`) once a model is loaded
    label: str
    bounds: tuple[float, float] | None  # for numbers (ui/limits.py), before the settings' own check()


@dataclass(frozen=True)
class MethodChoice:
    """A registered method as the Edit tab offers it: its name, menu line and own settings."""

    name: str
    title: str
    label: str
    settings: tuple[SettingInput, ...]


def own_setting_names(settings_class: type[EditSettings]) -> tuple[str, ...]:
    """A method's own settings (EditSettings.own_field_names) that a visitor may set: never a path on the server."""
    return tuple(name for name in settings_class.own_field_names() if not settings_class.names_a_file(name))


def setting_input(settings_class: type[EditSettings], name: str) -> SettingInput:
    kind = typing.get_type_hints(settings_class)[name]
    kind = kind if kind in (int, float, bool) else str
    words = SETTING_WORDS.get(name, name.replace("_", " "))
    declared = settings_class.bounds_of(name) or limits.SETTING_BOUNDS.get(name, limits.SETTING_NUMBER)
    bounds = declared if kind in (int, float) else None
    return SettingInput(name=name, kind=kind, default=getattr(settings_class(), name), label=words, bounds=bounds)


def method_choices() -> list[MethodChoice]:
    """Every registered method (registry order) with its own settings: the Edit tab draws an input for each."""
    return [
        MethodChoice(cls.name, cls.title, cls.label, tuple(setting_input(cls.Settings, name) for name in own_setting_names(cls.Settings)))
        for cls in method_classes()
    ]


def family_defaults(layout: Any) -> dict[str, dict[str, Any]]:
    """{method: {own setting: value}} of `Method.for_model(layout).settings`: the family's defaults for this model."""
    defaults = {}
    for cls in method_classes():
        settings = cls.for_model(layout).settings
        defaults[cls.name] = {name: getattr(settings, name) for name in own_setting_names(cls.Settings)}
    return defaults


def checked_method_settings(method: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The values typed for `method`'s own settings, checked against their bounds; empty ones (None, "") are dropped
    (the family's default is used). InputError for a setting the method does not have."""
    cls = method_class(method)
    inputs = {name: setting_input(cls.Settings, name) for name in own_setting_names(cls.Settings)}
    values = dict(values or {})
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        own = ", ".join(inputs) or "none"
        raise InputError(f"{cls.title} has no setting {', '.join(map(repr, unknown))}; its own settings are: {own}.")
    checked = {}
    for name, value in values.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        setting = inputs[name]
        label = f"{cls.title}'s {name}"
        if setting.kind is int:
            checked[name] = limits.whole(value, label, setting.bounds)
        elif setting.kind is float:
            checked[name] = limits.real(value, label, setting.bounds)
        elif setting.kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"{label} must be true or false, got {value!r}.")
            checked[name] = value
        else:
            checked[name] = cls.Settings.parse_value(name, limits.text(value, label, limit=limits.MAX_LAYER_TEXT))
    return checked


def method_name(value: Any) -> str:
    """A registered method's name (InputError naming the registered ones otherwise)."""
    return method_class(limits.text(value, "Method", limit=100)).name


def layer_text(value: Any) -> str:
    """Typed layers R, checked for length and form before the model (and its depth) is known."""
    text = limits.text(value, "Layers R", limit=limits.MAX_LAYER_TEXT)
    parse_layers(text)
    return text


def checked_method(loaded: LoadedModel | None, method: str, layers: str, overrides: Mapping[str, Any]) -> EditMethod:
    """The method with its settings, checked now (against the model when it is loaded), so a bad value is refused
    before any job; `overrides` None = the family's default."""
    chosen = parse_layers(layers, loaded.layout.num_layers if loaded is not None else None)
    if loaded is not None:
        return method_for(loaded.layout, method, layers=chosen, **overrides)
    cls = method_class(method)
    given = {name: value for name, value in overrides.items() if value is not None}
    return cls(cls.Settings().replace(layers=chosen, **given))


def check_covariance_budget(loaded: LoadedModel | None, tokenizer: Any, tokens: int | None) -> None:
    """InputError when the Wikipedia corpus holds fewer tokens than asked for C (counted once per model, then cached)."""
    if tokens is None or loaded is None or tokenizer is None:
        return
    check_budget(tokens, corpus_tokens(loaded, tokenizer=tokenizer), "the Wikipedia corpus")


def batch_bound(loaded: LoadedModel | None, layers: tuple[int, ...], requests: int) -> int | None:
    """At most the bytes a batch adds to a ledger (None while the model is loading)."""
    return batch_bytes_bound(loaded.layout, layers, requests) if loaded is not None else None


def check_ledger_upload(path: str, loaded: LoadedModel | None, max_bytes: int) -> None:
    """The header of an uploaded ledger checked before a job is queued (when the model is loaded)."""
    if loaded is not None:
        check_ledger_file(path, loaded, max_bytes)


def health_history(loaded: LoadedModel, ledger: EditLedger, progress: Progress, corpus: Any, probe_count: int | None) -> Iterator[Any]:
    """One HealthReport per batch of `ledger`, as measured (the Test tab's probes: none about an edited subject).

    Not inside session.applied: the stream measures the original weights and applies each prefix itself.
    `progress` hears "batch i of n: ..." (and its safe points pass on).
    """
    count = len(ledger)
    report = derived(progress, lambda fraction, message: progress(
        fraction, f"batch {min(count, int(fraction * count) + 1)} of {count}: {message}"))
    probes = probe_facts(loaded, [request.subject for request in ledger.requests], probe_count or PROBE_COUNT)
    yield from health_history_stream(loaded, ledger, report, corpus=corpus, probes=probes)


def loss_plot(batch: Any) -> Any:
    """The loss curve of each request's target optimisation (a plotly figure)."""
    return loss_figure(loss_curves(batch))


# --- computing and describing a batch --------------------------------------------------------------

def compute_batch(
    loaded: LoadedModel,
    ledger: EditLedger,
    requests: list[EditRequest],
    method: str,
    layers: str,
    settings: Mapping[str, Any],
    progress: Progress | None = None,
) -> EditBatch:
    """An EditBatch on top of `ledger`'s edits; the model's weights are left as they were.

    Call it with the ledger *not* applied: the editor computes the covariance on the original
    weights and applies the ledger itself for the targets and keys.
    """
    return checked_method(loaded, method, layers, settings).compute(loaded, requests, ledger, progress=progress)


def batch_row(batch: Any) -> list[Any]:
    """[batch id, method, layers, requests, seconds] for the history table."""
    described = "; ".join(f"{r.subject} → {r.target_new}" for r in batch.requests[:3])
    if len(batch.requests) > 3:
        described += f" (+{len(batch.requests) - 3} more)"
    return [batch.batch_id, batch.method.upper(), layers_text(list(batch.layers)), described, round(float(batch.seconds), 1)]


def batch_dict(batch: Any) -> dict:
    return batch.to_dict()


REQUEST_COLUMNS = ["edit", "p(new) at target (0-1)", "steps", "converged", "‖δ‖/‖h‖ (ratio)"]
LAYER_COLUMNS = [
    "layer", "‖ΔW‖/‖W‖ (ratio)", "‖z−h‖ left (norm)", "‖z−h‖ asked of this layer (norm)", "top eigenvalue of C", "condition of C",
]
# AlphaEdit: how null its null space is (text-key energy in it; 0 would leave ordinary text untouched), and how much
# of the edited keys it reaches (0 would write nothing)
NULLSPACE_COLUMNS = ["null-space directions", "text-key energy in it (share 0-1)", "edited keys in it (share 0-1)"]


def diagnostics_tables(batch: Any) -> tuple[Any, Any]:
    """(per request, per layer) tables of the batch's diagnostics."""
    per_request = [
        [f"{d.subject} → {d.target_new}", round(d.final_probability, 3), d.steps, "yes" if d.converged else "no",
         round(d.delta_norm / d.hidden_norm, 3) if d.hidden_norm else ""]
        for d in batch.request_diagnostics
    ]
    per_layer = [
        [d.layer, f"{d.relative_update:.2e}", round(d.residual_norm, 2), round(d.residual_share, 2),
         "" if d.cov_largest_eigenvalue is None else round(d.cov_largest_eigenvalue, 2),
         "" if d.cov_condition_number is None else f"{d.cov_condition_number:.3g}"]
        for d in batch.layer_diagnostics
    ]
    layer_columns = LAYER_COLUMNS
    if any(d.nullspace_size is not None for d in batch.layer_diagnostics):  # AlphaEdit
        layer_columns = LAYER_COLUMNS + NULLSPACE_COLUMNS
        for row, d in zip(per_layer, batch.layer_diagnostics):
            row += [d.nullspace_size, round(d.nullspace_energy, 3), round(d.nullspace_key_share, 3)]
    return (
        gr.Dataframe(value=per_request, headers=REQUEST_COLUMNS, visible=bool(per_request), wrap=True,
                     column_widths=["40%", "18%", "12%", "14%", "16%"]),
        gr.Dataframe(value=per_layer, headers=layer_columns, visible=bool(per_layer), wrap=True),
    )


def loss_curves(batch: Any) -> dict[str, list[float]]:
    """{request label: total loss at every evaluated step}."""
    return {f"{d.subject} → {d.target_new}": [float(v) for v in d.losses] for d in batch.request_diagnostics if d.losses}


def batch_summary_text(batch: Any) -> str:
    row = batch_row(batch)
    text = (
        f"Applied batch **{row[0]}** ({row[1]}, layers {row[2]}, {row[4]} s): {row[3]}. "
        "See the effect on the **Test** tab."
    )
    if batch.warnings:
        text += "  \n**Note:** " + " ".join(batch.warnings)
    return text


# --- checking edits (Test tab) -----------------------------------------------------------------------

def applied_records(session: Any) -> list[Any]:
    """A CounterFact record for every request this session applied, with the prompts typed to check it."""
    ledger = session.ledgers.get(session.model_spec)
    records = []
    for batch in ledger_batches(ledger):
        for index, request in enumerate(batch.requests):
            paraphrases, neighbors = session.checks.get((request.subject, request.prompt, request.target_new), ([], []))
            records.append(
                CounterFactRecord(
                    case_id=f"{batch.batch_id}#{index}",
                    subject=request.subject,
                    prompt=request.prompt,
                    target_new=request.target_new,
                    target_true=request.target_true or "",
                    paraphrase_prompts=list(paraphrases),
                    neighborhood_prompts=list(neighbors),
                )
            )
    return records


def with_true_objects(loaded: Any, records: list[Any]) -> list[Any]:
    """Records whose missing true object is filled with the model's current answer (call on the original model)."""
    return [
        record if record.target_true else dataclasses.replace(record, target_true=current_answer(loaded, record.rewrite_prompt))
        for record in records
    ]


def score(loaded: Any, records: list[Any]) -> list[Any]:
    """Per-record ES/PS/NS fractions on the model as it is now (no generation: quick)."""
    per_record, _ = score_records(loaded, records, generation=False)
    return per_record


def summary(per_record: list[Any]) -> Scores:
    return summarize(per_record, [])


def _fraction(value: float | None, count: int) -> str:
    if value is None or count == 0:
        return "–"
    return f"{round(value * count)}/{count}"


def _mark(value: float | None, count: int, good_when_high: bool = True) -> str:
    text = _fraction(value, count)
    if value is None or count == 0:
        return text
    good = value >= 0.5 if good_when_high else value < 0.5
    return f"{text} {'✓' if good else '✗'}"


CHECK_COLUMNS = [
    "edit",
    "rewrite: new beats old (before → after)",
    "paraphrases: new beats old (before → after)",
    "neighborhood: old still wins (before → after)",
]


def check_rows(records: list[Any], before: list[Any], after: list[Any]) -> list[list[str]]:
    """One row per edit: how each check went before and after the edits."""
    rows = []
    for record, pre, post in zip(records, before, after):
        paraphrases, neighbors = len(record.paraphrase_prompts), len(record.neighborhood_prompts)
        rows.append([
            f"{record.subject}: {record.target_true} → {record.target_new}",
            f"{_fraction(pre.es, 1)} → {_mark(post.es, 1)}",
            f"{_fraction(pre.ps, paraphrases)} → {_mark(post.ps, paraphrases)}" if paraphrases else "(none given)",
            f"{_fraction(pre.ns, neighbors)} → {_mark(post.ns, neighbors)}" if neighbors else "(none given)",
        ])
    return rows


METRIC_KEYS = [("ES", "ES"), ("PS", "PS"), ("NS", "NS"), ("S", "S"), ("efficacy acc.", "efficacy_accuracy"),
               ("neighborhood acc.", "neighborhood_accuracy")]


def metrics_rows(before: Any, after: Any) -> list[list[Any]]:
    """[model, ES, PS, NS, S, accuracies, n] for the unedited and the edited model (percent)."""
    rows = []
    for label, scores in (("original", before), ("with your edits", after)):
        cells = [None if getattr(scores, key) is None else round(getattr(scores, key), 1) for _, key in METRIC_KEYS]
        rows.append([label, *cells, scores.n])
    return rows


METRIC_COLUMNS = ["model", *[title for title, _ in METRIC_KEYS], "n"]
