"""Trace figures: colors, labels, hover text, captions, partial results, averages, R curve, offline HTML."""

from __future__ import annotations

import math
import re

import plotly.graph_objects as go
import pytest

from tracer.average import aggregate
from tracer.figures import (
    add_caption_note,
    average_figure,
    difference_heatmap,
    figure_caption,
    format_score,
    recommendation_figure,
    token_labels,
    trace_figures,
    trace_heatmap,
    trace_html,
)
from tracer.problem import TraceResult, TraceSettings
from tracer.recommend import recommend_layers

LAYERS = 6


def synthetic_result(approximate: bool = False, missing: bool = False) -> TraceResult:
    tokens = ["The", " E", "iffel", " Tower", " is", " in"]
    scores = {kind: [[0.02 + 0.01 * token + 0.001 * layer for layer in range(LAYERS)] for token in range(len(tokens))] for kind in ("hidden", "mlp", "attn")}
    if missing:
        scores["mlp"][4] = [math.nan] * LAYERS
    return TraceResult(
        prompt="The Eiffel Tower is in", subject="Eiffel Tower", tokens=tokens, subject_range=(1, 4), answer=" Paris",
        answer_id=1, high=0.7, low=0.02, scores=scores, settings=TraceSettings(), noise_level=0.35, model="SmolLM2",
        num_layers=LAYERS, approximate=approximate,
    )


def test_heatmaps_use_the_paper_colors_and_mark_the_subject():
    result = synthetic_result()
    figures = trace_figures(result)
    assert set(figures) == {"hidden", "mlp", "attn"}
    expected = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
    for kind, figure in figures.items():
        heatmap = figure.data[0]
        assert isinstance(heatmap, go.Heatmap)
        reference = go.Heatmap(colorscale=expected[kind]).colorscale
        assert heatmap.colorscale == reference
        assert list(heatmap.y) == ["The", "E*", "iffel*", "Tower*", "is", "in"]
        assert "layer %{x}" in heatmap.hovertemplate and "restored probability" in heatmap.hovertemplate
        assert "indirect effect" in heatmap.hovertemplate and "token %{customdata[0]}" in heatmap.hovertemplate
        assert heatmap.customdata[2][3][0] == "iffel*"
        assert abs(heatmap.customdata[2][3][1] - (heatmap.z[2][3] - result.low)) < 1e-12
        assert "Each square is one word" in figure_caption(figure)
    assert "centre of 10 restored" in figures["mlp"].layout.xaxis.title.text


def test_partial_and_approximate_heatmaps():
    partial = trace_heatmap(synthetic_result(missing=True), "mlp")
    assert partial.data[0].z[4] == (None,) * LAYERS or list(partial.data[0].z[4]) == [None] * LAYERS
    preview = trace_heatmap(synthetic_result(approximate=True), "hidden")
    assert preview.layout.title.text.startswith("Preview: restoring")
    values = [v for row in preview.data[0].z for v in row]
    assert (preview.data[0].zmin, preview.data[0].zmax) == (min(values), max(values))  # its own colour range
    assert "estimated" in preview.data[0].hovertemplate and "Approximate preview" in figure_caption(preview)


def test_streaming_heatmap_shows_the_preview_on_its_own_scale():
    exact = synthetic_result(missing=True)
    estimate = synthetic_result(approximate=True)
    estimate.scores = {kind: [[5.0 + layer for layer in range(LAYERS)] for _ in exact.tokens] for kind in exact.scores}
    figure = trace_heatmap(exact, "mlp", preview=estimate)
    exact_layer, preview_layer = figure.data
    assert exact_layer.zmax <= exact.high + 1e-9  # the exact scale is not stretched by the estimates
    assert (preview_layer.zmin, preview_layer.zmax) == (5.0, 5.0 + LAYERS - 1)  # the preview's own range
    assert list(preview_layer.z[4]) == [5.0 + layer for layer in range(LAYERS)] and preview_layer.z[0][0] is None
    assert "preview" in figure.layout.title.text and len(figure.layout.title.text) <= 45
    assert len(trace_heatmap(exact, "mlp").data) == 1  # without a preview: the exact cells only


def test_token_labels_are_unique():
    assert token_labels(["a", "a", " ", "a"], (0, 1)) == ["a*", "a", "␣", "a\u200b"]


def test_average_and_recommendation_figures():
    records = []
    for known_id in range(3):
        scores = [[0.1 + 0.01 * known_id + (0.2 if layer == 2 else 0.0) for layer in range(LAYERS)] for _ in range(5)]
        records.append({"known_id": known_id, "subject_range": [1, 3], "low": 0.1, "high": 0.8, "scores": {"mlp": scores}})
    average = aggregate(records, "test", LAYERS, TraceSettings(kinds=("mlp",)))
    figure = average_figure(average, "mlp")
    names = [trace.name for trace in figure.data if trace.name]
    assert any(name.startswith("last subject token (n=3)") for name in names)
    assert any(trace.fill == "toself" for trace in figure.data)  # the 95% bands
    assert "95%" in figure_caption(figure)
    empty = average_figure(aggregate([], "test", LAYERS, TraceSettings(kinds=("mlp",))), "mlp")
    assert "no fact traced yet" in empty.layout.title.text and not empty.data
    recommendation = recommend_layers(average, width=2, flagged_layers={2: "outlier keys"})
    r_figure = recommendation_figure(recommendation)
    assert "Recommended R" in r_figure.layout.title.text and r_figure.layout.shapes
    assert "MEMIT" in figure_caption(r_figure)


def test_html_export_works_offline():
    result = synthetic_result()
    page = trace_html(result, recommend_layers(result, width=2))
    assert page.startswith("<!doctype html>") and page.count("Plotly.newPlot") == 4
    assert not re.search(r"<script[^>]+src=", page)  # no CDN: plotly.js is inside the file
    assert len(page) > 1_000_000 and "Each square is one word" in page and "Eiffel Tower" in page


def test_figures_name_the_metric_and_draw_heads():
    result = synthetic_result()
    result.settings = TraceSettings(kinds=("mlp", "heads"), metric="logit-diff", corruption="replace", head_positions="all")
    result.contrast, result.replacements = " Rome", ["Colosseum"]
    result.head_scores = [[0.1 * head + 0.01 * layer for layer in range(LAYERS)] for head in range(3)]
    result.head_scores[1][2] = math.nan  # not computed yet
    heatmap = trace_heatmap(result, "mlp").data[0]
    assert heatmap.colorbar.title.text.startswith("logit(Paris) − logit(Rome)<br>")
    assert "restored logit difference" in heatmap.hovertemplate and "probability" not in heatmap.hovertemplate
    caption = figure_caption(trace_heatmap(result, "mlp"))
    assert "replaced by 'Colosseum'" in caption and "logit difference" in caption and "noise" not in caption
    figures = trace_figures(result)
    assert set(figures) == {"hidden", "mlp", "attn", "heads"}
    heads = figures["heads"].data[0]
    assert list(heads.y) == ["head 0", "head 1", "head 2"] and len(heads.z[0]) == LAYERS and heads.z[1][2] is None
    assert heads.colorbar.title.text.startswith("logit(Paris) − logit(Rome)") and "restored logit difference" in heads.hovertemplate
    assert "attention head" in figure_caption(figures["heads"]) and "at every word" in figure_caption(figures["heads"])
    assert "every token" in figures["heads"].layout.xaxis.title.text
    page = trace_html(result)
    assert "logit(Paris) − logit(Rome)" in page and "Colosseum" in page and "noise samples" not in page
    result.settings = TraceSettings(metric="logprob")
    assert trace_heatmap(result, "hidden").data[0].colorbar.title.text.startswith("log p(Paris)<br>")
    assert trace_heatmap(synthetic_result(), "hidden").data[0].colorbar.title.text == "p(Paris)"


def test_units_follow_the_metric():
    """Probabilities in percent on the kind's scale; logit differences and log probabilities as plain numbers on a
    diverging scale centred on the corrupted run (white = no effect), everywhere: colour bar, hover, caption, page."""
    result = synthetic_result()
    heatmap = trace_heatmap(result, "mlp").data[0]
    assert heatmap.colorbar.tickformat == ".0%" and "%{z:.1%}" in heatmap.hovertemplate
    assert "%{customdata[1]:+.1%}" in heatmap.hovertemplate and "corrupted run: 2.0%" in heatmap.hovertemplate
    assert heatmap.zmid is None and "in percent" in figure_caption(trace_heatmap(result, "mlp"))
    assert format_score("prob", 0.7016) == "70.2%" and format_score("prob", -0.123, signed=True) == "−12.3 points"
    assert format_score("logit-diff", 4.841) == "+4.84" and format_score("logprob", -0.354) == "−0.35"
    assert format_score("logit-diff", math.nan) == "–"

    result.settings = TraceSettings(metric="logit-diff")
    result.contrast, result.high, result.low = " Rome", 4.8, -4.0
    result.scores["mlp"][2][3] = 3.0
    heatmap = trace_heatmap(result, "mlp").data[0]
    assert heatmap.zmid == -4.0 and heatmap.zmin == pytest.approx(-12.8) and heatmap.zmax == pytest.approx(4.8)
    assert heatmap.colorscale[2][1] == "#f7f7f7" and heatmap.colorscale[0][1] == "#2166ac"  # white at the baseline
    assert "%{z:+.2f}" in heatmap.hovertemplate and "%" not in heatmap.hovertemplate.replace("%{", "")
    assert "corrupted run: −4.00" in heatmap.hovertemplate and "white = corrupted run (−4.00)" in heatmap.colorbar.title.text
    caption = figure_caption(trace_heatmap(result, "mlp"))
    assert "in logits" in caption and "blue below" in caption
    page = trace_html(result)
    assert "Clean logit(Paris) − logit(Rome) = +4.80; with the subject corrupted = −4.00" in page

    before, after = synthetic_result(), synthetic_result()
    after.scores["mlp"][2][3] += 0.25
    difference = difference_heatmap(before, after, "mlp").data[0]
    assert "%{z:+.1%}" in difference.hovertemplate and difference.colorbar.tickformat == "+.0%"
    assert "percentage points" in figure_caption(difference_heatmap(before, after, "mlp"))
    noted = add_caption_note(trace_heatmap(before, "mlp"), "Computed on your edits: 1 batch.")
    assert figure_caption(noted).endswith("Computed on your edits: 1 batch.")


def test_csv_and_json_name_the_metric():
    result = synthetic_result()
    result.settings = TraceSettings(metric="logit-diff")
    result.contrast = " Rome"
    header, first = result.to_csv().splitlines()[:2]
    assert header.endswith(",metric,score") and first.endswith(",logit difference,logit(Paris) − logit(Rome)")
    data = result.to_dict()
    assert (data["metric"], data["metric_name"], data["score"]) == ("logit-diff", "logit difference", "logit(Paris) − logit(Rome)")
