"""Preemption on the real server: a visitor's prediction is answered while another visitor's exact trace runs.

No timings: only the order of events (the prediction's answer arrives while the trace job is still
running on the server), then the trace finishes as usual.
"""

from __future__ import annotations

import time

from tests import app_harness
from tests.app_harness import client_for

app = app_harness.app  # the shared server (fixture)
app_idle_after_test = app_harness.app_idle_after_test  # autouse: let queued jobs finish before the clean-model check

EIFFEL = "The Eiffel Tower is located in the city of"
COLOSSEUM = "The Colosseum is located in the city of"
LIVENESS_S = 300  # a generous bound on waiting for the trace to start: a liveness check, not a timing


def running_trace(app) -> object:
    """The server's trace job once it runs (waits for it)."""
    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        job = app.runner.running
        if job is not None and job.name == "trace" and not job.finished.is_set():
            return job
        time.sleep(0.05)
    raise AssertionError("the trace never started")


def test_a_prediction_is_answered_while_another_visitors_exact_trace_runs(app):
    tracer, visitor = client_for(app), client_for(app)
    traced = tracer.submit(EIFFEL, "Eiffel Tower", "", ["mlp"], 3, "3x", 10, 1, "gaussian", api_name="/trace")
    job = running_trace(app)
    data = visitor.predict(COLOSSEUM, 3, 4, api_name="/predict")[-1]
    assert not job.finished.is_set(), "the prediction waited for the whole trace"
    assert data["before"]["top"][0]["token"] == " Rome" and data["edited"] is False
    status, hidden, mlp, attn, result, *_ = traced.result(timeout=900)
    assert "Exact trace done" in status and result["answer"] == " Paris" and job.pauses >= 1
    assert all(value is not None for row in result["scores"]["mlp"] for value in row)
