"""The app's parts without a browser: runner, error messages, examples, session isolation plumbing."""

from __future__ import annotations

import threading

import pytest

from ui.errors import GENERIC_MESSAGE, OUT_OF_MEMORY_MESSAGE, as_gradio_error, friendly, user_message
from ui.examples import load_examples
from ui.runner import HEARTBEAT, ModelRunner, follow


def test_user_errors_keep_their_message_and_bugs_get_a_generic_one(caplog):
    from core.errors import InputError

    assert user_message(InputError("The subject 'X' does not occur in the prompt.")) == (
        "The subject 'X' does not occur in the prompt."
    )
    with caplog.at_level("ERROR", logger="locus.ui"):
        assert user_message(KeyError("internal detail")) == GENERIC_MESSAGE
    assert "internal detail" in caplog.text  # the details go to the server log, not the page
    assert user_message(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")) == OUT_OF_MEMORY_MESSAGE
    error = as_gradio_error(InputError("<b>subject</b> missing"))
    assert error.message == "&lt;b&gt;subject&lt;/b&gt; missing"  # shown as text, never as HTML
    quoted = as_gradio_error(InputError("Ranges R to try: 'x' is not a range (or write 'all')."))
    assert quoted.message == "Ranges R to try: 'x' is not a range (or write 'all')."  # API callers read quotes plain


def test_friendly_handlers_turn_failures_into_gradio_errors_and_keep_generators_streaming():
    import gradio as gr

    from core.errors import InputError

    @friendly
    def failing(prompt: str, progress=gr.Progress()):
        raise InputError(f"bad {prompt}")

    @friendly
    def streaming(count: int):
        yield from range(count)
        raise ValueError("boom")

    with pytest.raises(gr.Error) as caught:
        failing("input")
    assert caught.value.message == "bad input"
    import inspect

    assert isinstance(inspect.signature(failing).parameters["progress"].default, gr.Progress)
    assert inspect.isgeneratorfunction(streaming)
    values = []
    with pytest.raises(gr.Error) as caught:
        for value in streaming(3):
            values.append(value)
    assert values == [0, 1, 2] and caught.value.message == GENERIC_MESSAGE


def test_runner_runs_jobs_in_order_on_one_thread_and_reports_errors():
    runner = ModelRunner(name="test-runner")
    threads, order = set(), []

    def work(label):
        def run(job):
            threads.add(threading.get_ident())
            job.progress(0.5, label)
            order.append(label)
            return label

        return run

    jobs = [runner.submit(work(label), label) for label in "abc"]
    results = []
    for job in jobs:
        list(follow(job, heartbeat=None))
        results.append(job.result)
    assert results == ["a", "b", "c"] == order
    assert len(threads) == 1 and threading.get_ident() not in threads

    failing = runner.submit(lambda job: 1 / 0, "fails")
    with pytest.raises(ZeroDivisionError):
        list(follow(failing, heartbeat=None))
    assert runner.run(lambda job: "still serving") == "still serving"


def test_closing_a_follower_cancels_its_job_at_the_next_report():
    from core.errors import OperationCancelled

    runner = ModelRunner(name="test-runner-cancel")
    release = threading.Event()
    seen = []

    def work(job):
        job.emit("first")
        release.wait(10)
        try:
            job.emit("second")  # the follower is gone: this raises OperationCancelled
        except OperationCancelled:
            seen.append("cancelled")
            raise
        seen.append("not cancelled")

    job = runner.submit(work, "cancel me")
    follower = follow(job, heartbeat=0.05)
    first = next(item for item in follower if item is not HEARTBEAT)
    assert first == "first"
    follower.close()
    release.set()
    assert runner.wait_idle(10)
    assert seen == ["cancelled"]


def test_cancelled_trace_leaves_the_shared_model_clean_and_the_next_job_works(embedded):
    """A trace stopped midway (as Gradio's Stop does) restores the model; conftest checks weights and hooks."""
    from core.predict import predict_next_tokens
    from tracer.trace import TraceSettings, trace_stream

    runner = ModelRunner(name="test-runner-trace")
    settings = TraceSettings(kinds=("mlp",), samples=2)

    def work(job):
        stream = trace_stream(embedded, "The Eiffel Tower is located in the city of", "Eiffel Tower", settings)
        try:
            for update in stream:
                job.emit(update.fraction)
        finally:
            stream.close()

    job = runner.submit(work, "trace")
    follower = follow(job, heartbeat=0.1)
    next(item for item in follower if item is not HEARTBEAT)
    follower.close()
    assert runner.wait_idle(300)
    assert job.cancelled
    top = runner.run(lambda job: predict_next_tokens(embedded, "The Eiffel Tower is located in the city of", 1)[0])
    assert top.token == " Paris"


def test_examples_say_what_the_embedded_model_actually_predicts(embedded):
    from core.predict import predict_next_tokens
    from core.tokens import encode_prompt

    examples = load_examples()
    labels = " ".join(example.label for example in examples)
    for needed in ("Michael Jordan", "Polaris", "Arneb", "Eiffel Tower", "Colosseum", "Danielle Darrieux"):
        assert needed in labels
    for example in examples:
        encode_prompt(embedded.tokenizer, example.prompt).subject_range(example.subject)  # the subject is in the prompt
        top = predict_next_tokens(embedded, example.prompt, 1)[0]
        assert top.token == example.embedded_top["token"], example.label
        assert abs(top.probability - example.embedded_top["probability"]) < 0.01, example.label
        assert f"{example.embedded_top['probability']:.0%}" in example.note, example.label
        assert "{}" in example.edit["prompt"] and example.edit["target_new"]


def test_short_jobs_run_before_waiting_long_ones_and_waiters_see_their_place():
    from ui.runner import ModelRunner, follow

    runner = ModelRunner(name="test-lanes")
    started, release, order = threading.Event(), threading.Event(), []

    def blocking(job):
        started.set()
        release.wait(30)
        order.append("running edit")

    def record(label):
        return lambda job: order.append(label)

    runner.submit(blocking, "edit", owner=1)
    assert started.wait(30)
    long_job = runner.submit(record("trace"), "trace", owner=2)
    short_job = runner.submit(record("prediction"), "prediction", lane="short", owner=3)
    status = runner.queue_status(long_job)
    assert status.ahead == 2 and status.running == "edit" and not status.running_is_yours
    assert "2 jobs ahead of you; running now: another visitor's edit" in status.describe()
    assert runner.queue_status(short_job).ahead == 1  # only the running job is ahead of a short one
    shown = []
    follower = follow(long_job, lambda fraction, desc: shown.append((fraction, desc)), heartbeat=0.05, runner=runner)
    next(follower)  # a heartbeat: the place in line has been shown
    assert shown and shown[-1][0] == 0.0 and "Waiting in line" in shown[-1][1]
    release.set()
    for _ in follower:
        pass
    assert order == ["running edit", "prediction", "trace"]


def test_a_stop_before_the_commit_changes_nothing_and_after_it_is_refused():
    from core.errors import OperationCancelled
    from ui.runner import ModelRunner, follow

    runner = ModelRunner(name="test-commit")
    for stop_before in (True, False):
        ready, go, changed = threading.Event(), threading.Event(), []

        def work(job, ready=ready, go=go, changed=changed):
            ready.set()
            go.wait(30)
            return job.commit(lambda: changed.append("batch"))

        job = runner.submit(work, "edit", owner=1)
        assert ready.wait(30)
        if stop_before:
            assert job.cancel() is True
            go.set()
            with pytest.raises(OperationCancelled):
                list(follow(job, heartbeat=None))
            assert changed == []
        else:
            go.set()
            assert runner.wait_idle(30)
            assert job.cancel() is False and changed == ["batch"] and job.committed  # too late: it was applied


def test_progress_never_goes_backwards_and_says_how_long_is_left():
    from ui.runner import Job, JobEvent, ProgressReport

    job = Job(lambda job: None, "edit")
    job.started = 0.0  # started long ago: an estimate is due
    shown = []
    report = ProgressReport(job, None, lambda fraction, desc: shown.append((fraction, desc)))
    for fraction in (0.1, 0.3, 0.1, 0.5):
        report.update(JobEvent("progress", fraction=fraction, message=f"stage at {fraction}"))
    fractions = [fraction for fraction, _ in shown]
    assert fractions == sorted(fractions) == [0.1, 0.3, 0.3, 0.5]
    assert shown[-1][1].startswith("stage at 0.5") and "left" in shown[-1][1]


def test_one_progress_line_elapsed_from_the_start_and_one_estimate():
    """A stage's own percentage and estimate are dropped; elapsed counts from the job's start; the estimate is made
    from the first measured chunk and counts down between reports, never to zero before the end."""
    from ui.runner import Job, JobEvent, LineProgress, ProgressReport, plain_stage

    assert plain_stage("covariance: 10/50 tokens (40% done), about 12 s left") == "covariance: 10/50 tokens"
    now = [100.0]
    job = Job(lambda job: None, "model health")
    job.started = 100.0
    line = LineProgress()
    report = ProgressReport(job, None, line, clock=lambda: now[0])
    report.update(JobEvent("progress", fraction=0.0, message="perplexity"))
    assert "estimating the time left" in line.view.text() and line.view.elapsed == 0.0
    now[0] = 110.0
    report.update(JobEvent("progress", fraction=0.25, message="perplexity 1/4, 40% done, about 2 min left"))
    text = line.view.text()
    assert text == "25% · perplexity 1/4 · 10 s so far · about 30 s left", text
    now[0] = 125.0
    report.refresh()  # no new report: elapsed moves on from the start, the estimate counts down
    assert line.view.text() == "25% · perplexity 1/4 · 25 s so far · about 15 s left"
    now[0] = 200.0
    report.refresh()
    assert line.view.remaining == 1.0  # overdue: "about 1 s left", never 0 or negative while running
