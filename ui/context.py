"""What every tab needs: the model manager, the runner, the session state component, and job helpers."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.errors import InputError
from ui.errors import as_gradio_error
from ui.limits import Limits
from ui.models import ModelManager
from ui.pause import ModelPause
from ui.runner import Job, ModelRunner, follow
from ui.session import SessionState, ensure_session
from ui.sessions import SESSION_ENDED, SessionStore

# Every event that uses the model joins this Gradio concurrency group. Its handlers start at once and
# wait in the runner's queue (ui/runner.py), which runs one job at a time, short ones first (also at a
# long job's safe points), and tells each waiting visitor its place in line; the limit only bounds how
# many handlers wait at once.
MODEL_QUEUE = "model"
MODEL_EVENTS = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 16}
STOP_WAIT_S = 3.0  # a Stop waits this long for the job to end, to say "Stopped" rather than "Stopping"


@dataclass
class AppContext:
    manager: ModelManager
    runner: ModelRunner
    limits: Limits = field(default_factory=Limits)
    sessions: SessionStore = field(default_factory=SessionStore)  # visitors' sessions, found again after a reload
    pool: Any = None  # core.distributed.WorkerPool of `app.py --workers/--ray`: the Averages tab's facts run there
    health_corpus: Any = "wikipedia"  # editor.statistics.corpus source (name, file or Corpus) of the held-out texts for perplexity
    health_probes: int | None = None  # known facts probed for retention (None: editor.evaluation.health.PROBE_COUNT)
    session: Any = None  # the gr.State holding a SessionState, set while building the page
    components: dict[str, Any] = field(default_factory=dict)  # shared components by name (cross-tab wiring)

    def session_of(self, value: SessionState | None) -> SessionState:
        """The visitor's session for a request (every handler starts here), its idle time restarted; gr.Error if it ended."""
        session = ensure_session(value, self.manager.default_spec)
        self.sessions.touch(session)
        if session.ended:
            raise as_gradio_error(InputError(SESSION_ENDED))
        return session

    def submit(
        self,
        session: SessionState,
        work: Callable[[Job, Any], Any],
        *,
        name: str,
        edited: bool = True,
        lane: str = "long",
    ) -> Job:
        """Queue `work(job, loaded)` on the runner thread with the session's model (and its edits unless edited=False).

        `lane` "short" for work of about a second (it runs before waiting long jobs, and at the safe points of
        another visitor's running long job, with this session's edits only). Refused at once
        (InputError) when the queue is full or the session already has such a job waiting or running.
        """
        manager = self.manager
        spec = session.model_spec

        def run(job: Job) -> Any:
            loaded = manager.get(spec, job.progress)
            job.pause_context = ModelPause.of(loaded)  # what a safe point of this job does to the model
            if not edited:
                return work(job, loaded)
            with session.applied(loaded):
                return work(job, loaded)

        return self.runner.submit(run, name, lane=lane, owner=session.number, model=spec)

    def model_of(self, session: SessionState) -> Any:
        """The session's model when it is loaded, else None (for bounds checked before a job is queued)."""
        loaded = self.manager.current()
        return loaded if loaded is not None and loaded.spec == session.model_spec else None

    def loaded_model(self, session: SessionState) -> Any:
        """The session's model (InputError while it is still loading)."""
        loaded = self.model_of(session)
        if loaded is None:
            raise InputError("The model is still loading; try again in a moment.")
        return loaded

    def num_layers(self, session: SessionState) -> int | None:
        """Blocks of the session's model, when it is loaded."""
        loaded = self.model_of(session)
        return loaded.layout.num_layers if loaded is not None else None

    def bind(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler(ctx, ...)` as an event function of the page: `ctx` bound, the component values after it."""
        bound = functools.partial(handler, self)
        bound.__name__ = handler.__name__  # Gradio names events after their function
        return bound

    def run(
        self,
        session: SessionState,
        work: Callable[[Job, Any], Any],
        *,
        name: str,
        edited: bool = True,
        lane: str = "short",
        progress: Callable[..., Any] | None = None,
    ) -> Any:
        """Like `submit`, but wait here for the result (showing the place in line and progress on `progress`)."""
        job = self.submit(session, work, name=name, edited=edited, lane=lane)
        for _ in follow(job, progress, heartbeat=None, runner=self.runner):
            pass
        return job.result

    def follow(self, job: Job, progress: Callable[..., Any] | None) -> Iterator[Any]:
        """`runner.follow` for this app's runner: place in line, progress, partial results, HEARTBEATs."""
        return follow(job, progress, runner=self.runner)

    def stop(self, session: SessionState, wait: float = STOP_WAIT_S) -> str:
        """Stop the session's long jobs: what the page should say (after waiting up to `wait` s for them to end)."""
        jobs = [job for job in self.runner.jobs_of(session.number) if job.lane == "long"]
        if not jobs:
            return "Nothing of yours is running."
        stopped = [job for job in jobs if job.cancel()]
        late = [job.name for job in jobs if job not in stopped]
        if late:
            return f"Too late to stop your {late[0]}: it had already been applied (undo it in the history)."
        deadline = time.monotonic() + wait
        for job in stopped:
            job.finished.wait(max(0.0, deadline - time.monotonic()))
        if all(job.finished.is_set() for job in stopped):
            return f"Stopped your {stopped[0].name}: the model is exactly as it was."
        return f"Stopping your {stopped[0].name}… it stops at its next step; the model is left exactly as it was."


def stop_jobs(ctx: AppContext, session: SessionState | None) -> str:
    """The Stop buttons' handler (runs outside the queue): stop this visitor's long jobs, say what happened."""
    return ctx.stop(ctx.session_of(session))
