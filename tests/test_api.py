"""The public API (`import locus`) and the `locus` command, used as a notebook or a script would use them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy
import plotly.graph_objects as go
import pytest
import torch

import locus
from editor.edits.ledger import EditLedger
from editor.edits.weights import add_delta, projection_weight
from editor.methods.registry import method_for
from locus import cli
from tests.conftest import weights_fingerprint
from tests.test_editor_support import TEST_TOKENS
from tests.tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
EIFFEL = "The Eiffel Tower is located in the city of"
ROME = locus.EditRequest("Eiffel Tower", "{} is located in the city of", "Rome")
FAST = dict(cov_tokens=TEST_TOKENS, steps=8, progress=False)  # a small C and few target steps (Rome still wins)


def test_trace_predict_edit_and_undo_on_the_embedded_model(embedded, tmp_path):
    """The quickstart on the real model: Paris, a heatmap, Rome inside the edit, Paris and the same bits after."""
    assert locus.predict(embedded, EIFFEL).top == "Paris"
    trace = locus.trace(embedded, EIFFEL, "Eiffel Tower", kinds=["mlp"], samples=3, progress=False)
    assert trace.answer == "Paris" and trace.high > trace.low
    figure = trace.figure("mlp")
    assert isinstance(figure, go.Figure) and figure.data[0].type == "heatmap"
    numpy.testing.assert_array_equal(numpy.asarray(figure.data[0].z, dtype=float), numpy.asarray(trace.scores["mlp"]))

    original = weights_fingerprint(embedded.model)
    with locus.edit(embedded, [ROME], **FAST) as rome:
        assert rome.applied
        assert locus.predict(embedded, EIFFEL).top == "Rome"
        edited = weights_fingerprint(embedded.model)
        assert edited != original
        with pytest.raises(locus.LocusError, match="does not occur"):  # a bad request changes nothing
            locus.edit(embedded, [locus.EditRequest("Big Ben", "The Eiffel Tower is in", "Rome")], **FAST)
        assert weights_fingerprint(embedded.model) == edited
        saved = EditLedger.load(rome.save(tmp_path / "rome.safetensors"), embedded)
        assert [batch.batch_id for batch in saved] == [rome.batch.batch_id]
        assert [request.target_new for request in saved.requests] == ["Rome"]
    assert not rome.applied
    assert locus.predict(embedded, EIFFEL).top == "Paris"
    assert weights_fingerprint(embedded.model) == original


@pytest.fixture(scope="module")
def own_model(tokenizer):
    """A tiny random Llama and the embedded tokenizer, loaded as a user loads their own objects."""
    return locus.load(tiny_model("llama"), tokenizer)


def edit_tiny(lm, subject: str, target: str) -> locus.Edit:
    return locus.edit(lm, [locus.EditRequest(subject, "{} is located in the city of", target)], cov_tokens=500, steps=3,
                      progress=False)


def test_your_own_model_and_tokenizer_predict_trace_edit_and_undo(own_model):
    prediction = locus.predict(own_model, EIFFEL, top=3)
    assert len(prediction.tokens) == 3 and prediction.top in str(prediction)
    trace = locus.trace(own_model, EIFFEL, "Eiffel Tower", kinds="mlp", samples=2, progress=False)
    assert list(trace.scores) == ["mlp"] and {len(row) for row in trace.scores["mlp"]} == {3}
    assert numpy.isfinite(numpy.asarray(trace.scores["mlp"])).all()

    original = weights_fingerprint(own_model.model)
    edit = edit_tiny(own_model, "Eiffel Tower", "Rome")
    assert edit.batch.layers and weights_fingerprint(own_model.model) != original
    edit.undo()
    assert weights_fingerprint(own_model.model) == original
    edit.undo()  # a second undo does nothing
    assert weights_fingerprint(own_model.model) == original


def test_undoing_the_first_of_two_edits_keeps_the_second(own_model, tmp_path):
    layers = list(method_for(own_model.layout, "memit").layers)
    originals = {layer: projection_weight(own_model, layer).clone() for layer in layers}
    first = edit_tiny(own_model, "Eiffel Tower", "Rome")
    second = edit_tiny(own_model, "Big Ben", "Paris")
    try:
        assert [b.batch_id for b in EditLedger.load(first.save(tmp_path / "one.safetensors"))] == [first.batch.batch_id]
        both = EditLedger.load(second.save(tmp_path / "two.safetensors"))
        assert [b.batch_id for b in both] == [first.batch.batch_id, second.batch.batch_id]

        first.undo()
        assert not first.applied and second.applied
        for layer in layers:  # exactly the originals plus the second batch's delta
            expected = originals[layer].clone()
            add_delta(expected, second.batch.deltas[layer])
            assert torch.equal(projection_weight(own_model, layer), expected), layer
        with pytest.raises(locus.LocusError, match="undone"):
            first.save(tmp_path / "gone.safetensors")
        kept = EditLedger.load(second.save(tmp_path / "kept.safetensors"))
        assert [b.batch_id for b in kept] == [second.batch.batch_id]
    finally:
        first.undo()
        second.undo()
    for layer in layers:
        assert torch.equal(projection_weight(own_model, layer), originals[layer])


def test_a_failing_edit_leaves_the_weights_and_earlier_edits(own_model):
    with edit_tiny(own_model, "Eiffel Tower", "Rome") as earlier:
        edited = weights_fingerprint(own_model.model)
        for bad in ([], [locus.EditRequest("Eiffel Tower", "{} is in {}", "Rome")], [locus.EditRequest("", "{} is", "Rome")]):
            with pytest.raises(locus.LocusError):
                locus.edit(own_model, bad, cov_tokens=500, steps=3, progress=False)
            assert weights_fingerprint(own_model.model) == edited
        assert earlier.applied


def test_errors_are_locus_errors_with_plain_messages(own_model):
    def message(call, *args, **kwargs) -> str:
        with pytest.raises(locus.LocusError) as raised:
            call(*args, **kwargs)
        text = str(raised.value)
        assert "Traceback" not in text and "\n" not in text
        return text

    assert message(locus.edit, own_model, [ROME], method="magic") == (
        "Unknown editing method 'magic': choose memit, rome, alphaedit, encore, nas, rlsedit, ultraedit.")
    assert "'Big Ben' does not occur in the prompt" in message(locus.trace, own_model, EIFFEL, "Big Ben", progress=False)
    assert message(locus.load, tiny_model("llama")) == "A model object needs its tokenizer: locus.load(model, tokenizer)."
    assert "top must be a whole number" in message(locus.predict, own_model, EIFFEL, top=0)
    assert "has no setting 'lambda'" in message(locus.edit, own_model, [ROME], **{"lambda": 3})
    assert issubclass(locus.InputError, locus.LocusError) and issubclass(locus.InputError, ValueError)


def test_model_objects_get_cache_keys_of_their_own(tokenizer):
    """Two different models loaded as objects never share covariance or noise caches; the same weights do."""
    first, again, other = (locus.load(tiny_model("llama", seed), tokenizer) for seed in (0, 0, 1))
    assert first.spec == again.spec != other.spec


def test_the_public_names_are_all_there():
    assert sorted(dir(locus)) == sorted(locus.__all__)
    assert all(callable(getattr(locus, name)) or name == "METHOD_NAMES" for name in locus.__all__)
    assert locus.methods() == locus.METHOD_NAMES == ("memit", "rome", "alphaedit", "encore", "nas", "rlsedit", "ultraedit")
    with pytest.raises(AttributeError):
        locus.not_a_name  # noqa: B018


def run_locus(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_locus_help_lists_the_subcommands_without_importing_torch():
    finished = run_locus("-X", "importtime", "-m", "locus", "--help")
    assert finished.returncode == 0, finished.stderr[-2000:]
    listed = {line.split()[0] for line in finished.stdout.splitlines() if line.startswith("  ")}
    assert {"app", "trace", "average", "predict", "edit", "evaluate", "sweep", "methods"} <= listed
    imported = {line.rsplit("|", 1)[-1].strip() for line in finished.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in imported and not imported & {"torch", "transformers", "gradio", "plotly"}


def test_locus_methods_lists_every_method():
    finished = run_locus("-m", "locus", "methods")
    assert finished.returncode == 0, finished.stderr[-2000:]
    names = [line.split(":")[0] for line in finished.stdout.splitlines() if not line.startswith(" ") and ":" in line]
    assert names[:-1] == ["memit", "rome", "alphaedit", "encore", "nas", "rlsedit", "ultraedit"]  # then the shared settings


def test_locus_app_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    assert cli.main(["app", "--port", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {cli.NO_GRADIO}"
    with pytest.raises(SystemExit) as stopped:  # its --help needs no Gradio
        cli.main(["app", "--help"])
    assert stopped.value.code == 0 and "--port" in capsys.readouterr().out


def test_docs_api_names_every_public_name_and_subcommand():
    page = (ROOT / "docs" / "API.md").read_text()
    headings = {line.removeprefix("### ").strip("`") for line in page.splitlines() if line.startswith("### ")}
    assert headings == set(locus.__all__)
    documented = {line.split("`")[1].removeprefix("locus ") for line in page.splitlines() if line.startswith("| `locus ")}
    assert documented - {"..."} == set(cli.commands())  # (the header row is `locus ...`)
