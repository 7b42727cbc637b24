"""Model health in the app: the Test tab's report and the Edit tab's health per batch, through their handlers."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import gradio as gr
import pytest

from editor.edits.requests import EditRequest
from editor.evaluation.health import (
    PERPLEXITY_TOKENS,
    HealthReport,
    health_warnings,
    held_out_texts,
    model_health,
    probe_facts,
)
from editor.statistics.corpus import Corpus, load_corpus
from ui import editing, health_view
from ui.context import AppContext, stop_jobs
from ui.errors import Stopped
from ui.models import ModelManager
from ui.runner import ModelRunner
from ui.session import SessionState
from ui.tabs import edit_tab, test_tab

PROBES = 24  # known facts probed for retention (the app probes 100)


def quiet(*args, **kwargs) -> None:
    """A progress display that shows nothing."""


def short_corpus(characters: int) -> Corpus:
    """The first 1,000 Wikipedia summaries cut to `characters` (the last 200 held out): a quick perplexity."""
    texts = tuple(text[:characters] for text in load_corpus().texts[:1000])
    digest = hashlib.sha256(json.dumps(texts).encode("utf-8")).hexdigest()[:16]
    return Corpus(name=f"wikipedia-first-{characters}", texts=texts, digest=digest)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return short_corpus(24)


@pytest.fixture(scope="module")
def context(embedded, corpus) -> AppContext:
    context = AppContext(manager=ModelManager(["embedded"], preloaded=embedded), runner=ModelRunner(name="health-tests"),
                         health_corpus=corpus, health_probes=PROBES)
    yield context
    assert context.runner.wait_idle(60)


@pytest.fixture(scope="module")
def edited(context) -> SessionState:
    """A session with one small MEMIT edit applied (one layer, a small covariance budget, two steps)."""
    session = SessionState(model_spec="embedded")
    ledger = session.ledger()
    requests = [EditRequest("Eiffel Tower", "{} is located in the city of", "Rome")]

    def work(job, loaded):
        batch = editing.compute_batch(loaded, ledger, requests, "memit", "4", {"cov_tokens": 2000, "steps": 2})
        editing.add_batch(ledger, batch, loaded)

    context.run(session, work, name="edit", edited=False)
    return session


def finished(outputs: list) -> list:
    """The handler's yields that carry results (Gradio skips dropped)."""
    return [output for output in outputs if not isinstance(output[0], type(gr.skip()))]


def test_health_without_edits_shows_the_original_and_nothing_to_compare(context, embedded, corpus):
    outputs = finished(list(test_tab.run_health(context, None, quiet)))
    status, table, data, session = outputs[-1]
    assert len(outputs) == 1 and isinstance(session, SessionState)
    assert "nothing to compare" in status and data["edited"] is None and data["perplexity_ratio"] is None
    scored = sum(len(embedded.tokenizer(text)["input_ids"][:PERPLEXITY_TOKENS]) - 1 for text in held_out_texts(corpus))
    assert data["unedited"]["tokens"] == scored and 1 < data["unedited"]["perplexity"] < 1e4
    assert data["unedited"]["retention"] == 100.0 and data["unedited"]["probes"] == PROBES  # facts the model knows
    assert [row[0] for row in table.value["data"]] == ["original"]
    with pytest.raises(gr.Error, match="no edits yet"):
        list(edit_tab.run_health_history(context, session, quiet))


def test_health_with_an_edit_compares_and_the_history_has_the_same_figures(context, embedded, edited):
    outputs = finished(list(test_tab.run_health(context, edited, quiet)))
    assert "measuring the model with your edits" in outputs[0][0]  # the original's figures came first
    status, table, data, _ = outputs[-1]
    assert data["edits"] == 1 and data["edited"] is not None
    assert data["perplexity_ratio"] == pytest.approx(data["edited"]["perplexity"] / data["unedited"]["perplexity"])
    assert data["edited"]["perplexity"] != data["unedited"]["perplexity"]
    assert [row[0] for row in table.value["data"]] == ["original", "with your 1 edit"]
    assert "With your 1 edit" in status and ("Within the thresholds" in status or "Drift warning" in status)
    streamed = finished(list(edit_tab.run_health_history(context, edited, quiet)))
    assert len(streamed) >= 2 and len(streamed[0][1].value["data"]) == 2  # the batch's row is shown as soon as it is measured
    status, table, history, _ = streamed[-1]
    assert status.startswith("Measured after each of your 1 batch.")
    rows = table.value["data"]
    batch_id = editing.ledger_batches(edited.ledger())[0].batch_id
    assert [row[0] for row in rows] == ["(original)", batch_id] and rows[1][1] == 1
    assert rows[1][2] == health_view.perplexity_text(data["edited"]["perplexity"])  # the same ledger state
    assert history["batches"][0]["edited"] == data["edited"] and "after each of your 1 batch" in status


def test_drift_past_the_thresholds_is_highlighted(context, embedded, corpus):
    measured = model_health(embedded, None, corpus=corpus, probes=probe_facts(embedded, count=PROBES)).unedited  # cached by then

    def report(perplexity_factor: float, retention_factor: float) -> HealthReport:
        edited = dataclasses.replace(measured, perplexity=measured.perplexity * perplexity_factor,
                                     retention=measured.retention * retention_factor)
        return HealthReport(measured, edited, 3, health_warnings(measured, edited))

    calm, drifted, collapsed = report(1.05, 0.95), report(1.25, 0.8), report(3.0, 1.0)
    assert "Within the thresholds" in health_view.health_summary(calm)
    assert not any(health_view.WARNING_MARK in str(cell) for cell in health_view.health_rows(calm)[1])
    text = health_view.health_summary(drifted)
    assert "Drift warning" in text and "x1.25" in text and "80%" in text
    row = health_view.health_rows(drifted)[1]
    assert row[2] == f"×1.250 {health_view.WARNING_MARK}" and row[3].endswith(health_view.WARNING_MARK)
    assert "collapsed" in health_view.health_summary(collapsed) and "Drift warning" not in health_view.health_summary(collapsed)
    lost = [{"prompt": f"<b>Place {i}</b> is in", "expected": "Paris", "answer": " Rome"} for i in range(10)]
    text = health_view.health_summary(HealthReport(measured, dataclasses.replace(drifted.edited, forgotten=lost), 3, drifted.warnings))
    assert f"Known facts it now answers differently (10 of {measured.probes}" in text and "... and 2 more" in text
    assert "&lt;b&gt;Place 0&lt;/b&gt; is in* → now **Rome** (knew: Paris)" in text and "<b>" not in text
    rows = health_view.history_rows(["b1", "b2"], [calm, drifted])
    assert [row[0] for row in rows] == ["(original)", "b1", "b2"] and rows[1][5] == "none" and "x1.25" in rows[2][5]
    assert "first drifted past the thresholds after batch b2" in health_view.history_summary(["b1", "b2"], [calm, drifted])
    assert health_view.history_summary(["b1", "b2"], [calm]) == (
        "Measuring batch by batch: 1 of your 2 batches so far. None has drifted past the thresholds yet.")
    for words in ("perplexity", "retention", "×1.10", "90%", "×2"):
        assert words in health_view.HEALTH_CAPTION


def test_stop_during_the_edited_measurement_leaves_the_model_as_it_was(embedded, edited):
    context = AppContext(manager=ModelManager(["embedded"], preloaded=embedded), runner=ModelRunner(name="health-stop"),
                         health_corpus=short_corpus(12), health_probes=PROBES)  # not measured yet: the job must measure both states
    messages, answers = [], []

    def stop_when_edited(fraction, desc="", **kwargs):
        messages.append(desc)
        if "With your edits" in desc and not answers:
            answers.append(stop_jobs(context, edited))

    with pytest.raises(Stopped, match="Stopped"):  # a stop, not a failure: the page shows it as a neutral line
        list(test_tab.run_health(context, edited, stop_when_edited))
    assert any("Original model" in message for message in messages) and answers
    assert answers[0].startswith(("Stopped your model health", "Stopping your model health"))
    assert context.runner.wait_idle(60)
