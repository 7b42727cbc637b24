"""One thread runs every model operation, one after another, short jobs before long ones.

Why a thread of our own: Gradio runs each `next()` of a streaming handler on whichever worker
thread is free, and closes a cancelled generator on its event-loop thread. The model's RLock and
the ledger's `applied(...)` context must be entered and left on the same thread, so model work
never runs in Gradio's threads: a handler submits a `Job`, follows its events (queue position,
progress, partial results) and, to stop it, only sets the job's cancel flag. The job notices the
flag at its next progress report or partial result, raises `OperationCancelled` inside the work,
and every context manager (tracer stream, ledger) restores the model on the runner thread before
the next job starts. A job that fails does the same.

Fair sharing: two lanes. A waiting short job (a prediction, a preview, an undo) always runs before
a waiting long one (a trace, an edit, averages). Each visitor may have one long job and a few short
ones waiting or running at a time, and the whole queue is bounded: beyond that a request is refused
at once with a plain message.

Preemption: a long job offers safe points (`job.safe_point()`: `relay` does after each update, and
library code through `core.progress.safe_point(job.progress)`), places where the model holds nothing
of its work but its session's edits. There the waiting short jobs of other visitors on the same model
run as guests, on this thread, each with its own edits: the job's `pause_context` (set by the app,
ui/pause.py) takes the long job's edits off the weights and keeps its random state, and afterwards puts
both back bit for bit, so the long job goes on exactly where it was, with the results of an
uninterrupted run. So a short job waits for one step of a long one, not for all of it. A visitor's own
short jobs wait for its own long job (they might change what it works on).

Stop means stop: work that changes a visitor's state does it through `job.commit(action)`. Before
the commit a stop cancels the job and nothing has changed; after it `cancel()` returns False and
the job runs to the end, so the page shows the change as made.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.errors import InputError, OperationCancelled

log = logging.getLogger("locus.ui")

HEARTBEAT = object()  # yielded by `follow` while nothing new happened, so Gradio can cancel between yields
LANES = ("short", "long")
MAX_WAITING = 32  # jobs waiting in both lanes together
MAX_PER_VISITOR = {"short": 3, "long": 1}  # jobs one visitor may have waiting or running, per lane
MAX_GUESTS_PER_PAUSE = 8  # short jobs run at one safe point before the long job goes on


def _cancelled_error() -> Exception:
    return OperationCancelled("The operation was stopped; the model was left as it was.")


@dataclass
class JobEvent:
    kind: str  # "progress" | "item" | "done" | "error"
    value: Any = None
    fraction: float | None = None
    message: str = ""


class Job:
    """One unit of model work; `work(job)` reports through `progress` and `emit`, and changes state by `commit`."""

    def __init__(
        self, work: Callable[[Job], Any], name: str, *, lane: str = "long", owner: Any = None, model: Any = None
    ) -> None:
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        self.work = work
        self.name = name
        self.lane = lane
        self.owner = owner  # who asked (a visitor's session number), or None
        self.model = model  # the model it needs (a spec), or None: guests join a long job on the same model only
        # Set by the work once it has the model: a context that makes the model clean for guests at a
        # safe point and restores this job's state after them, or None when that is impossible right now.
        self.pause_context: Callable[[], contextlib.AbstractContextManager[Any] | None] | None = None
        self.safe_points = 0  # safe points offered so far (a job that offers none is waited for to its end)
        self.pauses = 0  # safe points at which guests ran
        self._runner: ModelRunner | None = None
        self.events: queue.Queue[JobEvent] = queue.Queue()
        self.finished = threading.Event()
        self.result: Any = None
        self.submitted = time.monotonic()
        self.started: float | None = None
        self._cancel = threading.Event()
        self._state = threading.Lock()  # orders cancel() and commit()
        self._committed = False

    # --- called by the work, on the runner thread ---
    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report progress (0..1); raises OperationCancelled when the job was cancelled."""
        self.check_cancelled()
        self.events.put(JobEvent("progress", fraction=fraction, message=message))

    def emit(self, item: Any) -> None:
        """Hand a partial result to the follower; raises OperationCancelled when the job was cancelled."""
        self.check_cancelled()
        self.events.put(JobEvent("item", item))

    def relay(self, stream: Iterator[Any]) -> Any:
        """Emit every update of a streaming computation (`.fraction`, `.message`, `.result`), closing it at the end or on
        a stop; returns the last update's result (None for an empty stream)."""
        final = None
        with contextlib.closing(stream):
            for update in stream:
                final = update.result
                self.progress(update.fraction, update.message)
                self.emit(update)
                self.safe_point()  # a stream leaves nothing on the model between two updates
        return final

    def safe_point(self) -> None:
        """Let waiting short jobs of other visitors run now; call only where the model holds nothing of this job's
        work but its ledger's edits (see the module docstring). Raises OperationCancelled when stopped."""
        self.check_cancelled()
        self.safe_points += 1
        if self._runner is not None:
            self._runner.pause(self)

    def check_cancelled(self) -> None:
        if self._cancel.is_set() and not self._committed:
            raise _cancelled_error()

    def commit(self, action: Callable[[], Any]) -> Any:
        """Run `action` (the change this job makes) unless the job was stopped; after it, stopping is refused."""
        with self._state:
            if self._cancel.is_set():
                raise _cancelled_error()
            self._committed = True
        return action()

    # --- called by the follower or a Stop button ---
    def cancel(self) -> bool:
        """Ask the job to stop; False when it is past its commit point (it will finish, its change made)."""
        with self._state:
            if self._committed:
                return False
            self._cancel.set()
            return True

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def committed(self) -> bool:
        return self._committed


@dataclass(frozen=True)
class QueueStatus:
    """Where a waiting job stands: jobs ahead of it, the one running now, and whether it runs at that job's next pause."""

    ahead: int
    running: str | None  # name of the running job
    running_is_yours: bool
    running_seconds: float
    at_pause: bool = False  # runs at the running job's next safe point, not after it
    running_is_the_servers: bool = False  # the running job is no visitor's (the model load at start-up)

    def describe(self) -> str:
        """'Waiting: 2 jobs ahead of you; running now: another visitor's edit (45 s so far).'"""
        ahead = "1 job" if self.ahead == 1 else f"{self.ahead} jobs"
        whose = "your" if self.running_is_yours else "the server's" if self.running_is_the_servers else "another visitor's"
        if self.at_pause:
            text = f"Waiting for {whose} {self.running} ({self.running_seconds:.0f} s so far): yours runs at its next pause"
            return text + (f", after {ahead} ahead of you." if self.ahead else ", in a moment.")
        text = f"Waiting in line: {ahead} ahead of you"
        if self.running:
            text += f"; running now: {whose} {self.running} ({self.running_seconds:.0f} s so far)"
        return text + "."


class ModelRunner:
    """A single daemon thread that executes submitted jobs, short lane first, each lane in order; short jobs of other
    visitors also run at a long job's safe points (unless `preempt` is False: then each job runs to its end)."""

    def __init__(self, name: str = "locus-model", max_waiting: int = MAX_WAITING, *, preempt: bool = True) -> None:
        self.max_waiting = max_waiting
        self.preempt = preempt
        self._lanes: dict[str, collections.deque[Job]] = {lane: collections.deque() for lane in LANES}
        self._condition = threading.Condition()
        self._running: Job | None = None
        self._guest: Job | None = None  # a short job running at the running job's safe point
        self._pending = 0  # submitted and not finished
        self.submitted = 0  # jobs accepted since start (a refused request adds none)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, work: Callable[[Job], Any], name: str = "job", *, lane: str = "long", owner: Any = None, model: Any = None
    ) -> Job:
        """Queue `work`; InputError at once when the queue is full or this visitor already has enough queued."""
        job = Job(work, name, lane=lane, owner=owner, model=model)
        job._runner = self
        with self._condition:
            waiting = sum(len(jobs) for jobs in self._lanes.values())
            if waiting >= self.max_waiting:
                raise InputError(f"The server is busy: {waiting} jobs are waiting. Please try again in a minute.")
            if owner is not None:
                mine = [other for other in self._active() if other.owner == owner and other.lane == lane]
                if len(mine) >= MAX_PER_VISITOR[lane]:
                    raise InputError(
                        f"You already have {mine[0].name!r} waiting or running: wait for it to finish, or press Stop."
                    )
            self._lanes[lane].append(job)
            self._pending += 1
            self.submitted += 1
            self._condition.notify_all()
        return job

    def run(self, work: Callable[[Job], Any], name: str = "job", *, lane: str = "short") -> Any:
        """Submit `work` and wait for its result (re-raising its exception here)."""
        job = self.submit(work, name, lane=lane)
        for _ in follow(job, heartbeat=None):
            pass
        return job.result

    def queue_status(self, job: Job) -> QueueStatus | None:
        """Where `job` waits (None once it has started or finished)."""
        with self._condition:
            if job.started is not None or job.finished.is_set():
                return None
            running = self._running
            at_pause = running is not None and running.safe_points > 0 and self._may_join(job, running)
            if at_pause:  # only the guests before it are ahead
                ahead = [other for other in self._lanes["short"] if self._may_join(other, running)].index(job)
            else:
                order = [*self._lanes["short"], *self._lanes["long"]]
                ahead = (order.index(job) if job in order else 0) + (running is not None)
            return QueueStatus(
                ahead=ahead,
                running=running.name if running is not None else None,
                running_is_yours=running is not None and running.owner is not None and running.owner == job.owner,
                running_seconds=time.monotonic() - running.started if running is not None and running.started else 0.0,
                at_pause=at_pause,
                running_is_the_servers=running is not None and running.owner is None,
            )

    def jobs_of(self, owner: Any) -> list[Job]:
        """The jobs `owner` has waiting or running."""
        with self._condition:
            return [job for job in self._active() if job.owner == owner]

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has finished; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._pending == 0, timeout=timeout)

    @property
    def busy(self) -> bool:
        return self._pending > 0

    @property
    def running(self) -> Job | None:
        """The job the runner thread is in (a long job paused for guests included), or None."""
        return self._running

    # --- safe points --------------------------------------------------------------------------
    def pause(self, job: Job) -> None:
        """At `job`'s safe point: run the short jobs that may join it, inside its pause context; then return to it."""
        if not self.preempt or job is not self._running or self._guest is not None or job.lane != "long":
            return
        with self._condition:
            if not any(self._may_join(other, job) for other in self._lanes["short"]):
                return
        context = job.pause_context() if job.pause_context is not None else contextlib.nullcontext()
        if context is None:  # the model is not clean here after all (e.g. a hook is registered): no pause
            log.warning("%s offered a safe point with the model in use; no pause there", job.name)
            return
        with context:
            for _ in range(MAX_GUESTS_PER_PAUSE):
                guest = self._take_guest(job)
                if guest is None:
                    break
                self._execute(guest)
        job.pauses += 1

    def _may_join(self, guest: Job, job: Job) -> bool:
        """Whether waiting `guest` may run at `job`'s safe points: short, another visitor's, on the same model."""
        return (
            self.preempt and job.lane == "long" and guest.lane == "short" and guest.model == job.model
            and (guest.owner is None or guest.owner != job.owner)
        )

    def _take_guest(self, job: Job) -> Job | None:
        with self._condition:
            guest = next((other for other in self._lanes["short"] if self._may_join(other, job)), None)
            if guest is not None:
                self._lanes["short"].remove(guest)
                guest.started = time.monotonic()
                self._guest = guest
            return guest

    # --- the thread ---------------------------------------------------------------------------
    def _active(self) -> list[Job]:
        running = [job for job in (self._running, self._guest) if job is not None]
        return [*running, *self._lanes["short"], *self._lanes["long"]]

    def _next(self) -> Job:
        with self._condition:
            self._condition.wait_for(lambda: any(self._lanes.values()))
            job = (self._lanes["short"] or self._lanes["long"]).popleft()
            job.started = time.monotonic()
            self._running = job
            return job

    def _execute(self, job: Job) -> None:
        """Run one job to its end, its result or error as its last event (the running job, or a guest)."""
        try:
            if job.cancelled:
                raise _cancelled_error()
            job.result = job.work(job)
            job.events.put(JobEvent("done", job.result))
        except BaseException as error:  # noqa: BLE001 - the follower decides how to show it
            job.events.put(JobEvent("error", error))
        finally:
            job.finished.set()
            with self._condition:
                if job is self._guest:
                    self._guest = None
                else:
                    self._running = None
                self._pending -= 1
                self._condition.notify_all()

    def _loop(self) -> None:
        while True:
            self._execute(self._next())


# A library's stage message may carry its own percentage or estimate ("about 12 s left"); the line shows one of each.
_OWN_ESTIMATE = re.compile(r"[\s,;·(-]*\babout\s+[^,;·()]*?\bleft\b\)?", re.IGNORECASE)
_OWN_PERCENT = re.compile(r"[\s,;·(-]*\b\d+(?:\.\d+)?\s?%(?:\s+done)?\)?", re.IGNORECASE)
MIN_ESTIMATE_FRACTION = 0.005  # below this share done, the first chunk is not measured yet: no estimate
MIN_ESTIMATE_SECONDS = 1.0


def plain_stage(message: str) -> str:
    """A stage message without the percentages and time estimates of its own ('covariance: 10/50 tokens')."""
    return _OWN_PERCENT.sub("", _OWN_ESTIMATE.sub("", message or "")).strip(" ,;·-")


def duration(seconds: float) -> str:
    """'7 s', '1 min 05 s', '2 h 03 min': a time span as a person reads it."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"



@dataclass(frozen=True)
class ProgressView:
    """What one job's progress line says at one moment: one share done, one elapsed time, one estimate.

    `waiting` (the place in line) while the job waits; then `fraction` (never decreasing), the stage's
    words, the time since the job STARTED and the time left (None until the first chunk is measured).
    """

    name: str
    waiting: str | None = None
    fraction: float = 0.0
    message: str = ""
    elapsed: float = 0.0
    remaining: float | None = None
    stopping: bool = False

    @property
    def percent(self) -> int:
        """The share done in whole percent, rounded down (100 only when the job is done)."""
        return min(100, int(self.fraction * 100 + 1e-9))

    def text(self, with_percent: bool = True) -> str:
        """The line in words, never empty (`with_percent` False for displays that draw their own, like gr.Progress)."""
        if self.waiting is not None:
            return self.waiting
        if self.stopping:
            return f"Stopping your {self.name}… it stops at its next step ({duration(self.elapsed)} so far)."
        parts = [f"{self.percent}%"] if with_percent else []
        parts.append(self.message or f"{self.name}: starting")
        parts.append(f"{duration(self.elapsed)} so far")
        if self.fraction < 1.0:
            parts.append(f"about {duration(self.remaining)} left" if self.remaining is not None else "estimating the time left")
        return " · ".join(parts)


class LineProgress:
    """A progress sink for a job's own line on the page (ui/controls.py draws it): it keeps the latest view.

    It also takes gr.Progress's call, `sink(fraction, desc=...)`, for code that reports without a job.
    """

    def __init__(self) -> None:
        self.view: ProgressView | None = None
        self.job: Job | None = None  # the job it follows (to stop it when the page goes away)
        self._lock = threading.Lock()

    def show(self, view: ProgressView) -> None:
        with self._lock:
            self.view = view

    def __call__(self, fraction: float | None = None, desc: str | None = None, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            previous = self.view.fraction if self.view is not None else 0.0
            self.view = ProgressView(name=desc or "", fraction=max(previous, float(fraction or 0.0)), message=desc or "")


class ProgressReport:
    """What the page shows while following a job: its place in line, then ONE progress line (ProgressView).

    The share done never goes backwards; the elapsed time counts from the job's start (not from the last
    update); the estimate of the time left is made once the first chunk is measured (elapsed x (1 - f) / f at
    each new report) and counts down between reports. `progress` is a LineProgress (gets the view) or a
    gr.Progress-like callable (gets `progress(fraction, desc=text)` without a percentage: it draws its own).
    """

    def __init__(self, job: Job, runner: ModelRunner | None, progress: Callable[..., Any] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job, self.runner, self.progress, self.clock = job, runner, progress, clock
        self.fraction = 0.0
        self.message = ""
        self.estimate: tuple[float, float] | None = None  # (when it was made, seconds left then)
        if isinstance(progress, LineProgress):
            progress.job = job

    def waiting(self) -> bool:
        """Show the job's place in line while it waits; False once it runs."""
        status = self.runner.queue_status(self.job) if self.runner is not None else None
        if status is None:
            return False
        self._show(ProgressView(self.job.name, waiting=status.describe(), elapsed=self.clock() - self.job.submitted))
        return True

    def update(self, event: JobEvent) -> None:
        if event.fraction is not None:
            fraction = min(1.0, max(0.0, float(event.fraction)))
            if fraction > self.fraction:
                self.fraction = fraction
                self._estimate()
        self.message = plain_stage(event.message) or self.message
        self.refresh()

    def _estimate(self) -> None:
        """A new estimate from the time so far and the share done (none before the first chunk is measured)."""
        if self.job.started is None:
            return
        now = self.clock()
        elapsed = now - self.job.started
        if self.fraction >= 1.0 or self.fraction < MIN_ESTIMATE_FRACTION or elapsed < MIN_ESTIMATE_SECONDS:
            self.estimate = None if self.fraction >= 1.0 else self.estimate
            return
        self.estimate = (now, elapsed * (1.0 - self.fraction) / self.fraction)

    def view(self) -> ProgressView:
        """The line now (the place in line when the job has not started)."""
        now = self.clock()
        if self.job.started is None:
            return ProgressView(self.job.name, waiting=f"Your {self.job.name} is about to start…",
                                elapsed=now - self.job.submitted)
        remaining = None
        if self.estimate is not None:
            made, left = self.estimate
            remaining = max(1.0, left - (now - made))  # counts down between reports, never to zero before the end
        return ProgressView(self.job.name, fraction=self.fraction, message=self.message, elapsed=now - self.job.started,
                            remaining=remaining, stopping=self.job.cancelled and not self.job.committed)

    def refresh(self) -> None:
        """Show the line again (elapsed time and the estimate move on between reports)."""
        if self.job.started is None:
            return
        self._show(self.view())

    def _show(self, view: ProgressView) -> None:
        if self.progress is None:
            return
        try:
            if isinstance(self.progress, LineProgress):
                self.progress.show(view)
            else:
                self.progress(view.fraction, desc=view.text(with_percent=False))
        except Exception:  # a progress display must never break the work
            log.debug("progress update failed", exc_info=True)


def follow(
    job: Job,
    progress: Callable[..., Any] | None = None,
    heartbeat: float | None = 0.5,
    runner: ModelRunner | None = None,
) -> Iterator[Any]:
    """Yield the job's partial results (the newest when several wait) until it ends.

    While the job waits its place in line goes to `progress` (a LineProgress or a gr.Progress; needs
    `runner`); then its progress (ProgressReport: one line, never going backwards, elapsed time since its
    start, one estimate of the time left). When `heartbeat` is set, HEARTBEAT is yielded whenever that many
    seconds passed without a yield (idle or busy), giving Gradio a point to cancel at and the page a point
    to redraw the line. When it ends, its result is `job.result`; its exception is raised here
    (OperationCancelled after a Stop). If the follower is closed early (Gradio cancelled the event), the job
    is cancelled.
    """
    report = ProgressReport(job, runner, progress)
    finished = False
    last_yield = time.monotonic()
    try:
        while True:
            try:
                event = job.events.get(timeout=heartbeat if heartbeat is not None else (0.5 if runner else None))
            except queue.Empty:
                if not report.waiting():
                    report.refresh()
                if heartbeat is not None:
                    last_yield = time.monotonic()
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
                    report.update(event)
                elif event.kind == "item":
                    latest_item, has_item = event.value, True
                elif event.kind == "done":
                    finished = True
                elif event.kind == "error":
                    finished = True
                    raise event.value
            if has_item:
                last_yield = time.monotonic()
                yield latest_item
            elif heartbeat is not None and not finished and time.monotonic() - last_yield >= heartbeat:
                last_yield = time.monotonic()  # busy with progress reports: the page still gets its points
                yield HEARTBEAT
            if finished:
                return
    finally:
        if not finished:
            job.cancel()
