"""A job's line in Debian's Chromium (real server, embedded model): refusals stay next to their button, progress
never blank and never backwards, and a Stop that looks like a stop, not a failure (issue 22, items 4-6).

One server for the module (tests/app_harness.py shares it with the other browser and app tests).
"""

from __future__ import annotations

import re

import pytest

from tests import app_harness
from tests.test_browser_app import open_tab, set_number, small_covariance, type_edit, wait_for_model

pytestmark = pytest.mark.browser

app = app_harness.app
chromium = app_harness.chromium
page = app_harness.page
app_idle_after_test = app_harness.app_idle_after_test


def error_toasts(page) -> list[str]:
    """The texts of Gradio's error toasts on the page now."""
    return [text for text in page.locator(".toast-body").all_inner_texts() if "error" in text.lower()]


def line_sample(page, line: str) -> tuple[str, int | None]:
    """The job line's text and the percentage its bar shows (None without a bar)."""
    sample = page.evaluate(
        """(id) => {
            const line = document.querySelector('#' + id);
            if (!line) return ['', null];
            const bar = line.querySelector('[role=progressbar]');
            return [line.innerText.trim(), bar ? parseInt(bar.getAttribute('aria-valuenow')) : null];
        }""",
        line,
    )
    return sample[0], sample[1]


def test_a_refused_input_is_explained_next_to_its_button_until_the_next_action(page):
    from playwright.sync_api import expect

    wait_for_model(page)
    open_tab(page, "Test")
    page.click("#test-check")  # no edits yet: refused
    line = page.locator("#test-check-progress")
    expect(line).to_contain_text("There is nothing to check yet")
    page.wait_for_timeout(20_000)  # a toast would be gone by now; the line stays
    expect(line).to_contain_text("There is nothing to check yet")
    button, said = page.locator("#test-check").bounding_box(), line.bounding_box()
    assert 0 <= said["y"] - (button["y"] + button["height"]) < 80, (button, said)  # right under the button
    assert error_toasts(page) == []

    # A typed value out of a slider's range is announced beside it, never silently changed.
    open_tab(page, "Averages")
    set_number(page, "avg-samples", 100000)
    expect(page.locator("#avg-samples .locus-clamp-note")).to_contain_text("100000 is out of range, so 50 is used")


def test_progress_is_one_line_never_blank_never_backwards(page):
    """An edit, sampled every 200 ms from its click to its end: a line always, its percentage never going down; then
    the prediction made before it is computed again at once, or marked when it cannot be."""
    from playwright.sync_api import expect

    wait_for_model(page)
    open_tab(page, "Test")
    page.click("#test-compare")  # a prediction on the original weights, to see it marked after the edit
    expect(page.locator("#test-compare-state")).to_contain_text("Computed on the model with original weights")
    open_tab(page, "Edit")
    type_edit(page)
    small_covariance(page)
    page.click("#edit-apply")
    samples = []
    for _ in range(900):  # 3 minutes at most
        text, percent = line_sample(page, "edit-progress")
        samples.append((text, percent))
        if text.startswith(("Done", "✓", "⚠", "⏹")) or "Applied batch" in page.locator("#edit-status").inner_text():
            break
        page.wait_for_timeout(200)
    expect(page.locator("#edit-status")).to_contain_text("Applied batch", timeout=10_000), samples[-3:]
    running = samples[:-1]
    assert running, "the edit ended before its line could be read"
    assert all(text for text, _ in running), f"a blank line while the edit ran: {samples}"
    # Gradio's own "processing" may show for the moment before the event's first answer arrives; once the job's
    # line is drawn, it alone speaks.
    ours = next(index for index, (text, _) in enumerate(running) if "processing" not in text)
    assert not any("processing" in text for text, _ in running[ours:]), f"Gradio's own timer on the line: {samples}"
    percents = [percent for _, percent in running if percent is not None]
    assert percents and percents == sorted(percents), f"no progress, or progress going backwards: {samples}"
    for text, _ in running:  # one percentage and one estimate at a time
        assert len(re.findall(r"\d+%", text)) <= 1 and text.count("left") <= 1, text
    expect(page.locator("#edit-progress")).to_contain_text("Done in")

    # The prediction made before the edit is computed again at once (a prediction is cheap), never shown as current
    # while it is not: the note says which weights it now shows.
    open_tab(page, "Test")
    expect(page.locator("#test-compare-state")).to_contain_text("Computed on the model with your edits: 1 batch")
    expect(page.locator("#test-compare-state-refresh")).to_be_hidden()
    # A prompt box that no longer holds a valid prompt: the old comparison stays, marked, with Refresh.
    page.fill("#test-prompt textarea", "   ")
    open_tab(page, "Edit")
    page.click("#edit-reset")
    expect(page.locator("#edit-status")).to_contain_text("All your edits were undone")
    open_tab(page, "Test")
    expect(page.locator("#test-compare-state")).to_contain_text("Computed before your last change")
    expect(page.locator("#test-compare-state-refresh")).to_be_visible()


def test_stop_is_a_stop_not_an_error(page):
    from playwright.sync_api import expect

    wait_for_model(page)
    open_tab(page, "Averages")
    set_number(page, "avg-count", 279)  # far more than a test waits for
    page.click("#avg-run")
    line = page.locator("#avg-progress")
    expect(line.locator("[role=progressbar]")).to_be_attached()  # running
    page.click("#avg-stop")
    expect(line).to_contain_text("Stopped")
    page.wait_for_timeout(1_000)  # the stopped event's end reaches the page
    expect(line).to_contain_text("Stopped")
    assert "stopping" not in line.inner_text().lower()
    assert error_toasts(page) == []
    for elem_id in ("avg-progress", "avg-status", "avg-run"):
        expect(page.locator(f"#{elem_id}")).not_to_contain_text("Error")
    expect(page.locator("#avg-status")).not_to_contain_text("Traceback")
