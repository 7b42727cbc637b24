"""One thread runs every model operation, one after another.

Why a thread of our own: Gradio runs each `next()` of a streaming handler on whichever worker
thread is free, and closes a cancelled generator on its event-loop thread. The model's RLock and
the ledger's `applied(...)` context must be entered and left on the same thread, so model work
never runs in Gradio's threads: a handler submits a `Job`, follows its events (progress, partial
results) and, when Gradio cancels it, only sets the job's cancel flag. The job notices the flag at
its next progress report or partial result, raises `OperationCancelled` inside the work, and every
context manager (tracer stream, ledger) restores the model on the runner thread before the next
job starts. A job that fails does the same.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.errors import OperationCancelled

log = logging.getLogger("locus.ui")

HEARTBEAT = object()  # yielded by `follow` while nothing new happened, so Gradio can cancel between yields


def _cancelled_error() -> Exception:
    return OperationCancelled("The operation was stopped; the model was left as it was.")


@dataclass
class JobEvent:
    kind: str  # "progress" | "item" | "done" | "error"
    value: Any = None
    fraction: float | None = None
    message: str = ""


class Job:
    """One unit of model work; `work(job)` reports through `progress` and `emit`."""

    def __init__(self, work: Callable[[Job], Any], name: str) -> None:
        self.work = work
        self.name = name
        self.events: queue.Queue[JobEvent] = queue.Queue()
        self.finished = threading.Event()
        self.result: Any = None
        self._cancel = threading.Event()

    # --- called by the work, on the runner thread ---
    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report progress (0..1); raises OperationCancelled when the job was cancelled."""
        self.check_cancelled()
        self.events.put(JobEvent("progress", fraction=fraction, message=message))

    def emit(self, item: Any) -> None:
        """Hand a partial result to the follower; raises OperationCancelled when the job was cancelled."""
        self.check_cancelled()
        self.events.put(JobEvent("item", item))

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise _cancelled_error()

    # --- called by the follower ---
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class ModelRunner:
    """A single daemon thread that executes submitted jobs in order."""

    def __init__(self, name: str = "locus-model") -> None:
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Job], Any], name: str = "job") -> Job:
        job = Job(work, name)
        with self._idle:
            self._pending += 1
        self._jobs.put(job)
        return job

    def run(self, work: Callable[[Job], Any], name: str = "job") -> Any:
        """Submit `work` and wait for its result (re-raising its exception here)."""
        job = self.submit(work, name)
        for _ in follow(job, heartbeat=None):
            pass
        return job.result

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job.cancelled:
                    raise _cancelled_error()
                job.result = job.work(job)
                job.events.put(JobEvent("done", job.result))
            except BaseException as error:  # noqa: BLE001 - the follower decides how to show it
                job.events.put(JobEvent("error", error))
            finally:
                job.finished.set()
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


def follow(
    job: Job,
    progress: Callable[..., Any] | None = None,
    heartbeat: float | None = 0.5,
) -> Iterator[Any]:
    """Yield the job's partial results (the newest when several wait) until it ends.

    Progress events go to `progress(fraction, desc=message)` (a gr.Progress). When `heartbeat` is
    set, HEARTBEAT is yielded after that many idle seconds, giving Gradio a point to cancel at.
    When it ends, its result is `job.result`; its exception is raised here. If the follower
    is closed early (Gradio cancelled the event), the job is cancelled.
    """
    finished = False
    try:
        while True:
            try:
                event = job.events.get(timeout=heartbeat)
            except queue.Empty:
                yield HEARTBEAT
                continue
            latest_item = None
            has_item = False
            pending = [event]
            while True:  # coalesce what is already waiting: only the newest partial result matters
                try:
                    pending.append(job.events.get_nowait())
                except queue.Empty:
                    break
            for event in pending:
                if event.kind == "progress":
                    if progress is not None:
                        _report(progress, event)
                elif event.kind == "item":
                    latest_item, has_item = event.value, True
                elif event.kind == "done":
                    finished = True
                elif event.kind == "error":
                    finished = True
                    raise event.value
            if has_item:
                yield latest_item
            if finished:
                return
    finally:
        if not finished:
            job.cancel()


def _report(progress: Callable[..., Any], event: JobEvent) -> None:
    try:
        if event.fraction is None:
            progress(None, desc=event.message)
        else:
            progress(min(1.0, max(0.0, float(event.fraction))), desc=event.message)
    except Exception:  # a progress display must never break the work
        log.debug("progress update failed", exc_info=True)
