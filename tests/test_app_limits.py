"""Abuse through the API, as an attacker would send it, against the real server on loopback.

Every request here is refused with a plain message before any job is queued (the runner's count
of accepted jobs does not move), and the server keeps serving afterwards.
"""

from __future__ import annotations

import json
import struct

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests import app_harness
from tests.app_harness import client_for

app = app_harness.app
app_idle_after_test = app_harness.app_idle_after_test

EIFFEL = "The Eiffel Tower is located in the city of"
ROW = ["Eiffel Tower", "{} is located in the city of", "Rome", "", "", ""]
HEADERS = ["subject", "prompt", "new", "current", "paraphrases", "neighbors"]


def edit_request(client, rows, layers="2-6", cov_tokens=None, steps=25, lr=0.5):
    return client.predict(
        {"headers": HEADERS, "data": rows}, "memit", layers, cov_tokens, steps, lr, 0.0625, 0.75, api_name="/edit"
    )


def trace_request(client, prompt=EIFFEL, subject="Eiffel Tower", samples=1, window=10, kinds=("mlp",), endpoint="/preview"):
    return client.predict(prompt, subject, "", list(kinds), samples, "3x", window, 1, "gaussian", api_name=endpoint)


def refused(app, call, pattern: str) -> str:
    """Run `call`; it must fail with a message matching `pattern` without queueing a job.

    Sliders' own bounds are enforced twice: by Gradio when it reads the value ("greater than maximum
    value"), and by the handlers (tests/test_ui_handlers.py calls them directly).
    """
    before = app.runner.submitted
    with pytest.raises(AppError, match=pattern) as caught:
        call()
    assert app.runner.submitted == before, "the request was refused only after a job was queued"
    assert "Traceback" not in str(caught.value)
    return str(caught.value)


def test_huge_and_malformed_requests_are_refused_before_any_work(app):
    client = client_for(app)
    refused(app, lambda: edit_request(client, [ROW], layers="0-99999999999"), "does not exist")
    refused(app, lambda: edit_request(client, [ROW], layers="1," * 500), "characters")
    refused(app, lambda: edit_request(client, [ROW] * 3000), "at most 500 requests")
    refused(app, lambda: edit_request(client, [ROW], cov_tokens=10**12), "Covariance corpus tokens must be from 1")
    message = refused(app, lambda: edit_request(client, [ROW], cov_tokens=10**7), "more than the Wikipedia corpus holds")
    assert "tokens for this model): choose at most" in message
    refused(app, lambda: edit_request(client, [ROW], steps=10**6), "Optimisation steps must be from 1 to 100|greater than maximum value 100")
    refused(app, lambda: edit_request(client, [ROW], lr=1e9), "Learning rate must be a number from")
    refused(app, lambda: edit_request(client, [["x" * 5000, "{} is", "Rome", "", "", ""]]), "characters long")
    refused(app, lambda: client.predict("word " * 7001, 5, 8, api_name="/predict"), "characters long; at most 16,384")
    refused(app, lambda: client.predict("word " * 1100, 5, 8, api_name="/predict"), "tokens long; this server takes at most 1,024")
    refused(app, lambda: client.predict(EIFFEL, 10**6, 8, api_name="/predict"), "Top-k must be from 1 to 20|greater than maximum value 20")
    refused(app, lambda: client.predict(EIFFEL, 5, 10**6, api_name="/predict"), "Generated tokens must be from 1 to 60|greater than maximum value 60")
    refused(app, lambda: trace_request(client, samples=10**6), "Noise samples must be from 1 to 50|greater than maximum value 50")
    refused(app, lambda: trace_request(client, window=10**6), "Window must be from 1 to 30|greater than maximum value 30")
    refused(app, lambda: trace_request(client, subject="Big Ben"), "does not occur in the prompt")
    refused(app, lambda: trace_request(client, kinds=("everything",)), "What to restore|not in the list of choices")
    refused(app, lambda: client.predict(10**6, ["mlp"], 1, api_name="/average"), "Facts to average must be from 2 to|greater than maximum value")
    refused(app, lambda: client.predict("trace", 10**6, api_name="/recommend"), "Width of R must be from 1 to 12|greater than maximum value 12")
    refused(app, lambda: client.predict("no such batch", api_name="/undo"), "no batch 'no such batch'|not in the list of choices")
    # and it still serves
    assert client.predict(EIFFEL, 3, 4, api_name="/predict")[-1]["before"]["top"][0]["token"] == " Paris"


def test_forged_and_oversized_ledger_files_are_refused_from_their_header(app, embedded, tmp_path):
    from core.errors import InputError
    from editor.edits.ledger_file import check_ledger_file

    forged = tmp_path / "forged.safetensors"
    header = {"delta": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 4 * 10**18]}}
    encoded = json.dumps(header).encode()
    forged.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * 64)
    with pytest.raises(InputError, match="no edit of this model has"):
        check_ledger_file(forged, embedded, 2**20)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", 10**15) + b"{}")
    with pytest.raises(InputError, match="bad header"):
        check_ledger_file(lying, embedded, 2**20)
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (2**20 + 1))
    with pytest.raises(InputError, match="at most 1 MB"):
        check_ledger_file(big, embedded, 2**20)
    # through the page's upload: the same refusal, no job, the session's edits unchanged
    client = client_for(app)
    before = app.runner.submitted
    with pytest.raises(AppError):
        client.predict(handle_file(str(forged)), api_name="/import_ledger")
    assert app.runner.submitted == before


def test_refusals_from_the_queue_say_why():
    """A visitor who already has a long job waiting or running cannot queue another; the queue is bounded."""
    import threading

    from core.errors import InputError
    from ui.runner import MAX_PER_VISITOR, ModelRunner

    runner = ModelRunner(name="cap-test", max_waiting=2)
    started, release = threading.Event(), threading.Event()

    def blocked(job):
        started.set()
        release.wait(30)

    first = runner.submit(blocked, "trace", owner=1)
    assert started.wait(30)  # running now: it no longer counts as waiting
    with pytest.raises(InputError, match="already have 'trace' waiting or running"):
        runner.submit(blocked, "edit", owner=1)
    assert MAX_PER_VISITOR["long"] == 1
    runner.submit(lambda job: None, "edit", owner=2)
    runner.submit(lambda job: None, "edit", owner=3)
    with pytest.raises(InputError, match="The server is busy: 2 jobs are waiting"):
        runner.submit(lambda job: None, "edit", owner=4)
    release.set()
    assert runner.wait_idle(30) and first.finished.is_set()
