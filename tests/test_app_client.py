"""The app's API endpoints through gradio_client against the real server (embedded model).

Each `Client` is its own session, like a separate visitor: its edits are its own.
"""

from __future__ import annotations

import json
import re

import pytest

from tests import app_harness
from tests.app_harness import client_for

app = app_harness.app  # the shared server (fixture)
app_idle_after_test = app_harness.app_idle_after_test  # autouse: let queued jobs finish before the clean-model check

EIFFEL = "The Eiffel Tower is located in the city of"
COLOSSEUM = "The Colosseum is in the city of"
# A small edit: covariance from 4096 corpus tokens (cached after the first run), the default R and lambda.
# /edit's parameters are named after the Edit tab's form (ui/tabs/edit_tab.py EditForm): the shared settings, then
# each method's own as <method>_<setting> (memit_mom2_weight, alphaedit_l2, ...); omitted ones keep the page's values.
EDIT_SETTINGS = dict(layers="2-6", cov_tokens=4096, steps=25, lr=0.5, kl_factor=0.0625, clamp_norm=0.75)
HEADERS = ["subject", "prompt", "new", "current", "paraphrases", "neighbors"]


def edit(client, rows: list[list[str]], method: str = "memit", **settings):
    table = {"headers": HEADERS, "data": rows}
    return client.predict(table=table, method=method, **{**EDIT_SETTINGS, **settings}, api_name="/edit")


def figure(output: dict):
    """A plotly figure from a gr.Plot output (a plain value, or an update carrying one)."""
    import plotly.io

    value = output.get("value", output) if output.get("__type__") == "update" else output
    return plotly.io.from_json(value["plot"])


def top_after(client, prompt: str) -> tuple[str, str]:
    data = client.predict(prompt, 3, 4, api_name="/predict")[-1]
    return data["before"]["top"][0]["token"], data["after"]["top"][0]["token"]


def test_predict_endpoint_returns_before_and_after(app):
    client = client_for(app)
    before, after, before_text, after_text, summary, data = client.predict(EIFFEL, 5, 8, api_name="/predict")
    assert data["edited"] is False
    assert data["before"]["top"][0]["token"] == " Paris"
    assert data["after"] == data["before"]
    assert before["label"] == "Paris" and after["label"] == "Paris"
    assert before_text.startswith(" Paris")
    assert "no edits yet" in summary


def test_bad_input_gives_plain_messages_and_the_app_keeps_serving(app):
    from gradio_client.exceptions import AppError

    client = client_for(app)
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict("   ", 5, 8, api_name="/predict")
    with pytest.raises(AppError, match="does not occur in the prompt") as caught:
        client.predict(EIFFEL, "Big Ben", "", ["mlp"], 1, "3x", 10, 1, "gaussian", api_name="/trace")
    assert "Traceback" not in str(caught.value)
    with pytest.raises(AppError, match="Noise"):
        client.predict(EIFFEL, "Eiffel Tower", "", ["mlp"], 1, "lots", 10, 1, "gaussian", api_name="/trace")
    with pytest.raises(AppError, match="no trace yet"):
        client.predict("trace", 5, api_name="/recommend")
    with pytest.raises(AppError, match="nothing to check"):
        client.predict(api_name="/evaluate")
    with pytest.raises(AppError, match="not understood"):
        edit(client, [["Eiffel Tower", "{} is located in the city of", "Rome", "", "", ""]], layers="two to six",
             memit_mom2_weight=15000)
    with pytest.raises(AppError, match="does not exist"):  # refused before any job: nothing is changed
        edit(client, [["Eiffel Tower", "{} is located in the city of", "Rome", "Paris", "", ""]], layers="28-31")
    with pytest.raises(AppError, match="same as the current one"):
        edit(client, [["Eiffel Tower", "{} is located in the city of", "Paris", "Paris", "", ""]])
    with pytest.raises(AppError, match="null-space threshold must be a finite number above 0"):  # AlphaEdit's own setting
        edit(client, [["Eiffel Tower", "{} is located in the city of", "Rome", "Paris", "", ""]], method="alphaedit",
             alphaedit_nullspace_threshold=0)
    with pytest.raises(AppError, match="not in the list of choices|not one this app serves"):
        client.predict("gpt2-xl", api_name="/switch_model")
    data = client.predict(EIFFEL, 3, 4, api_name="/predict")[-1]
    assert data["before"]["top"][0]["token"] == " Paris"


def test_averages_endpoint(app):
    import plotly.io

    client = client_for(app)
    status, hidden, mlp, attn = client.predict(2, ["mlp"], 1, api_name="/average")
    assert "**2 facts**" in status and "Done." in status
    figure = plotly.io.from_json(mlp["plot"])
    names = " ".join(trace.name or "" for trace in figure.data)
    assert "last subject token" in names
    assert "not averaged" in str(plotly.io.from_json(hidden["plot"]).layout.annotations[0].text)
    # The Choose R tab can now recommend from these averages (with intervals).
    plot, first, last, explanation, recommendation, chosen, layers_text = client.predict("average", 3, api_name="/recommend")
    assert recommendation["source"] == "average" and last - first == 2
    assert recommendation["lower"] is not None


def test_trace_then_recommend(app):
    import plotly.io

    client = client_for(app)
    status, hidden, mlp, attn, result, *downloads = client.predict(
        COLOSSEUM, "Colosseum", "", ["mlp"], 1, "3x", 10, 1, "gaussian", api_name="/trace"
    )
    assert "Rome" in status and "Exact trace done" in status
    assert result["answer"] == " Rome" and result["approximate"] is False
    scores = result["scores"]["mlp"]
    assert len(scores) == len(result["tokens"]) and len(scores[0]) == 30
    assert all(value is not None for row in scores for value in row)
    figure = plotly.io.from_json(mlp["plot"])
    assert figure.data[0].type == "heatmap" and len(figure.data[0].z) == len(result["tokens"])
    exported = json.loads(open(downloads[0]["value"], encoding="utf-8").read())
    assert exported["scores"]["mlp"] == scores
    assert "<html" in open(downloads[2]["value"], encoding="utf-8").read()[:200].lower()

    plot, first, last, explanation, recommendation, chosen, layers_text = client.predict("trace", 4, api_name="/recommend")
    assert last - first == 3 and recommendation["layers"] == list(range(first, last + 1))
    assert f"R = layers {first}-{last}" in explanation and layers_text == f"{first}-{last}"
    curve = recommendation["curve"]  # the MLP row of the last subject token, as indirect effects
    last_subject = result["subject_range"][1] - 1
    assert curve == pytest.approx([value - result["low"] for value in scores[last_subject]])


def test_edit_evaluate_retrace_undo_and_sessions_are_isolated(app):
    editor_client, visitor = client_for(app), client_for(app)
    traced = editor_client.predict(EIFFEL, "Eiffel Tower", "", ["mlp"], 1, "3x", 10, 1, "gaussian", api_name="/trace")[4]
    status, per_request, loss, per_layer, history, batches, batch, *_ = edit(
        editor_client,
        [[
            "Eiffel Tower", "{} is located in the city of", "Rome", "Paris",
            "The Eiffel Tower is in the city of", "The Louvre is located in the city of",
        ]],
    )
    assert "Applied batch" in status and batch["layers"] == [2, 3, 4, 5, 6]
    assert [row[0] for row in history["data"]] == [batch["batch_id"]]
    assert per_request["value"]["data"][0][0] == "Eiffel Tower → Rome"
    assert top_after(editor_client, EIFFEL) == (" Paris", " Rome")
    assert top_after(visitor, EIFFEL) == (" Paris", " Paris")  # another visitor sees the original model

    summary, checks, metrics, data = editor_client.predict(api_name="/evaluate")
    row = data["edits"][0]
    assert row["edit"] == "Eiffel Tower: Paris → Rome"
    assert row["rewrite: new beats old (before → after)"].startswith("0/1 → 1/1")
    assert data["pre"]["ES"] == 0 and data["post"]["ES"] == 100

    status, hidden, mlp, attn, *_ = editor_client.predict(api_name="/retrace")
    assert "after: computed on **your edits: 1 batch**" in status
    before_p, after_p = (float(v) for v in re.findall(r"([\d.]+)% (?:before|after)", status))
    assert before_p == pytest.approx(100 * traced["high"], abs=0.06) and after_p < before_p / 10  # Paris is gone
    difference = [v for row in figure(mlp).data[0].z for v in row]
    assert len(figure(mlp).data[0].z) == len(traced["tokens"]) and None not in difference
    assert min(difference) < 0  # restoring the edited model's MLPs brings Paris back less than before

    message, history, batches, result = editor_client.predict(batch["batch_id"], api_name="/undo")
    assert "Undid batch" in message and history["data"] == [] and result["remaining"] == []
    assert top_after(editor_client, EIFFEL) == (" Paris", " Paris")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no batch to undo|no edit"):
        editor_client.predict(None, api_name="/undo")
