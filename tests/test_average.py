"""Averaged traces: the statistics, token classes, and a resumable cache on the real model."""

from __future__ import annotations

import json
import math

import numpy
import pytest

from core.errors import InputError
from core.facts import facts_model_knows
from tracer.average import (
    AverageResult,
    aggregate,
    average_cache_path,
    average_traces,
    average_traces_stream,
    mean_and_half_width,
    read_records,
)
from tracer.trace import TraceSettings


def record(known_id: int, length: int, subject_range, low: float, high: float, rows: dict[int, list[float]], layers: int = 3) -> dict:
    scores = [[low] * layers for _ in range(length)]
    for token, values in rows.items():
        scores[token] = values
    return {"known_id": known_id, "subject_range": list(subject_range), "low": low, "high": high, "scores": {"mlp": scores}}


def test_mean_and_interval_are_the_spec_formula():
    samples = numpy.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    mean, half = mean_and_half_width(samples)
    numpy.testing.assert_allclose(mean, [3.0, 6.0])
    numpy.testing.assert_allclose(half, 1.96 * samples.std(axis=0, ddof=1) / math.sqrt(3))
    one_mean, one_half = mean_and_half_width(samples[:1])
    numpy.testing.assert_allclose(one_half, [0.0, 0.0])
    empty_mean, _ = mean_and_half_width(numpy.zeros((0, 2)))
    assert numpy.isnan(empty_mean).all()


def test_aggregate_groups_tokens_by_class():
    settings = TraceSettings(kinds=("mlp",))
    records = [
        # 6 tokens, subject [1, 4): middle token 2, first after 4, last 5
        record(1, 6, (1, 4), low=0.1, high=0.9, rows={3: [0.5, 0.7, 0.1], 2: [0.2, 0.2, 0.2]}),
        # 4 tokens, subject [0, 2): no middle token, first after 2, last 3
        record(2, 4, (0, 2), low=0.2, high=0.6, rows={1: [0.3, 0.2, 0.2], 3: [0.2, 0.2, 0.6]}),
    ]
    result = aggregate(records, "model", 3, settings, requested=2)
    last_subject = result.effects["mlp"]["last subject token"]
    assert last_subject.count == 2
    numpy.testing.assert_allclose(last_subject.mean, [(0.4 + 0.1) / 2, (0.6 + 0.0) / 2, 0.0], atol=1e-12)
    middle = result.effects["mlp"]["middle subject tokens"]
    assert middle.count == 1 and middle.mean == pytest.approx([0.1, 0.1, 0.1])
    assert result.effects["mlp"]["last token"].mean == pytest.approx([0.0, 0.0, 0.2])
    assert result.effects["mlp"]["further tokens"].count == 0  # only record 1 has one (token 5 is the last)
    assert result.total_effect == pytest.approx(0.6)
    assert result.total_effect_half_width == pytest.approx(1.96 * numpy.std([0.8, 0.4], ddof=1) / math.sqrt(2))
    assert result.best("mlp") == ("last subject token", 1, pytest.approx(0.3))
    again = AverageResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_dict() == json.loads(json.dumps(result.to_dict()))


def test_average_is_resumable_and_cached(embedded, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    facts = facts_model_knows(embedded)
    assert len(facts) == 279
    settings = TraceSettings(kinds=("hidden",), samples=1)
    first = average_traces(embedded, 1, settings)
    path = average_cache_path(embedded, settings)
    assert first.n_facts == 1 and len(read_records(path)) == 1
    messages = []
    second = average_traces(embedded, 2, settings, progress=lambda fraction, message: messages.append((fraction, message)))
    assert messages[0] == (0.5, "1 of 2 facts already in the cache")  # the first fact is not traced again
    assert messages[-1][0] == 1.0 and second.n_facts == 2 and len(path.read_text().splitlines()) == 2
    assert second.known_ids == [facts[0].known_id, facts[1].known_id]
    updates = list(average_traces_stream(embedded, 2, settings))
    assert len(updates) == 2 and updates[0].message == "2 of 2 facts already in the cache"
    fractions = [fraction for fraction, _ in messages]
    assert fractions == sorted(fractions) and any(0.5 < fraction < 1.0 for fraction in fractions)  # progress inside a fact
    assert updates[-1].result.to_dict()["effects"] == second.to_dict()["effects"]
    assert 0.0 < second.total_effect <= 1.0
    token_class, layer, value = second.best("hidden")
    assert value > 0 and 0 <= layer < embedded.layout.num_layers


def test_average_rejects_bad_counts(embedded):
    with pytest.raises(InputError):
        average_traces(embedded, 0, TraceSettings(kinds=("hidden",), samples=1))


def test_packaged_averages_serve_the_embedded_model(embedded):
    """assets/ holds MLP traces of the first known facts under the default settings' key; they are read as a cache."""
    from tracer.average import cached_records, packaged_average, packaged_average_path
    from tracer.recommend import packaged_recommendation

    settings = TraceSettings(kinds=("mlp",))
    path = packaged_average_path(embedded, settings)
    assert path is not None and path.is_file(), "the packaged averages' file name follows the settings key"
    lines = path.read_text().splitlines()
    average = packaged_average(embedded)
    assert average.n_facts == len(lines) >= 20 and average.settings.kinds == ("mlp",)
    known = [fact.known_id for fact in facts_model_knows(embedded)]
    assert average.known_ids == known[: len(lines)]  # the first known facts, in order
    assert set(average.known_ids) <= set(cached_records(embedded, settings))
    recommendation = packaged_recommendation(embedded, width=5)
    assert recommendation.source == "average" and len(recommendation.layers) == 5


def test_settings_that_cannot_be_averaged_are_refused(embedded):
    from tracer.average import check_average_settings

    for settings, message in (
        (TraceSettings(kinds=("heads",)), "not averaged"),
        (TraceSettings(kinds=("mlp",), corruption="replace", replacement="Colosseum"), "replacement auto"),
        (TraceSettings(kinds=("mlp",), metric="logit-diff", counterfactual_answer="Rome"), "leave the counterfactual"),
    ):
        with pytest.raises(InputError, match=message):
            check_average_settings(settings)
    check_average_settings(TraceSettings(kinds=("mlp",), corruption="replace", metric="logit-diff"))
