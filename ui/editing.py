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
    """An empty EditLedger for one session (bound to a model at its first batch)."""
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


def add_batch(ledger: Any, batch: Any, loaded: Any) -> None:
    """Append a computed batch (records the original weights' digests; call with no ledger applied)."""
    ledger.add(batch, loaded)


def undo_batch(ledger: Any, batch_id: str) -> Any:
    return ledger.undo(str(batch_id))


def reset_ledger(ledger: Any) -> None:
    ledger.reset()


def batch_identifier(batch: Any) -> str:
    return str(batch.batch_id)


def export_ledger(ledger: Any, loaded: Any) -> str:
    """Write the ledger (safetensors with JSON metadata) to a fresh temporary file; returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="locus-edits-"))
    return str(ledger.save(folder / "locus-edits.safetensors"))


def import_ledger(path: str | None, loaded: Any) -> Any:
    """A ledger read from a file exported by Locus (refused when it was made for another model)."""
    from tracer.errors import InputError

    if not path:
        raise InputError("Choose a file of edits exported from Locus (.safetensors).")
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
    ledger: Any,
    requests: list[Any],
    method: str,
    layers: list[int],
    overrides: dict,
    progress: Progress | None = None,
) -> Any:
    """An EditBatch on top of `ledger`'s edits; the model's weights are left as they were.

    Call it with the ledger *not* applied: the editor computes the covariance on the original
    weights and applies the ledger itself for the targets and keys.
    """
    from tracer.errors import InputError

    try:
        from editor.hparams import default_hparams
        from editor.memit import compute_memit
    except ImportError as error:
        raise _editor_missing(error) from error
    values = {key: value for key, value in overrides.items() if value is not None}
    if method == "rome":
        if len(requests) != 1:
            raise InputError(f"ROME edits one fact at a time; you have {len(requests)} requests. Use MEMIT for several.")
        hparams = default_hparams(loaded.layout, layers=(max(layers),), method="rome", **values)
        try:
            from editor.rome import compute_rome
        except ImportError as error:
            raise _editor_missing(error) from error
        return compute_rome(loaded, requests, hparams, progress=progress, ledger=ledger)
    if method not in ("memit", "alphaedit"):
        raise InputError(f"Unknown method {method!r}: choose MEMIT or ROME.")
    hparams = default_hparams(loaded.layout, layers=tuple(layers), method=method, **values)
    return compute_memit(loaded, requests, hparams, progress=progress, ledger=ledger if ledger_batches(ledger) else None)


def layers_text(layers: list[int]) -> str:
    layers = sorted(layers)
    if not layers:
        return ""
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(layer) for layer in layers)


def batch_row(batch: Any) -> list[Any]:
    """[batch id, method, layers, requests, seconds] for the history table."""
    described = "; ".join(f"{r.subject} → {r.target_new}" for r in batch.requests[:3])
    if len(batch.requests) > 3:
        described += f" (+{len(batch.requests) - 3} more)"
    return [batch.batch_id, batch.method.upper(), layers_text(list(batch.layers)), described, round(float(batch.seconds), 1)]


def batch_dict(batch: Any) -> dict:
    return batch.to_dict()


REQUEST_COLUMNS = ["subject", "new object", "p(new object) at the target", "steps", "converged", "‖δ‖ / ‖h‖"]
LAYER_COLUMNS = ["layer", "‖Δ‖ / ‖W‖", "residual before", "share written here", "largest eigenvalue of C", "condition of C"]


def diagnostics_tables(batch: Any) -> tuple[Any, Any]:
    """(per request, per layer) tables of the batch's diagnostics."""
    import gradio as gr

    per_request = [
        [d.subject, d.target_new, round(d.final_probability, 3), d.steps, "yes" if d.converged else "no",
         round(d.delta_norm / d.hidden_norm, 3) if d.hidden_norm else ""]
        for d in batch.request_diagnostics
    ]
    per_layer = [
        [d.layer, f"{d.relative_update:.2e}", round(d.residual_norm, 2), round(d.residual_share, 2),
         "" if d.cov_largest_eigenvalue is None else round(d.cov_largest_eigenvalue, 2),
         "" if d.cov_condition_number is None else f"{d.cov_condition_number:.3g}"]
        for d in batch.layer_diagnostics
    ]
    return (
        gr.Dataframe(value=per_request, headers=REQUEST_COLUMNS, visible=bool(per_request)),
        gr.Dataframe(value=per_layer, headers=LAYER_COLUMNS, visible=bool(per_layer)),
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
