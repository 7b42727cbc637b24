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
