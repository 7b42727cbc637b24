"""`python -m tracer trace|average`: plain errors for bad input, and a real trace written as JSON and HTML."""

from __future__ import annotations

import json

import pytest

from tracer.cli import main
from tracer.trace import TraceResult

EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["trace", "--prompt", "  ", "--subject", "Eiffel"], "prompt is empty"),
        (["trace", "--prompt", EIFFEL, "--subject", "Eifel Tower"], "does not occur"),
        (["trace", "--prompt", EIFFEL, "--subject", "Eiffel", "--samples", "0"], "Samples"),
        (["trace", "--prompt", EIFFEL, "--subject", "Eiffel", "--window", "0"], "window"),
        (["trace", "--prompt", EIFFEL, "--subject", "Eiffel", "--kinds", "mlp,neurons"], "Unknown kind"),
        (["trace", "--prompt", EIFFEL, "--subject", "Eiffel", "--noise", "loud"], "Noise"),
        (["average", "--n", "0"], "--n must be"),
        (["trace", "--prompt", EIFFEL, "--subject", "Eiffel", "--replacement", "Colosseum"], "only with the replace corruption"),
        (["trace", "--prompt", EIFFEL, "--subject", "Eiffel", "--counterfactual-answer", "Rome"], "only by the logit-diff"),
        (["average", "--kinds", "heads"], "not averaged"),
        (["average", "--corruption", "replace", "--replacement", "Colosseum"], "replacement auto"),
    ],
)
def test_bad_input_is_one_plain_line(arguments, message, capsys):
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and message in error[-1]
    assert not any("Traceback" in line for line in error)


def test_trace_command_writes_json_and_offline_html(tmp_path, capsys):
    out, page = tmp_path / "trace.json", tmp_path / "trace.html"
    code = main([
        "trace", "--prompt", EIFFEL, "--subject", "Eiffel Tower", "--kinds", "hidden", "--samples", "1",
        "--device", "cpu", "--out", str(out), "--html", str(page),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "' Paris'" in printed and "hidden: strongest restoration" in printed
    result = TraceResult.from_dict(json.loads(out.read_text()))
    assert result.answer.strip() == "Paris" and result.kinds == ("hidden",) and result.settings.samples == 1
    assert result.fraction_done() == 1.0
    text = page.read_text()
    assert "Plotly.newPlot" in text and "<script src=" not in text and "Eiffel Tower" in text


def test_trace_command_with_replacement_logit_difference_and_heads(tmp_path, capsys):
    out = tmp_path / "heads.json"
    code = main([
        "trace", "--prompt", EIFFEL, "--subject", "Eiffel Tower", "--kinds", "heads", "--corruption", "replace",
        "--replacement", "auto", "--metric", "logit-diff", "--device", "cpu", "--out", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "logit difference logit(Paris) − logit(" in printed and "heads: strongest single head" in printed
    data = json.loads(out.read_text())
    assert data["metric"] == "logit-diff" and data["corruption"] == "replace" and len(data["replacements"]) == 1
    result = TraceResult.from_dict(data)
    assert result.head_matrix().shape == (9, 30) and result.fraction_done() == 1.0 and result.contrast_id != result.answer_id
