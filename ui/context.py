"""What every tab needs: the model manager, the runner, the session state component, and job helpers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ui.models import ModelManager
from ui.runner import Job, ModelRunner, follow
from ui.session import SessionState, ensure_session

# Every event that runs the model shares this queue slot: work is queued, one job at a time.
MODEL_QUEUE = "model"


@dataclass
class AppContext:
    manager: ModelManager
    runner: ModelRunner
    session: Any = None  # the gr.State holding a SessionState, set while building the page
    components: dict[str, Any] = field(default_factory=dict)  # shared components by name (cross-tab wiring)

    def session_of(self, value: SessionState | None) -> SessionState:
        return ensure_session(value, self.manager.default_spec)

    def submit(
        self,
        session: SessionState,
        work: Callable[[Job, Any], Any],
        *,
        name: str,
        edited: bool = True,
    ) -> Job:
        """Run `work(job, loaded)` on the runner thread with the session's model (and its edits unless edited=False)."""
        manager = self.manager
        spec = session.model_spec

        def run(job: Job) -> Any:
            loaded = manager.get(spec, job.progress)
            if not edited:
                return work(job, loaded)
            with session.applied(loaded):
                return work(job, loaded)

        return self.runner.submit(run, name)

    def bind(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler(ctx, ...)` as an event function of the page: `ctx` bound, the component values after it."""
        bound = functools.partial(handler, self)
        bound.__name__ = handler.__name__  # Gradio names events after their function
        return bound

    def run(self, session: SessionState, work: Callable[[Job, Any], Any], *, name: str, edited: bool = True) -> Any:
        """Like `submit`, but wait for the result here (for short jobs)."""
        job = self.submit(session, work, name=name, edited=edited)
        for _ in follow(job, heartbeat=None):
            pass
        return job.result
