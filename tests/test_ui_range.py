"""The Choose R tab's handlers called directly: the packaged averages, and R measured by editing."""

from __future__ import annotations

import html

import gradio as gr
import pytest

from core.errors import InputError
from editor.evaluation.counterfact import load_records
from editor.layers import layers_text
from tracer.figures import range_label
from tracer.recommend import packaged_recommendation
from ui import ranges
from ui.context import AppContext
from ui.models import ModelManager
from ui.runner import ModelRunner
from ui.session import SessionState
from ui.tabs import range_measure, range_tab
from ui.tabs.range_measure import MeasureForm
from ui.tabs.range_tab import RangeForm, RecommendForm


def quiet(*args, **kwargs) -> None:
    """A progress display that shows nothing."""


@pytest.fixture(scope="module")
def context(embedded) -> AppContext:
    context = AppContext(manager=ModelManager(["embedded"], preloaded=embedded), runner=ModelRunner(name="range-tests"))
    yield context
    assert context.runner.wait_idle(60)


def test_the_packaged_averages_recommend_r_for_the_embedded_model_at_once(context, embedded):
    session = SessionState(model_spec="embedded")
    assert ranges.default_source("embedded") == "packaged" and ranges.default_source("gpt2") == "trace"
    figure, explanation = range_tab.show_curve(context, RangeForm(source="packaged", width=5, first=2, last=6), session)
    expected = packaged_recommendation(embedded, 5)
    assert expected is not None and expected.source == "average" and expected.lower is not None
    assert html.unescape(explanation) == expected.explanation and "Recommended R" in figure.layout.title.text
    assert session.layers is None  # opening the tab draws the curve and leaves R alone
    figure, low, high, explanation, data, chosen, layers, session = range_tab.run_recommend(context, RecommendForm(source="packaged", width=5), session)
    assert data["layers"] == expected.layers == list(range(low, high + 1)) and session.layers == (low, high)
    assert data["source"] == "average" and layers == f"{low}-{high}"
    for warning in data["warnings"]:  # a weak signal (or an outlier layer) is said in the explanation too
        assert html.unescape(explanation).count(warning) == 1


REFUSED = [  # (records source, how many, windows typed, the plain message): by the handler, against the model
    ("devset", 10, "99-200", "Ranges R to try: Layer 200 does not exist"),
    ("devset", 10, "2-6,banana", "Ranges R to try: .*not understood"),
    ("mine", 10, "", "no edits or imported records yet"),
]
UNUSABLE = [  # by the form, before the handler
    (dict(count=0), "Records to edit must be from 1 to 40"),
    (dict(count=41), "Records to edit must be from 1 to 40"),
    (dict(source="elsewhere"), "Records must be one of devset, mine"),
    (dict(width=13), "Width of R must be from 1 to 12"),
    (dict(windows="1," * 200), "Windows is 400 characters long"),
]


def test_bad_measurements_are_refused_before_any_job(context):
    session = SessionState(model_spec="embedded")
    for source, count, windows, message in REFUSED:
        with pytest.raises(gr.Error, match=message):
            form = MeasureForm(source=source, count=count, windows=windows, width=5)
            next(range_measure.run_measure(context, form, session, progress=quiet))
        assert context.runner.jobs_of(session.number) == [] and session.windows is None and session.layers is None
    for values, message in UNUSABLE:
        with pytest.raises(InputError, match=message):
            MeasureForm(**values)


def test_windows_default_to_tracing_r_and_its_neighbours():
    assert ranges.around([2, 3, 4, 5, 6], 30) == [(0, 1, 2, 3, 4), (1, 2, 3, 4, 5), (2, 3, 4, 5, 6), (3, 4, 5, 6, 7),
                                                         (4, 5, 6, 7, 8)]
    assert ranges.around([27, 28, 29], 30) == [(25, 26, 27), (26, 27, 28), (27, 28, 29)]
    assert ranges.checked_windows("  ", 30, 5) is None and len(ranges.checked_windows("all", 30, 5)) == 26


def test_measuring_by_editing_gives_a_verdict_and_sets_r(context, embedded, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))  # a real measurement, not the windows cached by an earlier run
    session = SessionState(model_spec="embedded", cov_tokens=600)  # a small covariance budget, as if the last edit used it
    tracing = packaged_recommendation(embedded, 2)
    low = max(tracing.layers)
    windows = f"{low - 1}-{low},{low}"  # the same last layer: the target vectors are optimized once
    form = MeasureForm(source="devset", count=2, windows=windows, width=2)
    updates = list(range_measure.run_measure(context, form, session, progress=quiet))
    figure, verdict, first, last, layers, session = updates[-1]
    result = session.windows
    assert result.n == 2 and [window.layers for window in result.windows] == [[low - 1, low], [low]]
    assert result.tracing_recommended == tracing.layers and all(window.S is not None for window in result.windows)
    best = result.editing_best
    assert (first, last) == (min(best), max(best)) == session.layers and layers == range_label(min(best), max(best))
    assert f"Editing's best R: layers {layers_text(best)}" in verdict and "Tracing's R" in verdict
    measured = result.window(tracing.layers)
    disagree = measured is not None and not result.agree
    assert ("Tracing and editing disagree" in verdict) == disagree
    assert "R by editing" in figure.layout.title.text and figure.layout.meta["caption"]
    edited = load_records(ranges.devset_file(embedded))[:2]
    assert [record.subject for record in edited] and f"{len(edited)} dev-set records" in verdict
