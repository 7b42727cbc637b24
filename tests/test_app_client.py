"""The app's API endpoints through gradio_client against the real server (embedded model)."""

from __future__ import annotations

import pytest

from tests import app_harness
from tests.app_harness import client_for

app = app_harness.app  # the shared server (fixture)
app_idle_after_test = app_harness.app_idle_after_test  # autouse: let queued jobs finish before the clean-model check

EIFFEL = "The Eiffel Tower is located in the city of"


def test_predict_endpoint_returns_before_and_after(app):
    client = client_for(app)
    before, after, before_text, after_text, summary, data = client.predict(EIFFEL, 5, 8, api_name="/predict")
    assert data["edited"] is False
    assert data["before"]["top"][0]["token"] == " Paris"
    assert data["after"] == data["before"]
    assert before["label"] == "Paris" and after["label"] == "Paris"
    assert before_text.startswith(" Paris")
    assert "no edits yet" in summary


def test_predict_with_empty_prompt_gives_a_plain_message_and_the_app_keeps_serving(app):
    from gradio_client.exceptions import AppError

    client = client_for(app)
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict("   ", 5, 8, api_name="/predict")
    data = client.predict(EIFFEL, 3, 4, api_name="/predict")[-1]
    assert data["before"]["top"][0]["token"] == " Paris"
