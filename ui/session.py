"""Per-browser-session state, kept in a `gr.State` (each tab and each gradio_client has its own).

A session's edits live in its own `EditLedger` (one per model it used). Every model operation of
the session runs inside `session.applied(loaded)`, which puts exactly this session's edits on the
shared model and restores the original weights on exit, so another visitor sees the unedited model.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ui.editing import ledger_batches, new_ledger, split_prompts

_session_numbers = itertools.count(1)


@dataclass
class SessionState:
    """Everything one visitor has done: chosen model, traces, chosen R, edits, imported records."""

    model_spec: str
    number: int = field(default_factory=lambda: next(_session_numbers))
    ledgers: dict[str, Any] = field(default_factory=dict)  # model spec -> editor.edits.ledger.EditLedger
    trace: Any = None  # tracer.trace.TraceResult of the last finished trace
    trace_edited: bool = False  # was that trace computed with this session's edits applied?
    original_trace: Any = None  # the last trace of the unedited model (for the Test tab's difference)
    average: Any = None  # tracer.average.AverageResult
    recommendation: Any = None  # tracer.recommend.LayerRecommendation
    windows: Any = None  # editor.studies.windows.WindowsResult of the last 'Measure by editing' (Choose R tab)
    layers: tuple[int, int] | None = None  # chosen R, first and last layer (inclusive)
    cov_tokens: int | None = None  # covariance budget of the last edit (its cached spectra flag outlier layers)
    records: list[Any] = field(default_factory=list)  # imported CounterFact records (editor.evaluation.counterfact)
    # (subject, prompt template, new object) -> (paraphrases, neighborhood prompts) to check that edit with
    checks: dict[tuple[str, str, str], tuple[list[str], list[str]]] = field(default_factory=dict)
    # Bumped by every change of this session's edits (ui/editing.py's add, undo, reset and import helpers): an output
    # computed at an older version was computed before the visitor's last change (ui/model_state.py).
    ledger_version: int = 0
    computed: dict[str, tuple[int, int]] = field(default_factory=dict)  # output -> (ledger_version, batches) it was computed at
    scratch: Path | None = None  # this session's temporary files (downloads), removed when the session ends
    ended: bool = False  # the server forgot this session (ui.sessions.SessionStore): its page must reload
    _remove_scratch: Any = field(default=None, init=False, repr=False, compare=False)  # weakref.finalize removing `scratch`

    def files_folder(self, name: str) -> Path:
        """An emptied folder `name` inside this session's temporary folder (a new download replaces the last)."""
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix=f"locus-session-{self.number}-"))
            # also removed when this state is garbage collected or the process exits, whichever comes first
            self._remove_scratch = weakref.finalize(self, shutil.rmtree, self.scratch, ignore_errors=True)
        folder = self.scratch / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def discard_files(self) -> None:
        """Remove this session's temporary files."""
        if self._remove_scratch is not None:
            self._remove_scratch()
            self._remove_scratch = self.scratch = None

    def end(self) -> None:
        """The server forgot this session (idle too long, least recently used, or stopping): remove its files."""
        self.ended = True
        self.discard_files()

    def ledger(self) -> Any:
        """This session's ledger for its current model (created on first use)."""
        if self.model_spec not in self.ledgers:

            self.ledgers[self.model_spec] = new_ledger()
        return self.ledgers[self.model_spec]

    def has_edits(self) -> bool:
        ledger = self.ledgers.get(self.model_spec)
        if ledger is None:
            return False

        return bool(ledger_batches(ledger))

    @contextlib.contextmanager
    def applied(self, loaded: Any) -> Iterator[Any]:
        """Run the block with this session's edits on `loaded` (nothing to do when there are none)."""
        if not self.has_edits():
            yield loaded
            return
        with self.ledger().applied(loaded):
            yield loaded

    def remember_checks(self, rows: list[list[str]], requests: list[Any]) -> None:
        """Keep the paraphrase / neighborhood prompts typed for each applied request (for the Test tab)."""
        for row, request in zip(rows, requests):
            key = (request.subject, request.prompt, request.target_new)
            self.checks[key] = (split_prompts(row[4]), split_prompts(row[5]))


def ensure_session(session: SessionState | None, default_spec: str) -> SessionState:
    """The session's state, created on its first event."""
    return session if isinstance(session, SessionState) else SessionState(model_spec=default_spec)
