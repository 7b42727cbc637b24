"""Thin adapter over the editor's public API (requests, MEMIT/ROME, ledger, CounterFact, evaluation).

Only arranging: table rows <-> EditRequest, layer text -> layer list, batch -> table rows. All
computation is the editor's (and the tracer's for predictions).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

Progress = Callable[[float, str], None]


def _editor_missing(error: ImportError):
    from tracer.errors import LocusError

    return LocusError(f"The editor is not available in this build ({error.name} is missing).")


# --- ledger --------------------------------------------------------------------------------------

def new_ledger() -> Any:
    """An empty EditLedger for one session."""
    try:
        from editor.ledger import EditLedger
    except ImportError as error:
        raise _editor_missing(error) from error
    return EditLedger()


def ledger_batches(ledger: Any) -> list[Any]:
    """The applied batches of a ledger, oldest first."""
    if ledger is None:
        return []
    return list(getattr(ledger, "batches", []) or [])


def add_batch(ledger: Any, batch: Any) -> None:
    ledger.add(batch)


def undo_batch(ledger: Any, batch_id: str) -> None:
    ledger.undo(_batch_key(ledger, batch_id))


def reset_ledger(ledger: Any) -> None:
    ledger.reset()


def _batch_key(ledger: Any, batch_id: str) -> Any:
    for batch in ledger_batches(ledger):
        if str(batch_identifier(batch)) == str(batch_id):
            return batch_identifier(batch)
    from tracer.errors import InputError

    raise InputError(f"There is no batch {batch_id!r} in your edits (it may have been undone already).")


def batch_identifier(batch: Any) -> Any:
    return getattr(batch, "batch_id", None) or getattr(batch, "id", None)


def export_ledger(ledger: Any, loaded: Any) -> str:
    """Write the ledger to a fresh temporary file; returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="locus-edits-"))
    path = folder / "locus-edits.zip"
    ledger.save(path)
    return str(path)


def import_ledger(path: str | None, loaded: Any) -> Any:
    from tracer.errors import InputError

    if not path:
        raise InputError("Choose a file of edits exported from Locus.")
    try:
        from editor.ledger import EditLedger
    except ImportError as error:
        raise _editor_missing(error) from error
    return EditLedger.load(path, loaded)


# --- requests --------------------------------------------------------------------------------------

def split_prompts(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def check_row(row: list[str]) -> None:
    """InputError unless the row is a usable request."""
    from editor.requests import EditRequest

    EditRequest(subject=row[0], prompt=row[1], target_new=row[2]).validated()


def requests_from_rows(rows: list[list[str]]) -> list[Any]:
    """Validated EditRequests of the table (current answer as the true object when known)."""
    from editor.requests import EditRequest, validate_requests

    requests = [
        EditRequest(subject=row[0], prompt=row[1], target_new=row[2], target_true=(row[3].strip() or None))
        for row in rows
    ]
    return validate_requests(requests)


def current_answers(loaded: Any, rows: list[list[str]]) -> list[str]:
    """The model's top next token after each row's filled-in prompt."""
    from editor.requests import EditRequest
    from tracer.predict import predict_next_tokens

    answers = []
    for row in rows:
        request = EditRequest(subject=row[0], prompt=row[1], target_new=row[2] or "?").validated()
        answers.append(predict_next_tokens(loaded, request.text, 1)[0].token)
    return answers


def parse_layers(text: str, loaded: Any) -> list[int]:
    """'2-6', '3,4,5' or '2-4, 7' -> sorted distinct layers, checked against the model."""
    from tracer.errors import InputError

    layers: set[int] = set()
    for part in re.split(r"[,\s]+", (text or "").strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*(?:-|\.\.)\s*(\d+)", part) or re.fullmatch(r"(\d+)", part)
        if not match:
            raise InputError(f"Layers {text!r} are not understood: write e.g. 2-6 or 3,4,5.")
        numbers = [int(group) for group in match.groups() if group is not None]
        low, high = min(numbers), max(numbers)
        layers.update(range(low, high + 1))
    if not layers:
        raise InputError("No layers to edit: choose R on the Choose R tab or type e.g. 2-6.")
    count = loaded.layout.num_layers
    outside = [layer for layer in sorted(layers) if layer >= count]
    if outside:
        raise InputError(f"Layer(s) {outside} do not exist: this model has layers 0..{count - 1}.")
    return sorted(layers)


def counterfact_rows(path: str | None) -> tuple[list[Any], list[list[str]]]:
    """CounterFact records of a JSON file and the table rows they make (validated by the editor)."""
    from tracer.errors import InputError

    if not path:
        raise InputError("Choose a CounterFact JSON file.")
    from editor.counterfact import load_records

    records = load_records(path)
    rows = []
    for record in records:
        rewrite = record_rewrite(record)
        rows.append([
            rewrite["subject"],
            rewrite["prompt"],
            rewrite["target_new"],
            "",
            "; ".join(record_list(record, "paraphrase_prompts")),
            "; ".join(record_list(record, "neighborhood_prompts")),
        ])
    return records, rows


def record_rewrite(record: Any) -> dict:
    """{subject, prompt, target_new, target_true} of a CounterFact record (dict or the editor's object)."""
    data = record.to_dict() if hasattr(record, "to_dict") else record
    rewrite = data["requested_rewrite"]

    def text(value: Any) -> str:
        return value["str"] if isinstance(value, dict) else str(value)

    return {
        "subject": rewrite["subject"],
        "prompt": rewrite["prompt"],
        "target_new": text(rewrite["target_new"]),
        "target_true": text(rewrite.get("target_true", "")),
    }


def record_list(record: Any, key: str) -> list[str]:
    data = record.to_dict() if hasattr(record, "to_dict") else record
    return list(data.get(key) or [])


# --- computing and describing a batch --------------------------------------------------------------

def compute_batch(
    loaded: Any,
    requests: list[Any],
    method: str,
    layers: list[int],
    overrides: dict,
    rows: list[list[str]],
    progress: Progress | None = None,
) -> Any:
    """An EditBatch (weight deltas + diagnostics) for `requests`; the model's weights are left as they were."""
    from tracer.errors import InputError

    try:
        from editor.hparams import default_hparams
    except ImportError as error:
        raise _editor_missing(error) from error
    values = {key: value for key, value in overrides.items() if value is not None}
    if method == "rome":
        if len(requests) != 1:
            raise InputError(f"ROME edits one fact at a time; you have {len(requests)} requests. Use MEMIT for several.")
        hparams = default_hparams(loaded.layout, layers=(max(layers),), method="rome", **values)
        from editor.rome import compute_rome

        return compute_rome(loaded, requests, hparams, progress=progress)
    if method != "memit":
        raise InputError(f"Unknown method {method!r}: choose MEMIT or ROME.")
    hparams = default_hparams(loaded.layout, layers=tuple(layers), method="memit", **values)
    from editor.memit import compute_memit

    return compute_memit(loaded, requests, hparams, progress=progress)


def batch_row(batch: Any) -> list[Any]:
    """[batch id, method, layers, requests, seconds] for the history table."""
    requests = list(getattr(batch, "requests", []) or [])
    described = ", ".join(f"{r.subject} → {r.target_new}" for r in requests[:3])
    if len(requests) > 3:
        described += f" (+{len(requests) - 3} more)"
    hparams = getattr(batch, "hparams", None)
    layers = list(getattr(hparams, "layers", []) or getattr(batch, "layers", []) or [])
    method = getattr(hparams, "method", None) or getattr(batch, "method", "")
    seconds = getattr(batch, "seconds", None) or getattr(batch, "elapsed", None)
    return [
        str(batch_identifier(batch)),
        str(method).upper(),
        _layers_text(layers),
        described,
        round(float(seconds), 1) if seconds is not None else "",
    ]


def _layers_text(layers: list[int]) -> str:
    if not layers:
        return ""
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(layer) for layer in layers)


def batch_dict(batch: Any) -> dict:
    return batch.to_dict() if hasattr(batch, "to_dict") else {"batch": str(batch_identifier(batch))}


def diagnostics_tables(batch: Any) -> tuple[list[list[Any]], list[list[Any]]]:
    """(per request rows, per layer rows) from the batch's diagnostics."""
    diagnostics = getattr(batch, "diagnostics", None)
    per_request = []
    for item in getattr(diagnostics, "requests", []) or []:
        data = item.to_dict() if hasattr(item, "to_dict") else dict(item)
        per_request.append(data)
    per_layer = []
    for item in getattr(diagnostics, "layers", []) or []:
        data = item.to_dict() if hasattr(item, "to_dict") else dict(item)
        per_layer.append(data)
    return _records_to_table(per_request), _records_to_table(per_layer)


def _records_to_table(records: list[dict]) -> Any:
    import gradio as gr

    if not records:
        return gr.Dataframe(value=[], headers=["(none)"], visible=False)
    headers = [key for key, value in records[0].items() if not isinstance(value, (list, dict))]
    rows = [[_short(record.get(key)) for key in headers] for record in records]
    return gr.Dataframe(value=rows, headers=headers, visible=True)


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    return value


def loss_curves(batch: Any) -> dict[str, list[float]]:
    """{request label: loss per optimisation step}."""
    diagnostics = getattr(batch, "diagnostics", None)
    curves = {}
    for item in getattr(diagnostics, "requests", []) or []:
        data = item.to_dict() if hasattr(item, "to_dict") else dict(item)
        label = f"{data.get('subject', '')} → {data.get('target_new', '')}"
        losses = data.get("losses") or data.get("loss_trajectory") or []
        if losses:
            curves[label] = [float(value) for value in losses]
    return curves


def batch_summary_text(batch: Any) -> str:
    row = batch_row(batch)
    return f"Applied batch **{row[0]}** ({row[1]}, layers {row[2]}): {row[3]}. Check it on the **Test** tab."
