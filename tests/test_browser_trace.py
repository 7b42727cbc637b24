"""The Trace tab in Debian's Chromium (real server, embedded model): a link reopens its settings, Stop is neutral and
keeps the last complete heatmaps, the prediction follows edits and undo at once, the re-trace speaks the metric's units.

The server is the test session's one app (tests/app_harness.py); traces are kept small (one sample, MLP only).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest

from tests import app_harness
from tests.test_browser_app import (
    heatmap_values,
    open_tab,
    set_number,
    small_covariance,
    type_edit,
    wait_for_model,
)

pytestmark = pytest.mark.browser

app = app_harness.app
chromium = app_harness.chromium
page = app_harness.page
app_idle_after_test = app_harness.app_idle_after_test

EIFFEL = "The Eiffel Tower is located in the city of"
LINK = {"prompt": EIFFEL, "subject": "Eiffel Tower", "kinds": "mlp", "samples": "1", "metric": "logit-diff"}


def open_link(page, app, params: dict[str, str]) -> None:
    """Open the page at a trace link and wait for the model."""
    page.goto(f"{app.url}/?{urllib.parse.urlencode(params)}")
    wait_for_model(page)


def error_toast_count(page) -> int:
    """How many error messages the page shows."""
    return page.locator(".toast-body").filter(has_text="Error").count()


def trace_to_the_end(page) -> None:
    from playwright.sync_api import expect

    page.click("#trace-run")
    expect(page.locator("#trace-status")).to_contain_text("Exact trace done", timeout=300_000)


def test_a_link_reopens_the_settings_and_stop_keeps_the_last_heatmaps(page, app):
    """A permalink fills the form; Trace puts the settings in the address; Stop says "Stopped", shows no error and
    leaves the last complete heatmaps on screen."""
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1920, "height": 1080})  # a projector
    open_link(page, app, LINK)
    expect(page.locator("#trace-prompt textarea")).to_have_value(EIFFEL)
    expect(page.locator("#trace-subject textarea")).to_have_value("Eiffel Tower")
    expect(page.locator("#trace-example-note")).to_contain_text("Settings from the link are filled in")
    expect(page.locator("#trace-metric input[value='logit-diff']")).to_be_checked()
    expect(page.locator("#trace-samples input[type=number]")).to_have_value("1")
    expect(page.locator("#trace-kinds").get_by_label("Attention", exact=True)).not_to_be_checked()
    trace_to_the_end(page)
    status = page.locator("#trace-status").inner_text()
    assert "logit" in status and "computed on original weights" in status and "%" not in status.split("·")[1]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query))
    assert query == LINK  # the address carries the settings traced (defaults left out), nothing else
    expect(page.locator("#trace-heads-box")).to_be_hidden()  # no empty box for single heads, which were not traced
    drawn = heatmap_values(page, "trace-plot-mlp")
    assert any(value is not None for row in drawn for value in row)

    # Each figure downloads as SVG and PNG, drawn in the browser, with its caption under it.
    caption = page.evaluate("() => document.querySelector('#trace-plot-mlp .js-plotly-plot').layout.meta.caption")
    assert "Computed on original weights" in caption
    with page.expect_download() as svg_download:
        page.click("#trace-plot-mlp-svg")
    assert svg_download.value.suggested_filename == "trace-eiffel-tower-mlp.svg"
    svg = Path(svg_download.value.path()).read_text(encoding="utf-8")
    words = [word for word in re.findall(r"[A-Za-z]{4,}", caption)]
    assert svg.startswith("<svg") and words and all(word in svg for word in words), [w for w in words if w not in svg]
    with page.expect_download() as png_download:
        page.click("#trace-plot-mlp-png")
    assert Path(png_download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Projector mode: traced on a 1920-px screen, every plot (the hidden state's "not traced" placeholder, whose axes
    # are hidden, before the MLP heatmap too) is 1.3x taller with larger text; on a narrower screen, the server's sizes.
    def sizes(kind: str) -> list:
        return page.evaluate(f"() => {{ const g = document.querySelector('#trace-plot-{kind} .js-plotly-plot'); "
                             f"return [g._fullLayout.height, g.layout.__locusBase.height, (g._fullLayout.yaxis.tickfont || {{}}).size, "
                             f"g.layout.__locusScale]; }}")

    for kind in ("hidden", "mlp"):
        height, base, _, scale = sizes(kind)
        assert scale == 1.3 and height == round(base * 1.3), (kind, height, base, scale)
    wide = sizes("mlp")
    page.set_viewport_size({"width": 1500, "height": 1000})  # the harness's page size
    page.wait_for_function(f"() => document.querySelector('#trace-plot-mlp .js-plotly-plot')._fullLayout.height === {wide[1]}")
    narrow = sizes("mlp")
    assert narrow[2] < wide[2] and narrow[3] == 1 and heatmap_values(page, "trace-plot-mlp") == drawn

    # A long trace, stopped once its preview is drawn: the last complete heatmaps come back, no error anywhere.
    set_number(page, "trace-samples", 50)
    page.locator("#trace-kinds").get_by_label("Hidden state", exact=True).check()
    page.click("#trace-run")
    expect(page.locator("#trace-status")).to_contain_text("Approximate preview shown")
    page.click("#trace-stop")
    expect(page.locator("#trace-status")).to_contain_text("Stopped.")
    expect(page.locator("#trace-status")).to_contain_text("your last complete trace (computed on original weights)")
    page.wait_for_timeout(1500)  # time for a late error to show, were there one
    assert error_toast_count(page) == 0
    expect(page.locator("#trace-progress")).not_to_contain_text("Error")
    assert heatmap_values(page, "trace-plot-mlp") == drawn


def test_the_prediction_follows_edits_and_the_retrace_speaks_logit_difference(page, app):
    """After an edit the Trace tab's prediction is the edited model's at once (heatmaps marked as computed before, and
    Refresh computes them again); after undo the original's again; the re-trace of a logit-difference trace gives no
    percentages."""
    from playwright.sync_api import expect

    open_link(page, app, LINK)
    prediction = page.locator("#trace-prediction")
    expect(prediction).to_contain_text("Model's top prediction (original weights): Paris")
    trace_to_the_end(page)
    expect(page.locator("#trace-stale")).to_be_hidden()

    open_tab(page, "Edit")
    type_edit(page)
    page.click("#edit-add")
    expect(page.locator("#edit-table")).to_contain_text("Paris")
    small_covariance(page)
    page.click("#edit-apply")
    expect(page.locator("#edit-status")).to_contain_text("Applied batch", timeout=300_000)

    open_tab(page, "Trace")
    expect(prediction).to_contain_text("Model's top prediction (your edits: 1 batch): Rome")
    expect(page.locator("#trace-stale")).to_contain_text("computed on original weights, before your last change")
    expect(page.locator("#trace-refresh")).to_be_visible()

    open_tab(page, "Test")
    expect(page.locator("#test-diff-mlp-png")).to_be_hidden()  # no export buttons before there is a re-trace
    page.click("#test-retrace")
    summary = page.locator("#test-retrace-status")
    expect(summary).to_contain_text("clean logit difference", timeout=300_000)
    text = summary.inner_text()
    assert "%" not in text and re.search(r"[+−-]\d+\.\d+ before, [+−-]\d+\.\d+ after your edits", text), text
    expect(page.locator("#test-diff-mlp-png")).to_be_visible()

    # Refresh computes the heatmaps on screen again, on the edited weights; undo then marks them in turn.
    open_tab(page, "Trace")
    page.click("#trace-refresh")
    expect(page.locator("#trace-status")).to_contain_text("Exact trace done", timeout=300_000)
    expect(page.locator("#trace-status")).to_contain_text("computed on your edits: 1 batch")
    expect(page.locator("#trace-stale")).to_be_hidden()

    open_tab(page, "Edit")
    page.click("#edit-undo")
    expect(page.locator("#edit-status")).to_contain_text("Undid batch")
    open_tab(page, "Trace")
    expect(prediction).to_contain_text("Model's top prediction (original weights): Paris")
    expect(page.locator("#trace-stale")).to_contain_text("computed on your edits: 1 batch, before your last change")
    open_tab(page, "Test")
    expect(page.locator("#test-retrace-stale")).to_contain_text("before your last change")
