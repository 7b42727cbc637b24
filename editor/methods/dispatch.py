"""One entry point for the editing methods: MEMIT, ROME (rank one, one layer, requests in turn), AlphaEdit and ENCORE."""

from __future__ import annotations

from core.errors import InputError
from core.loading import LoadedModel
from core.progress import Progress
from editor.edits.batch import EditBatch
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.methods.hparams import METHODS, MemitHyperParams, default_hparams
from editor.methods.memit import compute_memit
from editor.methods.rome import compute_rome
from editor.statistics.covariance import CovarianceSet

METHOD_LABELS = {
    "memit": "MEMIT (many facts, layers R)",
    "rome": "ROME (the last layer of R; facts one after another)",
    "alphaedit": "AlphaEdit (MEMIT kept off what C preserves)",
    "encore": "ENCORE (MEMIT for long edit sequences: early stop, norm constraint)",
}


def method_hparams(loaded: LoadedModel, method: str, layers, **overrides) -> MemitHyperParams:
    """The family's defaults for `method` over `layers` (ROME: the last of them), with `overrides` (None = default)."""
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}: choose {', '.join(METHODS)}.")
    layers = tuple(layers)
    if method == "rome" and layers:
        layers = (max(layers),)
    return default_hparams(loaded.layout, layers=layers or None, method=method, **overrides)


def compute_edit(
    loaded: LoadedModel,
    requests: list[EditRequest],
    hparams: MemitHyperParams,
    progress: Progress | None = None,
    ledger: EditLedger | None = None,
    covariances: CovarianceSet | None = None,
) -> EditBatch:
    """An EditBatch by `hparams.method`, computed on top of `ledger`'s edits; the weights are left as they were."""
    ledger = ledger if ledger is not None and len(ledger) else None
    if hparams.method == "rome":
        return compute_rome(loaded, requests, hparams, progress, ledger=ledger, covariances=covariances)
    return compute_memit(loaded, requests, hparams, progress, ledger=ledger, covariances=covariances)
