"""Which model state an output was computed on ("original weights" / "your edits: 2 batches"), and whether the
visitor has changed the edits since.

A handler that computes an output on the session's model calls `record(session, key)` when it is done; a
`StateNote` (a line above that output, and a Refresh button shown only when it is stale) reads it back:
"Computed on your edits: 2 batches." or, after an edit, undo, reset or import (each bumps
`SessionState.ledger_version`, ui/editing.py), "⚠ Computed before your last change …". `wire_note` redraws
the note after the output's own event, and `refresh_on` after the events that change the edits (or a tab opening).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any, NamedTuple

import gradio as gr

from ui.controls import PageOnly
from ui.editing import ledger_batches


def batches_of(session: Any) -> int:
    """How many batches of edits the session's model has now."""
    return len(ledger_batches(session.ledgers.get(session.model_spec)))


def describe(batches: int) -> str:
    """'original weights' or 'your edits: 2 batches'."""
    return "original weights" if batches == 0 else f"your edits: {batches} batch{'es' if batches != 1 else ''}"


def record(session: Any, key: str) -> None:
    """The output `key` was just computed on the session's model as it is now."""
    session.computed[key] = (session.ledger_version, batches_of(session))


def record_original(session: Any, key: str) -> None:
    """The output `key` was just computed on the original weights, whatever the edits (it never goes stale)."""
    session.computed[key] = (None, 0)


def is_stale(session: Any, key: str) -> bool:
    """Was output `key` computed before the session's last change of its edits?"""
    computed = session.computed.get(key)
    return computed is not None and computed[0] is not None and computed[0] != session.ledger_version


def note_html(session: Any, key: str, action: str) -> str:
    """The note above output `key`: the model state it was computed on, marked when the edits changed since
    ('' before it was computed). `action` names the button that computes it again."""
    computed = session.computed.get(key) if session is not None else None
    if computed is None:
        return ""
    version, batches = computed
    if version is None:
        return ('<div class="model-state" role="status">Computed on the model with <b>original weights</b> '
                "(your edits are never applied here).</div>")
    if version == session.ledger_version:
        return f'<div class="model-state" role="status">Computed on the model with <b>{html.escape(describe(batches))}</b>.</div>'
    return (
        '<div class="model-state stale" role="status" style="color: var(--body-text-color); '
        'background: var(--color-accent-soft); padding: 2px 6px; border-radius: 4px;">'
        f"⚠ <b>Computed before your last change</b> (on {html.escape(describe(batches))}; now: "
        f"{html.escape(describe(batches_of(session)))}). Press <i>{html.escape(action)}</i> or <i>Refresh</i> to compute "
        "it again.</div>"
    )


class StateNote(NamedTuple):
    """An output's model-state line and its Refresh button."""

    key: str
    action: str
    note: PageOnly
    refresh: gr.Button  # shown only while the output is stale: computes it again


def state_note(key: str, action: str, elem_id: str) -> StateNote:
    """The note (elem_id `elem_id`) and its Refresh button (`{elem_id}-refresh`), laid out in a row."""
    with gr.Row(equal_height=True):
        note = PageOnly("", elem_id=elem_id, scale=6)
        refresh = gr.Button("Refresh", size="sm", visible=False, elem_id=f"{elem_id}-refresh", scale=1, min_width=90)
    return StateNote(key, action, note, refresh)


def show_note(note: StateNote) -> Callable[[Any, Any], tuple]:
    """An event function (ctx, session) -> (note, refresh button) for `note`."""

    def shown(ctx: Any, session: Any) -> tuple:
        if session is None:
            return "", gr.Button(visible=False)
        return note_html(session, note.key, note.action), gr.Button(visible=is_stale(session, note.key))

    shown.__name__ = f"show_state_{note.key.replace('-', '_')}"
    return shown


def refresh_on(ctx: Any, notes: list[StateNote], events: list[Any]) -> None:
    """Redraw `notes` after each of `events` (an output's own event, the events that change the edits, a tab opening)."""
    for event in events:
        listen = event.then if hasattr(event, "then") else event  # a dependency, or a listener such as `tab.select`
        for note in notes:
            listen(ctx.bind(show_note(note)), [ctx.session], [note.note, note.refresh], queue=False,
                   api_visibility="private", show_progress="hidden")
