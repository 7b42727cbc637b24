"""Preemption (ui/runner.py): other visitors' short jobs run at a long job's safe points, each with its own edits.

A long job of visitor A (a trace with A's edit applied; an edit computed on top of A's ledger) is
interrupted at its safe points by predictions of visitor B (its own edit) and visitor C (no edits),
queued by the long job itself just before each safe point, so the interruptions are deterministic.
The long job's results must be bit-identical to an uninterrupted run (same process, same threads);
each prediction must be bit-identical to the same prediction on an idle model: B's shows B's edit,
C's the original model, never A's edit nor A's half-computed update.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from core.predict import next_token_probabilities
from core.progress import derived, safe_point, stage
from editor.edits.requests import EditRequest
from editor.methods.registry import method_for
from tracer.trace import TraceSettings, trace_stream
from ui.context import AppContext
from ui.models import ModelManager
from ui.runner import Job, ModelRunner
from ui.session import SessionState

EIFFEL = "The Eiffel Tower is located in the city of"
CATALONIA = "Catalonia belongs to the continent of"
PROMPTS = (EIFFEL, CATALONIA)
EDIT = dict(layers=(2, 3, 4, 5, 6), cov_tokens=4096, steps=10)  # the covariance as tests/test_app_client.py's (cached)
TRACE = TraceSettings(kinds=("mlp",), samples=3)


@pytest.fixture(scope="module")
def context(embedded) -> Iterator[AppContext]:
    context = AppContext(manager=ModelManager(["embedded"], preloaded=embedded), runner=ModelRunner(name="preempt-tests"))
    yield context
    assert context.runner.wait_idle(60)


def edit_batch(loaded: Any, subject: str, template: str, new_object: str, ledger: Any = None, progress=None, steps: int = 10):
    method = method_for(loaded.layout, "memit", layers=EDIT["layers"], cov_tokens=EDIT["cov_tokens"], steps=steps)
    return method.compute(loaded, [EditRequest(subject, template, new_object)], ledger, progress=progress)


@pytest.fixture(scope="module")
def visitors(context, embedded) -> dict[str, SessionState]:
    """A (Eiffel Tower -> Rome), B (Catalonia -> Asia) and C (no edits), each its own session."""
    sessions = {name: SessionState(model_spec="embedded") for name in "ABC"}
    for name, (subject, template, new_object) in {"A": ("Eiffel Tower", "{} is located in the city of", "Rome"),
                                                  "B": ("Catalonia", "{} belongs to the continent of", "Asia")}.items():
        batch = context.runner.run(lambda job, s=subject, t=template, o=new_object: edit_batch(embedded, s, t, o), "edit")
        sessions[name].ledger().add(batch, embedded)
    return sessions


def predict(loaded: Any, prompt: str) -> torch.Tensor:
    return next_token_probabilities(loaded, prompt)


def top_token(loaded: Any, probabilities: torch.Tensor) -> str:
    return loaded.tokenizer.decode([int(probabilities.argmax())]).strip()


class Interrupter:
    """Queues predictions of B and C (every prompt) before the long job's next safe point, `pauses` times."""

    def __init__(self, context: AppContext, visitors: dict[str, SessionState], pauses: int) -> None:
        self.context, self.visitors, self.left = context, visitors, pauses
        self.guests: list[tuple[str, str, Job]] = []  # (visitor, prompt, job)
        self.pending: list[Job] = []  # queued at the last report
        self.ran_in_pause: list[bool] = []  # per pause: its guests had finished when the long job reported again

    def report(self, queue: bool = True) -> None:
        """At a report of the long job: the guests queued at the last one ran in its safe point; maybe queue more."""
        if self.pending:
            self.ran_in_pause.append(all(job.finished.is_set() for job in self.pending))
            self.pending = []
        if not queue or self.left <= 0:
            return
        self.left -= 1
        for name in "BC":
            for prompt in PROMPTS:
                job = self.context.submit(self.visitors[name], lambda job, loaded, p=prompt: predict(loaded, p),
                                          name="prediction", lane="short")
                self.guests.append((name, prompt, job))
                self.pending.append(job)


def interrupted(stream: Iterator[Any], interrupter: Interrupter | None) -> Iterator[Any]:
    """`stream`, queueing the interrupter's guests before each update reaches the job's relay (and its safe point)."""
    for update in stream:
        if interrupter is not None:
            interrupter.report()
        yield update


def traced(context: AppContext, session: SessionState, interrupter: Interrupter | None):
    def work(job: Job, loaded: Any):
        return job.relay(interrupted(trace_stream(loaded, EIFFEL, "Eiffel Tower", TRACE), interrupter))

    job = context.submit(session, work, name="trace")  # with A's edits applied, as the Trace tab does
    return finish(context, job)


def finish(context: AppContext, job: Job) -> Any:
    assert job.finished.wait(600), f"{job.name} did not finish"
    assert context.runner.wait_idle(60)
    event = [event for event in drain(job) if event.kind in ("done", "error")][-1]
    if event.kind == "error":
        raise event.value
    return job.result


def drain(job: Job) -> list[Any]:
    events = []
    while not job.events.empty():
        events.append(job.events.get_nowait())
    return events


def check_guests(context: AppContext, embedded: Any, interrupter: Interrupter) -> None:
    """Every guest ran inside a pause and saw exactly what it sees on an idle model: its own edits, nothing else."""
    assert interrupter.guests and len(interrupter.ran_in_pause) == len(interrupter.guests) // 4, "a pause was not reached"
    assert all(interrupter.ran_in_pause), "the predictions did not run at the safe points"
    idle = {(name, prompt): context.run(interrupter.visitors[name], lambda job, loaded, p=prompt: predict(loaded, p),
                                        name="prediction") for name in "BC" for prompt in PROMPTS}
    for name, prompt, job in interrupter.guests:
        assert job.finished.is_set()
        result = finish(context, job)
        assert torch.equal(result, idle[(name, prompt)]), f"{name}'s prediction of {prompt!r} differs in a pause"
    assert top_token(embedded, idle[("B", CATALONIA)]) == "Asia"  # B's edit shows to B ...
    assert top_token(embedded, idle[("C", CATALONIA)]) != "Asia"  # ... and to nobody else
    assert top_token(embedded, idle[("B", EIFFEL)]) == top_token(embedded, idle[("C", EIFFEL)]) == "Paris"  # never A's Rome


def same_scores(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for row_a, row_b in zip(a, b)
                                 for x, y in zip(row_a, row_b)) for a, b in ((first[k], second[k]) for k in first)
    )


def test_a_trace_interrupted_by_other_visitors_predictions_is_bit_identical(context, embedded, visitors):
    plain = traced(context, visitors["A"], None)
    interrupter = Interrupter(context, visitors, pauses=3)
    paused = traced(context, visitors["A"], interrupter)
    assert paused.answer.strip() == "Rome"  # the trace ran with A's edit, before and after the pauses
    assert same_scores(paused.scores, plain.scores) and paused.high == plain.high and paused.low == plain.low
    check_guests(context, embedded, interrupter)


def test_an_edit_interrupted_in_its_optimisation_and_layer_updates_is_bit_identical(context, embedded, visitors):
    ledger = visitors["A"].ledger()

    def computed(interrupter: Interrupter | None):
        def work(job: Job, loaded: Any):
            def report(fraction: float, message: str) -> None:
                if interrupter is not None:
                    interrupter.report(queue=message.startswith(("target vectors: step 1/", "updating layer 4")))
                job.progress(fraction, message)

            # Not inside session.applied: the editor applies A's ledger itself (as the Edit tab's job).
            return edit_batch(loaded, "Colosseum", "{} is located in the city of", "London", ledger=ledger,
                              progress=derived(job.progress, report), steps=3)

        return finish(context, context.submit(visitors["A"], work, name="edit", edited=False))

    plain = computed(None)
    interrupter = Interrupter(context, visitors, pauses=2)
    paused = computed(interrupter)
    assert sorted(paused.deltas) == sorted(plain.deltas)
    for layer in plain.deltas:
        assert torch.equal(paused.deltas[layer], plain.deltas[layer]), f"layer {layer}'s update differs after the pauses"
    assert [d.losses for d in paused.request_diagnostics] == [d.losses for d in plain.request_diagnostics]
    check_guests(context, embedded, interrupter)


def order_of_long_and_short(runner: ModelRunner, short_owner: str) -> list[str]:
    """Visitor A's long job submits a short job of `short_owner`, then offers a safe point: the order they ended in."""
    order: list[str] = []

    def long_work(job: Job) -> None:
        runner.submit(lambda job: order.append("short"), "prediction", lane="short", owner=short_owner)
        job.safe_point()
        order.append("long")

    runner.submit(long_work, "trace", owner="A")
    assert runner.wait_idle(60)
    return order


def test_a_visitors_own_short_job_waits_for_its_long_job_and_a_plain_progress_ignores_safe_points() -> None:
    assert order_of_long_and_short(ModelRunner(name="preempt-own"), short_owner="A") == ["long", "short"]
    calls: list[float] = []
    safe_point(stage(lambda fraction, message: calls.append(fraction), 0.0, 1.0))  # a plain callable: nothing happens
    safe_point(None)
    assert calls == []


def test_without_preemption_guests_wait_for_the_end() -> None:
    assert order_of_long_and_short(ModelRunner(name="preempt-off", preempt=False), short_owner="B") == ["long", "short"]


def test_queue_status_says_a_guest_runs_at_the_next_pause() -> None:
    runner = ModelRunner(name="preempt-status")
    seen: list[str] = []

    def long_work(job: Job) -> None:
        guest = runner.submit(lambda job: None, "prediction", lane="short", owner="B")
        seen.append(runner.queue_status(guest).describe())  # no safe point offered yet: it may never pause
        job.safe_point()
        guest = runner.submit(lambda job: None, "prediction", lane="short", owner="B")
        seen.append(runner.queue_status(guest).describe())
        job.safe_point()

    runner.submit(long_work, "trace", owner="A")
    assert runner.wait_idle(60)
    assert "Waiting in line: 1 job ahead of you; running now: another visitor's trace" in seen[0]
    assert "Waiting for another visitor's trace" in seen[1] and "runs at its next pause, in a moment" in seen[1]

