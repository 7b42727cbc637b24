"""The tabs' handlers called directly, without a server: module-level functions of (context, typed inputs)."""

from __future__ import annotations

import gradio as gr
import pytest

from tracer.preview import preview_trace
from tracer.problem import TraceSettings
from ui.context import AppContext
from ui.models import ModelManager
from ui.runner import ModelRunner
from ui.session import SessionState
from ui.tabs import edit_tab, range_tab, test_tab, trace_tab

EIFFEL = "The Eiffel Tower is located in the city of"


def quiet(*args, **kwargs) -> None:
    """A progress display that shows nothing."""


@pytest.fixture(scope="module")
def context(embedded) -> AppContext:
    context = AppContext(manager=ModelManager(["embedded"], preloaded=embedded), runner=ModelRunner(name="handler-tests"))
    yield context
    assert context.runner.wait_idle(60)


def test_tokens_are_highlighted_as_typed(context):
    tokens, hint = trace_tab.show_tokens(context, EIFFEL, "Eiffel Tower", None)
    subject = [text for text, label in tokens if label == "subject"]
    assert "".join(subject).strip() == "Eiffel Tower" and "highlighted" in hint
    tokens, hint = trace_tab.show_tokens(context, EIFFEL, "Big Ben", None)
    assert all(label == "token" for _, label in tokens) and "Big Ben" in hint


def test_compare_shows_the_original_on_both_sides_without_edits(context):
    before, after, before_text, after_text, note, data, session = test_tab.run_compare(context, EIFFEL, 3, 4, None, quiet)
    assert next(iter(before)) == "Paris" and before == after and before_text == after_text
    assert "no edits yet" in note and data["edited"] is False and isinstance(session, SessionState)
    with pytest.raises(gr.Error, match="prompt is empty"):
        test_tab.run_compare(context, "  ", 3, 4, session, quiet)


def test_choosing_r_from_a_trace_and_moving_it(context, embedded):
    session = SessionState(model_spec="embedded")
    figure, chosen, layers, session = range_tab.redraw(context, "trace", 5, 6, 2, session)
    assert "Run a trace" in figure.layout.annotations[0].text and layers == "2-6" and session.layers == (2, 6)
    with pytest.raises(gr.Error, match="no trace yet"):
        range_tab.run_recommend(context, "trace", 5, session)
    session.trace = preview_trace(embedded, EIFFEL, "Eiffel Tower", TraceSettings(kinds=("mlp",)))
    figure, low, high, explanation, data, chosen, layers, session = range_tab.run_recommend(context, "trace", 4, session)
    assert high - low == 3 and layers == f"{low}-{high}" and data["layers"] == list(range(low, high + 1))
    assert "Recommended R" in figure.layout.title.text and session.layers == (low, high)


def test_edit_handlers_refuse_bad_input_and_leave_the_session_unchanged(context):
    session = SessionState(model_spec="embedded")
    rows = [["Eiffel Tower", "{} is located in the city of", "Rome", "Paris", "", ""]]
    with pytest.raises(gr.Error, match="not understood"):
        list(edit_tab.run_edit(context, rows, "memit", "two to six", None, None, 25, 0.5, 0.0625, 0.75, session=session, progress=quiet))
    with pytest.raises(gr.Error, match="no batch to undo"):
        edit_tab.run_undo(context, None, session)
    assert not session.has_edits()
    remaining, selected = edit_tab.remove_row(rows + [["Colosseum", "{} is in", "Paris", "", "", ""]], 0)
    assert remaining == [["Colosseum", "{} is in", "Paris", "", "", ""]] and selected is None


def test_a_filled_form_is_edited_when_the_table_is_empty(context):
    session = SessionState(model_spec="embedded")
    settings = ("memit", "two to six", None, None, 25, 0.5, 0.0625, 0.75)
    with pytest.raises(gr.Error, match="Nothing to edit"):
        list(edit_tab.run_edit(context, [], *settings, session=session, progress=quiet))
    form = ("Eiffel Tower", "{} is located in the city of", "Rome", "", "")
    with pytest.raises(gr.Error, match="not understood"):  # past the rows: the form's request was taken
        list(edit_tab.run_edit(context, [], *settings, *form, session=session, progress=quiet))


def test_a_visitors_edits_are_bounded_in_memory_before_any_work(context):
    """--max-session-edits-mb: a batch that would take the visitor's ledger past it is refused before a job is queued."""
    from editor.edits.ledger import batch_bytes_bound
    from ui.limits import Limits

    loaded = context.manager.current()
    one_edit = batch_bytes_bound(loaded.layout, (4,), 1)  # thin factors and keys, plus the cached matrix copy
    limited = AppContext(manager=context.manager, runner=context.runner,
                         limits=Limits(max_session_edit_bytes=one_edit + 1000))  # one edit fits, two do not
    session = SessionState(model_spec="embedded")
    rows = [["Eiffel Tower", "{} is located in the city of", "Rome", "Paris", "", ""]]
    settings = ("encore", "4", None, 2000, 2, 0.5, 0.0625, 0.75)  # the lifelong method through the UI
    before = context.runner.submitted
    with pytest.raises(gr.Error, match=r"would add up to .* MiB, past the limit of \d+ MiB per visitor"):
        list(edit_tab.run_edit(limited, rows * 2, *settings, session=session, progress=quiet))
    assert context.runner.submitted == before and not session.has_edits()
    list(edit_tab.run_edit(limited, rows, *settings, session=session, progress=quiet))  # one edit fits
    held = session.ledger().held_bytes()
    assert session.has_edits() and 0 < held <= one_edit
    with pytest.raises(gr.Error, match="Your edits hold .* MiB on this server"):  # a second one would not
        list(edit_tab.run_edit(limited, rows, *settings, session=session, progress=quiet))
    assert len(session.ledger()) == 1 and session.ledger().held_bytes() == held


def test_a_session_keeps_only_its_last_downloads_and_removes_them_when_it_ends():
    from ui.sessions import SessionStore

    store = SessionStore(max_sessions=1)
    key, session = store.restore(None, "embedded")
    assert store.restore(key, "embedded")[1] is session  # a reload finds the same session
    first = session.files_folder("trace")
    (first / "trace-a.html").write_text("x")
    second = session.files_folder("trace")
    assert second == first and not (second / "trace-a.html").exists()  # the new trace's files replace the last
    (second / "trace-b.html").write_text("y")
    scratch = session.scratch
    store.restore(None, "embedded")  # a second visitor: the first session is dropped (max_sessions=1)
    assert session.ended and not scratch.exists()
    assert store.restore(key, "embedded")[1] is not session  # its key no longer finds it


def embedded_heads(context) -> int:
    return context.manager.current().layout.num_heads


def test_preview_in_each_corruption_and_metric_with_heads(context):
    """The Trace tab's new settings reach the trace: a replaced subject, logit difference, the heads heatmap."""
    session = SessionState(model_spec="embedded")
    status, hidden, mlp, attn, data, *downloads, heads, session = trace_tab.run_preview(
        context, EIFFEL, "Eiffel Tower", "", ["mlp", "heads"], 2, "3x", 10, 1, "gaussian",
        "replace", "auto", "logit-diff", "last", session, quiet,
    )
    settings = data["settings"]
    assert settings["corruption"] == "replace" and settings["metric"] == "logit-diff" and "heads" in settings["kinds"]
    assert "replaced by" in status and "logit" in status
    assert heads.data[0].y[0] == "head 0" and len(heads.data[0].y) == embedded_heads(context)
    with pytest.raises(gr.Error, match="Corruption must be one of"):
        trace_tab.run_preview(context, EIFFEL, "Eiffel Tower", "", ["mlp"], 2, "3x", 10, 1, "gaussian",
                              "scramble", "auto", "prob", "last", session, quiet)
    with pytest.raises(gr.Error, match="Metric must be one of"):
        trace_tab.run_preview(context, EIFFEL, "Eiffel Tower", "", ["mlp"], 2, "3x", 10, 1, "gaussian",
                              "noise", "auto", "entropy", "last", session, quiet)
