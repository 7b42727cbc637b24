"""The tabs' handlers called directly, without a server: module-level functions of (context, typed inputs)."""

from __future__ import annotations

import copy
import types

import gradio as gr
import pytest

from core.errors import InputError
from editor.methods.registry import method_class
from tracer.figures import figure_caption
from tracer.preview import preview_trace
from tracer.problem import TraceResult, TraceSettings
from ui import tracing
from ui.context import AppContext
from ui.models import ModelManager
from ui.runner import ModelRunner
from ui.session import SessionState
from ui.tabs import averages_tab, edit_tab, model_tab, range_tab, test_tab, trace_tab
from ui.tabs.edit_tab import EditForm
from ui.tabs.range_tab import RangeForm, RecommendForm
from ui.tracing import TraceForm

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
    figure, chosen, layers, session = range_tab.redraw(context, RangeForm(source="trace", width=5, first=6, last=2), session)
    assert "Run a trace" in figure.layout.annotations[0].text and layers == "2-6" and session.layers == (2, 6)
    with pytest.raises(gr.Error, match="Last layer of R must be from 0 to 29, got 30"):  # past this model's layers
        range_tab.redraw(context, RangeForm(source="trace", width=5, first=2, last=30), session)
    with pytest.raises(InputError, match="Curve from must be one of packaged, trace, average"):
        RangeForm(source="elsewhere")
    with pytest.raises(gr.Error, match="no trace yet"):
        range_tab.run_recommend(context, RecommendForm(source="trace", width=5), session)
    session.trace = preview_trace(embedded, EIFFEL, "Eiffel Tower", TraceSettings(kinds=("mlp",)))
    figure, low, high, explanation, data, chosen, layers, session = range_tab.run_recommend(
        context, RecommendForm(source="trace", width=4), session)
    assert high - low == 3 and layers == f"{low}-{high}" and data["layers"] == list(range(low, high + 1))
    assert "Recommended R" in figure.layout.title.text and session.layers == (low, high)


def test_edit_handlers_refuse_bad_input_and_leave_the_session_unchanged(context):
    session = SessionState(model_spec="embedded")
    rows = [["Eiffel Tower", "{} is located in the city of", "Rome", "Paris", "", ""]]
    with pytest.raises(InputError, match="not understood"):
        EditForm(table=rows, method="memit", layers="two to six")
    with pytest.raises(InputError, match="Optimisation steps must be from 1 to 100"):
        EditForm(table=rows, steps=1000)
    with pytest.raises(InputError, match="Unknown editing method 'magic': choose memit, rome, alphaedit, encore"):
        EditForm(table=rows, method="magic")
    with pytest.raises(gr.Error, match="Layer 31 does not exist: the model has layers 0..29"):  # the model's depth
        list(edit_tab.run_edit(context, EditForm(table=rows, layers="28-31"), session, progress=quiet))
    with pytest.raises(gr.Error, match="no batch to undo"):
        edit_tab.run_undo(context, None, session)
    assert not session.has_edits()
    remaining, selected = edit_tab.remove_row(rows + [["Colosseum", "{} is in", "Paris", "", "", ""]], 0)
    assert remaining == [["Colosseum", "{} is in", "Paris", "", "", ""]] and selected is None


def test_a_filled_form_is_edited_when_the_table_is_empty(context):
    session = SessionState(model_spec="embedded")
    with pytest.raises(gr.Error, match="Nothing to edit"):
        list(edit_tab.run_edit(context, EditForm(table=[], layers="28-31"), session, progress=quiet))
    typed = dict(subject="Eiffel Tower", prompt="{} is located in the city of", target_new="Rome")
    with pytest.raises(gr.Error, match="Layer 31 does not exist"):  # past the rows: the typed request was taken
        list(edit_tab.run_edit(context, EditForm(table=[], layers="28-31", **typed), session, progress=quiet))


def test_each_method_has_its_own_settings_checked_before_any_job(context):
    """λ is MEMIT's and ENCORE's, not AlphaEdit's; a method's own settings are checked by its settings' check()."""
    session = SessionState(model_spec="embedded")
    rows = [["Eiffel Tower", "{} is located in the city of", "Rome", "Paris", "", ""]]
    own = {choice.name: [setting.name for setting in choice.settings] for choice in edit_tab.METHODS}
    assert own == {"memit": ["mom2_weight"], "rome": [], "alphaedit": ["nullspace_threshold", "l2"],
                   "encore": ["mom2_weight", "norm_lambda", "early_stop_steps"],
                   "nas": ["nullspace_threshold", "l2", "anchor_samples", "anchor_quantile", "anchor_seed", "skip_factor"],
                   "rlsedit": ["mom2_weight", "mu_reg", "lambda_reg"], "ultraedit": ["step_size", "ridge", "edits_per_pass"]}
    # a path on the server (NAS's anchor_records) is never a visitor's to set; declared bounds reach the page
    nas = next(choice for choice in edit_tab.METHODS if choice.name == "nas")
    assert dict((setting.name, setting.bounds) for setting in nas.settings)["anchor_samples"] == (1, 2000)
    with pytest.raises(InputError, match="AlphaEdit has no setting 'mom2_weight'"):
        EditForm(table=rows, method="alphaedit", method_settings={"alphaedit": {"mom2_weight": 1500}})
    form = EditForm(table=rows, method="alphaedit", method_settings={"alphaedit": {"l2": "5", "nullspace_threshold": None},
                                                                    "memit": {"mom2_weight": "not a number"}})
    assert form.method_settings == {"alphaedit": {"l2": 5.0}}  # only the chosen method's, empty = the default
    assert form.settings["l2"] == 5.0 and "mom2_weight" not in form.settings
    before = context.runner.submitted
    with pytest.raises(gr.Error, match="null-space threshold must be a finite number above 0"):
        list(edit_tab.run_edit(context, EditForm(table=rows, method="alphaedit", layers="4",
                                                 method_settings={"alphaedit": {"nullspace_threshold": 0}}), session, progress=quiet))
    assert context.runner.submitted == before and not session.has_edits()
    loaded = context.manager.current()
    shown = edit_tab.fit_method_settings(context, session)  # the family's defaults, in the order of the inputs
    expected = [getattr(method_class(choice.name).for_model(loaded.layout).settings, setting.name)
                for choice in edit_tab.METHODS for setting in choice.settings]
    assert list(shown) == expected and shown[0] == 1500.0  # MEMIT's λ for the llama family
    rows_shown = edit_tab.show_method_settings("alphaedit")
    assert [row.visible for row in rows_shown] == [choice.name == "alphaedit" for choice in edit_tab.METHODS]


def test_a_newly_registered_method_gets_inputs_for_its_own_settings(context, monkeypatch):
    """A method added to the registry appears on the Edit tab with its settings, with no change to ui/."""
    import sys
    from dataclasses import dataclass
    from types import ModuleType

    from editor.methods import registry
    from editor.methods.memit import Memit, MemitSettings
    from ui import editing

    @dataclass(frozen=True)
    class ToySettings(MemitSettings):
        toy_strength: float = 0.25
        toy_rounds: int = 3
        toy_mode: str = "gentle"

    class Toy(Memit):
        name, title, label, Settings = "toy", "Toy", "Toy (a test method)", ToySettings

    module = ModuleType("toy_method_for_tests")
    module.Toy = Toy
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.METHODS, "toy", f"{module.__name__}:Toy")
    monkeypatch.setattr(registry, "METHOD_NAMES", tuple(registry.METHODS))
    toy = next(choice for choice in editing.method_choices() if choice.name == "toy")
    assert [(s.name, s.kind, s.default) for s in toy.settings] == [
        ("mom2_weight", float, 15000.0), ("toy_strength", float, 0.25), ("toy_rounds", int, 3), ("toy_mode", str, "gentle")]
    assert editing.checked_method_settings("toy", {"toy_rounds": 5.0, "toy_mode": "bold"}) == {"toy_rounds": 5, "toy_mode": "bold"}
    with pytest.raises(InputError, match="toy_rounds must be a whole number"):
        editing.checked_method_settings("toy", {"toy_rounds": 2.5})

    assert EditForm(method="toy", method_settings={"toy": {"toy_strength": 0.5}}).settings["toy_strength"] == 0.5

    # The page built now has its inputs (shown only while it is chosen), and /edit takes them by name.
    from ui.app import build_app
    from ui.sessions import SessionStore

    monkeypatch.setattr(edit_tab, "METHODS", editing.method_choices())
    monkeypatch.setattr(edit_tab, "METHOD_CHOICES", [(choice.label, choice.name) for choice in edit_tab.METHODS])
    sessions = SessionStore()
    demo = build_app(context.manager, context.runner, sessions=sessions)
    sessions.close()
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert by_id["edit-toy-toy-rounds"].precision == 0 and by_id["edit-toy-toy-mode"].value is None
    assert not by_id["edit-settings-toy"].visible and by_id["edit-settings-memit"].visible
    edit_fn = next(fn for fn in demo.fns.values() if fn.api_name == "edit")
    assert edit_fn.input_parameter_names[-5:] == ["toy_mom2_weight", "toy_toy_strength", "toy_toy_rounds", "toy_toy_mode", "session"]


def embedded_heads(context) -> int:
    return context.manager.current().layout.num_heads


def test_preview_in_each_corruption_and_metric_with_heads(context):
    """The Trace tab's new settings reach the trace: a replaced subject, logit difference, the heads heatmap."""
    session = SessionState(model_spec="embedded")
    form = TraceForm(prompt=EIFFEL, subject="Eiffel Tower", kinds=["mlp", "heads"], samples=2, corruption="replace",
                     metric="logit-diff")
    status, hidden, mlp, attn, data, *downloads, heads, stale, refresh, shown, session = trace_tab.run_preview(
        context, form, None, session, quiet
    )
    settings = data["settings"]
    assert settings["corruption"] == "replace" and settings["metric"] == "logit-diff" and "heads" in settings["kinds"]
    assert "replaced by" in status and "logit" in status and "computed on **original weights**" in status
    assert "Auto chose" in status and "same relation" in status  # which subject replaced it, and why
    assert data["model_state"] == "original weights" and shown.stage == "preview" and shown.form == form
    assert heads.data[0].y[0] == "head 0" and len(heads.data[0].y) == embedded_heads(context)
    assert figure_caption(mlp).endswith("Computed on original weights.")
    with pytest.raises(InputError, match="Corruption must be one of"):
        TraceForm(prompt=EIFFEL, subject="Eiffel Tower", corruption="scramble")
    with pytest.raises(InputError, match="Metric must be one of"):
        TraceForm(prompt=EIFFEL, subject="Eiffel Tower", metric="entropy")
    with pytest.raises(gr.Error, match="does not occur in the prompt"):
        trace_tab.run_preview(context, TraceForm(prompt=EIFFEL, subject="Big Ben"), None, session, quiet)
    with pytest.raises(gr.Error, match="Window must be from 1 to 30"):
        trace_tab.run_preview(context, TraceForm(prompt=EIFFEL, subject="Eiffel Tower", window=31), None, session, quiet)


def test_the_prediction_and_the_heatmaps_say_their_model_state(context):
    """Every output names the weights it was computed on; after a change the heatmaps are marked, and the prediction
    line says at once that it is computed again (never the old answer as current)."""
    session = SessionState(model_spec="embedded")
    *_, (text, session) = trace_tab.show_prediction(context, EIFFEL, "", session)
    assert text.startswith("Model's top prediction (original weights): **Paris**")
    *_, shown, session = trace_tab.run_preview(context, TraceForm(prompt=EIFFEL, subject="Eiffel Tower", kinds=["mlp"]),
                                               None, session, quiet)
    note, button = trace_tab.mark_stale(context, shown, session)
    assert not note.visible and not button.visible
    session.ledgers["embedded"] = types.SimpleNamespace(batches=[types.SimpleNamespace(batch_id="b1")])  # an edit
    assert tracing.model_state(session).label == "your edits: 1 batch"
    note, button = trace_tab.mark_stale(context, shown, session)
    assert note.visible and button.visible
    assert "computed on **original weights**, before your last change" in note.value and "**your edits: 1 batch**" in note.value
    pending = next(trace_tab.refresh_prediction(context, EIFFEL, "", session))[0]
    assert "your edits: 1 batch" in pending and "computing" in pending and "Paris" not in pending
    session.ledgers.clear()  # undone: the heatmaps are current again
    assert not trace_tab.mark_stale(context, shown, session)[0].visible


def test_a_link_carries_the_trace_settings_and_never_edits():
    form = TraceForm(prompt=EIFFEL, subject="Eiffel Tower", kinds=["mlp"], samples=3, metric="logit-diff", head_positions="all")
    query = tracing.query_of(form)
    assert "prompt=The+Eiffel" in query and "metric=logit-diff" in query and "heads=all" in query and "kinds=mlp" in query
    assert "noise=" not in query and "edit" not in query  # defaults are left out; no ledger, ever
    again, problems = tracing.form_of_query("?" + query + "&__theme=dark")
    assert again == form and not problems and again.advanced_changed()
    values = trace_tab.open_link("?" + query)
    assert values[0] == EIFFEL and values[3] == ["mlp"] and values[4] == 3 and values[-2].open is True
    assert "press **Trace**" in values[-1]
    _, problems = tracing.form_of_query("prompt=Hi&samples=500&metric=entropy")
    assert any("samples" in problem for problem in problems) and any("metric" in problem for problem in problems)
    assert not any(isinstance(value, str) for value in trace_tab.open_link("?__theme=dark"))  # not a trace link: nothing set


def test_the_retrace_summary_and_stop_status_use_the_metrics_units():
    tokens = ["The", " E", "iffel", " Tower", " is", " in"]
    result = TraceResult(
        prompt="The Eiffel Tower is in", subject="Eiffel Tower", tokens=tokens, subject_range=(1, 4), answer=" Paris",
        answer_id=1, high=4.841, low=-4.0, scores={"mlp": [[0.0] * 3 for _ in tokens]},
        settings=TraceSettings(kinds=("mlp",), metric="logit-diff"), noise_level=0.0, model="m", num_layers=3, contrast=" Rome",
    )
    after = copy.deepcopy(result)
    after.high = -4.883
    state = tracing.ModelState("embedded", ("b1",))
    summary = tracing.retrace_summary(result, after, state)
    assert "logit difference logit(Paris) − logit(Rome) +4.84 before, −4.88 after your edits" in summary
    assert "%" not in summary and "your edits: 1 batch" in summary
    status = tracing.status_markdown(result, stage="done", state=state)
    assert "clean run **+4.84**" in status and "**−4.00**" in status and "noise (10 samples)" in status
    result.settings = TraceSettings(kinds=("mlp",), corruption="replace")
    result.replacements, result.corruption_note = ["Royal National Theatre"], "auto chose 'Royal National Theatre', of the same relation"
    status = tracing.status_markdown(result, stage="done", state=state)
    assert "replaced by 'Royal National Theatre'" in status and "noise" not in status and "Auto chose" in status
    shown = tracing.Shown(form=None, result=result, stage="trace", state=tracing.ModelState("embedded"))
    assert "**Stopped.**" in tracing.stopped_markdown(shown, None, None)
    assert "last complete trace (computed on **original weights**)" in tracing.stopped_markdown(shown, None, None)


def test_forms_check_the_values_of_the_averages_and_model_tabs(context):
    from ui.tabs.averages_tab import AverageForm
    from ui.tabs.model_tab import ModelForm

    assert AverageForm(count=2.0, kinds="mlp", samples=1) == AverageForm(count=2, kinds=("mlp",), samples=1)
    with pytest.raises(InputError, match="Facts to average must be from 2 to"):
        AverageForm(count=10**6)
    with pytest.raises(InputError, match="What to restore must be one of hidden, mlp, attn"):
        AverageForm(kinds=["mlp", "everything"])
    with pytest.raises(gr.Error, match="Choose at least one kind"):
        next(averages_tab.run_average(context, AverageForm(kinds=[]), None, quiet))
    with pytest.raises(gr.Error, match="not one this app serves"):
        model_tab.switch_model(context, ModelForm(model="gpt2-xl"), None, quiet)
    with pytest.raises(InputError, match="The model is empty"):
        ModelForm(model=" ")


def test_bind_names_the_event_parameters_after_the_form_and_reports_bad_values_plainly(context):
    """The event function the page calls: the form's values in field order (named after them), then the session."""
    import inspect
    from dataclasses import dataclass

    from ui import forms

    @dataclass(frozen=True)
    class PairForm(forms.Form):
        count: int = forms.whole("Count", (1, 5), 1)
        extra: dict = forms.raw({})

    seen = []

    def handler(ctx, form: PairForm, session, progress=gr.Progress()):
        seen.append((form, session))
        return form.count

    page = AppContext(manager=context.manager, runner=context.runner)
    with gr.Blocks():
        count, first, second = gr.Number(), gr.Number(), gr.Number()
        page.session = gr.State(None)
        event, inputs = forms.bind(page, handler, PairForm, dict(count=count, extra={"a": {"b": first}, "c": second}))
    assert inputs == [count, first, second, page.session]
    assert list(inspect.signature(event).parameters) == ["count", "a_b", "c", "session", "progress"]
    assert event(3.0, 7, 8, "the session", quiet) == 3
    assert seen[-1] == (PairForm(count=3, extra={"a": {"b": 7}, "c": 8}), "the session")
    with pytest.raises(gr.Error, match="Count must be from 1 to 5, got 9"):
        event(9, None, None, None, quiet)
    with pytest.raises(TypeError, match="PairForm's fields are count, extra"):
        forms.bind(page, handler, PairForm, dict(count=count))


def test_cold_start_says_one_thing_while_the_model_loads():
    """The only visitor, at start-up: one loading line counting seconds, never a queue or another visitor's job."""
    context = AppContext(manager=ModelManager(["embedded"]), runner=ModelRunner(name="cold-start"))
    try:
        lines = [line for _, line, _ in model_tab.show_model(context, None) if isinstance(line, str)]
    finally:
        assert context.runner.wait_idle(120)
    assert lines[0].startswith("Loading model **embedded**… 0 s so far")
    assert all(line.startswith("Loading model") for line in lines[:-1])
    assert lines[-1].startswith("Model: ") and "original weights" in lines[-1]
    assert not any(word in line for line in lines for word in ("Waiting", "visitor", "in line"))


def test_an_output_computed_before_a_change_of_the_edits_says_so():
    from ui import model_state
    from ui.editing import bump_ledger_version

    session = SessionState(model_spec="embedded")
    assert model_state.note_html(session, "test-health", "Measure model health") == ""  # nothing computed yet
    model_state.record(session, "test-health")
    current = model_state.note_html(session, "test-health", "Measure model health")
    assert "original weights" in current and "before your last change" not in current
    assert not model_state.is_stale(session, "test-health")
    bump_ledger_version(session)  # an edit, undo, reset or import
    stale = model_state.note_html(session, "test-health", "Measure model health")
    assert model_state.is_stale(session, "test-health")
    assert "Computed before your last change" in stale and "Measure model health" in stale
    model_state.record_original(session, "averages")  # averages never use the edits: never stale
    bump_ledger_version(session)
    assert not model_state.is_stale(session, "averages")
    assert "original weights" in model_state.note_html(session, "averages", "Compute averages")
