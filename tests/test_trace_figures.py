"""Trace figures: colors, labels, hover text, captions, partial results, averages, R curve, offline HTML."""

from __future__ import annotations

import math
import re

import plotly.graph_objects as go

from tracer.average import aggregate
from tracer.figures import (
    average_figure,
    figure_caption,
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
    assert preview.layout.title.text.startswith("Approximate preview")
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
    assert heatmap.colorbar.title.text == "logit(Paris) − logit(Rome)"
    assert "restored logit difference" in heatmap.hovertemplate and "probability" not in heatmap.hovertemplate
    caption = figure_caption(trace_heatmap(result, "mlp"))
    assert "replaced by 'Colosseum'" in caption and "logit difference" in caption and "noise" not in caption
    figures = trace_figures(result)
    assert set(figures) == {"hidden", "mlp", "attn", "heads"}
    heads = figures["heads"].data[0]
    assert list(heads.y) == ["head 0", "head 1", "head 2"] and len(heads.z[0]) == LAYERS and heads.z[1][2] is None
    assert heads.colorbar.title.text == "logit(Paris) − logit(Rome)" and "restored logit difference" in heads.hovertemplate
    assert "attention head" in figure_caption(figures["heads"]) and "at every word" in figure_caption(figures["heads"])
    assert "every token" in figures["heads"].layout.xaxis.title.text
    page = trace_html(result)
    assert "logit(Paris) − logit(Rome)" in page and "Colosseum" in page and "noise samples" not in page
    result.settings = TraceSettings(metric="logprob")
    assert trace_heatmap(result, "hidden").data[0].colorbar.title.text == "log p(Paris)"
    assert trace_heatmap(synthetic_result(), "hidden").data[0].colorbar.title.text == "p(Paris)"
