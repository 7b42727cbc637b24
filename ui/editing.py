"""Thin adapter over the editor's public API (editor/ledger.py, memit.py, rome.py, evaluate.py)."""

from __future__ import annotations

from typing import Any


def _editor_missing(error: ImportError):
    from tracer.errors import LocusError

    return LocusError(f"The editor is not available in this build ({error.name} is missing).")


def new_ledger() -> Any:
    """An empty EditLedger for one session."""
    try:
        from editor.ledger import EditLedger
    except ImportError as error:
        raise _editor_missing(error) from error
    return EditLedger()


def ledger_batches(ledger: Any) -> list[Any]:
    """The applied batches of a ledger, oldest first."""
    return list(getattr(ledger, "batches", []) or [])
