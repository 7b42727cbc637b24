"""End to end in Debian's Chromium: the real page, the real server, the embedded model.

trace an example -> heatmaps drawn -> choose R -> apply an edit -> see it on the Test tab ->
another visitor does not see it -> undo -> the old answer is back; bad input shows a message and
the page keeps working. Screenshots go to a temporary folder (printed on failure).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from core.kinds import KINDS
from tests import app_harness

pytestmark = pytest.mark.browser

app = app_harness.app
chromium = app_harness.chromium
page = app_harness.page
app_idle_after_test = app_harness.app_idle_after_test

EIFFEL = "The Eiffel Tower is located in the city of"
SCREENSHOTS = Path(tempfile.mkdtemp(prefix="locus-screenshots-"))


def shot(page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def set_number(page, elem_id: str, value: float) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Enter")


def type_edit(page, subject: str = "Eiffel Tower", template: str = "{} is located in the city of", target: str = "Rome") -> None:
    """Type one request into the Edit tab's fields."""
    page.fill("#edit-subject textarea", subject)
    page.fill("#edit-template textarea", template)
    page.fill("#edit-target textarea", target)


def small_covariance(page) -> None:
    """Open the Edit tab's shared settings and ask for a small covariance sample, which keeps a test's edit quick."""
    page.get_by_text("Advanced (settings every method shares)", exact=True).click()
    set_number(page, "edit-cov-tokens", 4096)


def wait_for_model(page) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#model-line")).to_contain_text("Model:")


def heatmap_values(page, elem_id: str) -> list[list[float | None]]:
    """The z matrix plotly drew (the first heatmap trace of the plot)."""
    return page.evaluate(
        """(id) => {
            const graph = document.querySelector('#' + id + ' .js-plotly-plot');
            const z = graph._fullData[0].z;
            return Array.from(z, row => Array.from(row, v => (v === null || Number.isNaN(v)) ? null : v));
        }""",
        elem_id,
    )


def error_toast_text(page, containing: str) -> str:
    """The text of the error message shown in the page that contains `containing`."""
    from playwright.sync_api import expect

    toast = page.locator(".toast-body").filter(has_text="Error").filter(has_text=containing).last
    expect(toast).to_be_visible()
    return toast.inner_text()


def progress_while_running(page, line: str, status: str, done_text: str) -> list[float | None]:
    """Samples of the progress shown under a button until `status` says `done_text`: percent, or None (no number)."""
    samples = []
    while done_text not in (page.locator(status).inner_text() or ""):
        # A job line (ui/controls.py) draws its bar with its one percentage; Gradio's progress has .progress-text.
        bar = page.evaluate("(line) => document.querySelector(line + ' [role=progressbar]')?.getAttribute('aria-valuenow')", line)
        text = [bar + "%"] if bar is not None else page.locator(f"{line} .progress-text").all_inner_texts()
        if text:
            number = re.search(r"([\d.]+)%", text[0])
            samples.append(float(number.group(1)) if number else None)
        page.wait_for_timeout(250)
    return samples


def compare(page, prompt: str, before: str, after: str) -> None:
    """Run the Test tab's comparison and wait for the expected top tokens (original, edited)."""
    from playwright.sync_api import expect

    open_tab(page, "Test")
    page.fill("#test-prompt textarea", prompt)
    page.click("#test-compare")
    expect(page.locator("#test-after-top h2").first).to_have_text(after)
    expect(page.locator("#test-before-top h2").first).to_have_text(before)
    expect(page.locator("#test-summary")).to_contain_text("edits" if before == after else "change the top prediction")


def test_trace_choose_r_edit_test_undo_in_the_browser(page, chromium, app):
    from playwright.sync_api import expect

    wait_for_model(page)
    expect(page.locator("#trace-tokens")).to_contain_text("Tower")
    page.get_by_text("Advanced", exact=True).first.click()
    set_number(page, "trace-samples", 1)  # small and quick; the numbers are still the exact trace's

    page.locator("#trace-examples").get_by_text("Eiffel Tower → Paris").click()
    for kind in KINDS:  # the preview (or the first exact cells) is drawn long before the trace ends
        expect(page.locator(f"#trace-plot-{kind} .js-plotly-plot g.hm image").first).to_be_attached()
    expect(page.locator("#trace-status")).to_contain_text("Exact trace done", timeout=600_000)
    expect(page.locator("#trace-status")).to_contain_text("Paris")
    for kind in KINDS:
        values = heatmap_values(page, f"trace-plot-{kind}")
        assert len(values) == 10 and len(values[0]) == 30  # 10 tokens x 30 layers
        assert all(v is not None for row in values for v in row), f"{kind}: unfinished cells in the final heatmap"
    title = page.locator("#trace-plot-mlp .gtitle").first.text_content()
    assert title.startswith("Restoring") and "preview" not in title.lower()
    expect(page.locator("#trace-download-json")).to_be_enabled()
    shot(page, "trace")

    # A bad subject: a message beside the button, and the heatmaps of the last trace stay as they were.
    drawn = heatmap_values(page, "trace-plot-mlp")
    page.fill("#trace-subject textarea", "Big Ben")
    page.click("#trace-run")
    assert "Big Ben" in error_toast_text(page, "does not occur in the prompt")
    expect(page.locator("#trace-progress")).to_contain_text("Error")  # shown on the line under the buttons
    for kind in KINDS:
        expect(page.locator(f"#trace-plot-{kind}")).not_to_contain_text("Error")
    assert heatmap_values(page, "trace-plot-mlp") == drawn
    page.fill("#trace-subject textarea", "Eiffel Tower")

    open_tab(page, "Choose R")
    expect(page.locator("#range-plot .js-plotly-plot")).to_be_attached()  # redrawn after the trace
    page.click("#range-recommend")
    expect(page.locator("#range-explanation")).to_contain_text("R = layers")
    recommended = re.search(r"R = layers (\d+)-(\d+)", page.locator("#range-explanation").inner_text())
    assert recommended and int(recommended.group(2)) - int(recommended.group(1)) == 4  # default width 5
    # The explanation is drawn when the tab opens (packaged averages): wait for Recommend's own line, or its answer
    # could move the sliders back after they are set below.
    expect(page.locator("#range-recommend-progress")).to_contain_text("Done")
    expect(page.locator("#range-chosen")).to_contain_text(f"R = layers {recommended.group(1)}-{recommended.group(2)}")
    for elem_id, value, shown in (("range-first", 2, "R = layers 2-"), ("range-last", 6, "R = layers 2-6")):
        set_number(page, elem_id, value)
        expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value))
        page.locator(f"#{elem_id} input[type=range]").dispatch_event("pointerup")  # a release: R is redrawn
        expect(page.locator("#range-chosen")).to_contain_text(shown)
    shot(page, "choose-r")

    # Edit: the example filled in its suggested edit; add it to the table and apply it with R = 2-6.
    open_tab(page, "Edit")
    expect(page.locator("#edit-layers textarea")).to_have_value("2-6")
    expect(page.locator("#edit-subject textarea")).to_have_value("Eiffel Tower")
    expect(page.locator("#edit-target textarea")).to_have_value("Rome")
    page.click("#edit-add")
    expect(page.locator("#edit-table")).to_contain_text("Paris")  # the current answer, filled in by the model
    small_covariance(page)
    page.click("#edit-apply")
    shown = progress_while_running(page, "#edit-progress", "#edit-status", "Applied batch")
    assert shown, "no progress under the Apply button"
    percents = [value for value in shown if value is not None]
    assert percents == sorted(percents), f"progress went backwards: {percents}"
    expect(page.locator("#edit-history")).to_contain_text("Eiffel Tower → Rome")
    expect(page.locator("#edit-loss-plot .js-plotly-plot")).to_be_attached()
    shot(page, "edit")

    # A reload keeps this visitor's edits (the page says where they are kept).
    page.reload()
    wait_for_model(page)
    expect(page.locator("#model-line")).to_contain_text("your edits: 1 batch")
    expect(page.locator("#keep-note")).to_contain_text("kept on this server for this browser")
    open_tab(page, "Edit")
    expect(page.locator("#edit-history")).to_contain_text("Eiffel Tower → Rome")

    # Test: the edited model says Rome, the original still says Paris; the checks pass.
    compare(page, EIFFEL, before="Paris", after="Rome")
    page.click("#test-check")
    expect(page.locator("#test-checks")).to_contain_text("1/1 ✓")
    shot(page, "test")

    # Another visitor (a new browser context) sees the original model.
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    try:
        other = context.new_page()
        other.goto(app.url)
        wait_for_model(other)
        compare(other, EIFFEL, before="Paris", after="Paris")
        expect(other.locator("#test-summary")).to_contain_text("no edits yet")
    finally:
        context.close()

    # Export the edits, undo them (the old answer is back), import them again, then reset.
    open_tab(page, "Edit")
    page.click("#edit-export")
    link = page.locator("#edit-exported a").first
    expect(link).to_be_attached()
    exported = page.request.get(link.get_attribute("href"))
    assert exported.ok
    ledger_file = SCREENSHOTS / "locus-edits.safetensors"
    ledger_file.write_bytes(exported.body())

    page.click("#edit-undo")
    expect(page.locator("#edit-status")).to_contain_text("Undid batch")
    expect(page.locator("#model-line")).to_contain_text("original weights")
    compare(page, EIFFEL, before="Paris", after="Paris")
    expect(page.locator("#test-summary")).to_contain_text("no edits yet")

    open_tab(page, "Edit")
    with page.expect_file_chooser() as chooser:
        page.click("#edit-import-ledger")
    chooser.value.set_files(str(ledger_file))
    expect(page.locator("#edit-status")).to_contain_text("Imported 1 batch")
    expect(page.locator("#edit-history")).to_contain_text("Eiffel Tower → Rome")
    compare(page, EIFFEL, before="Paris", after="Rome")
    open_tab(page, "Edit")
    page.click("#edit-reset")
    expect(page.locator("#edit-status")).to_contain_text("All your edits were undone")
    compare(page, EIFFEL, before="Paris", after="Paris")


def test_bad_input_shows_a_message_and_the_next_action_works(page):
    from playwright.sync_api import expect

    wait_for_model(page)
    page.fill("#trace-prompt textarea", EIFFEL)
    page.fill("#trace-subject textarea", "Big Ben")
    expect(page.locator("#trace-token-hint")).to_contain_text("does not occur")  # said while typing
    page.click("#trace-run")
    assert "Big Ben" in error_toast_text(page, "does not occur in the prompt")
    assert "Traceback" not in page.content()
    compare(page, EIFFEL, before="Paris", after="Paris")

    # A malformed CounterFact file is refused with the record and field named; a good one fills the table.
    import json

    broken, good = SCREENSHOTS / "broken.json", SCREENSHOTS / "counterfact.json"
    record = {
        "case_id": 7,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
            "target_new": {"str": "English"}, "target_true": {"str": "French"},
        },
        "paraphrase_prompts": ["Danielle Darrieux's mother tongue is"],
        "neighborhood_prompts": ["The mother tongue of Jean Gabin is"],
    }
    broken.write_text(json.dumps([record, {"case_id": 8, "requested_rewrite": {"prompt": "{} is in"}}]))
    good.write_text(json.dumps([record]))
    open_tab(page, "Edit")
    for path in (broken, good):
        with page.expect_file_chooser() as chooser:
            page.click("#edit-import")
        chooser.value.set_files(str(path))
        if path is broken:  # said on the line under the table's buttons
            expect(page.locator("#edit-table-progress")).to_contain_text("Record 1")
            assert "subject" in page.locator("#edit-table-progress").inner_text()
    expect(page.locator("#edit-table")).to_contain_text("Danielle Darrieux")
    expect(page.locator("#edit-table")).to_contain_text("Jean Gabin")


def test_stopping_a_trace_leaves_the_model_as_it_was(page):
    """Stop mid-trace; conftest.py then checks the shared model's weights and hooks are unchanged."""
    from playwright.sync_api import expect

    wait_for_model(page)
    page.locator("#trace-examples").get_by_text("Colosseum → Rome").click()  # default settings: a long trace
    expect(page.locator("#trace-plot-mlp .js-plotly-plot g.hm image").first).to_be_attached()

    # Meanwhile another visitor's short job is answered at the trace's next safe point, not after the trace.
    context = page.context.browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        other = context.new_page()
        other.goto(page.url)
        wait_for_model(other)
        open_tab(other, "Test")
        other.click("#test-compare")
        expect(other.locator("#test-after-top h2").first).to_have_text("Paris")
        assert "Exact trace done" not in page.locator("#trace-status").inner_text()  # answered while the trace runs
    finally:
        context.close()
    page.click("#trace-stop")
    expect(page.locator("#trace-status")).to_contain_text("Stopped.")
    compare(page, "The Colosseum is located in the city of", before="Rome", after="Rome")
    expect(page.locator("#trace-status")).not_to_contain_text("Exact trace done")


def number_value(page, elem_id: str) -> float | None:
    text = page.locator(f"#{elem_id} input[type=number]").input_value()
    return float(text) if text else None


def test_the_edit_tab_shows_each_methods_own_settings_and_edits_with_them(page):
    """Each method shows only its own settings, at the model family's defaults; an AlphaEdit edit uses the l2 typed."""
    from playwright.sync_api import expect

    wait_for_model(page)
    open_tab(page, "Edit")
    own = {  # the inputs the settings dataclasses give, and the family's defaults for the embedded (llama) model
        "memit": {"mom2-weight": 1500.0},
        "rome": {},
        "alphaedit": {"nullspace-threshold": 0.01, "l2": 10.0},
        "encore": {"mom2-weight": 1500.0, "norm-lambda": 20.0, "early-stop-steps": 2.0},
    }
    for method, settings in own.items():
        page.locator(f"#edit-method input[value={method}]").check()
        expect(page.locator(f"#edit-settings-{method}")).to_be_visible()
        for other in own.keys() - {method}:
            expect(page.locator(f"#edit-settings-{other}")).to_be_hidden()
        for name, value in settings.items():
            expect(page.locator(f"#edit-{method}-{name} input")).to_be_visible()
            assert number_value(page, f"edit-{method}-{name}") == value, (method, name)
        if not settings:
            expect(page.locator(f"#edit-settings-{method}")).to_contain_text("no settings of its own")
        shot(page, f"edit-settings-{method}")

    # AlphaEdit end to end with its own l2 typed: the typed request (the table is empty) is edited.
    page.locator("#edit-method input[value=alphaedit]").check()
    set_number(page, "edit-alphaedit-l2", 5)
    type_edit(page)
    small_covariance(page)
    page.click("#edit-apply")
    expect(page.locator("#edit-status")).to_contain_text("Applied batch", timeout=600_000)
    expect(page.locator("#edit-status")).to_contain_text("ALPHAEDIT")
    expect(page.locator("#edit-history")).to_contain_text("Eiffel Tower → Rome")
    expect(page.locator("#edit-diag-layers")).to_contain_text("null-space directions")  # AlphaEdit's own diagnostics
    page.locator("#edit-json-accordion").get_by_text("Raw result (JSON)", exact=True).click()
    expect(page.locator("#edit-json")).to_contain_text("nullspace_threshold")
    settings = page.locator("#edit-json").inner_text()
    assert re.search(r"\bl2\W+5(\.0)?\b", settings), settings[:2000]  # the l2 typed reached the method
    shot(page, "edit-alphaedit-applied")
    page.click("#edit-reset")
    expect(page.locator("#edit-status")).to_contain_text("All your edits were undone")
