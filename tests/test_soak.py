"""A short soak of the real app (issue 10, item 9): three visitors at once for 25 s.

Each visitor is its own gradio_client session against the session's shared server and loops
predict, preview trace, a bad input (which must be refused), its own edit, predict, undo
(bench/soak.py; the longer run is `python -m bench soak`). No timings are asserted: no request
may fail, the server's RSS (this process: the server runs in it) may grow by less than a stated
bound, and each visitor's final predictions must match its own ledger, never another visitor's.
"""

from __future__ import annotations

from bench.soak import SoakSettings, format_report, process_rss, run_soak, warm_up
from tests import app_harness

app = app_harness.app  # the shared server (fixture)
app_idle_after_test = app_harness.app_idle_after_test  # autouse: let queued jobs finish before the clean-model check

# Bytes, generous: measured after a warm-up (+360 MiB without one, on a first edit); a copy of the model's
# weights (540 MB) kept per edit or per session would pass it.
RSS_GROWTH_BOUND = 500 * 2**20
# 4096 corpus tokens behind C, as in tests/test_app_client.py: whichever test runs first computes it (seconds), the
# other reads it from the cache; the edits' few steps keep each edit short.
SETTINGS = SoakSettings(visitors=3, seconds=25, cov_tokens=4096, steps=10, preview_kinds=("mlp",))


def test_three_visitors_soak_without_failures_leaks_or_crossed_ledgers(app):
    warm_up(app.url, SETTINGS)  # one-time costs (a first edit, a first preview) before RSS is measured
    report = run_soak(app.url, SETTINGS, read_rss=process_rss)
    summary = format_report(report)
    print(summary)

    assert not report.failures, summary
    assert report.rss_growth < RSS_GROWTH_BOUND, summary
    # Every visitor checked every visitor's prompt: its own edit where it kept one, the original answer elsewhere.
    assert len(report.final_checks) == SETTINGS.visitors ** 2 and not report.mismatches, summary
    kept = {check.visitor for check in report.final_checks if check.own_edit}
    assert kept == {1}, summary  # visitor 1 ended with its edit applied; visitors 0 and 2 with none
    assert all(edits >= 1 for edits in report.cycles), summary
    served = {record.endpoint for record in report.records}
    assert {"predict", "preview", "bad input", "edit", "undo"} <= served, summary
    assert all(record.outcome == "refused" for record in report.records if record.endpoint == "bad input"), summary
