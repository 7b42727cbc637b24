"""The R recommendation (SPEC section 2) from a trace and from averages."""

from __future__ import annotations

import math

import numpy
import pytest

from core.errors import InputError
from tracer.average import aggregate
from tracer.recommend import LayerRecommendation, best_window, flag_outliers, recommend_layers, window_sums
from tracer.trace import TraceResult, TraceSettings

LAYERS = 12


def synthetic_trace(mlp_last_subject: list[float], other_peak: tuple[int, int] | None = None) -> TraceResult:
    """A 5-token trace (subject = tokens 1..2) whose MLP row at the last subject token is `mlp_last_subject` + low."""
    low = 0.05
    scores = [[low] * LAYERS for _ in range(5)]
    scores[2] = [low + value for value in mlp_last_subject]
    if other_peak is not None:
        scores[other_peak[0]][other_peak[1]] = 0.95
    return TraceResult(
        prompt="a b c d e", subject="b c", tokens=["a", " b", " c", " d", " e"], subject_range=(1, 3), answer=" x", answer_id=7,
        high=0.9, low=low, scores={"mlp": scores}, settings=TraceSettings(kinds=("mlp",)), noise_level=0.3, model="test",
        num_layers=LAYERS,
    )


def test_window_sums_and_best_window():
    curve = numpy.array([0.0, 1.0, 3.0, 2.0, 0.0, 5.0])
    numpy.testing.assert_allclose(window_sums(curve, 2), [1.0, 4.0, 5.0, 2.0, 5.0])
    assert best_window(curve, 2) == (2, 5.0)  # earliest of the ties
    assert best_window(curve, 1) == (5, 5.0)
    assert best_window(curve, 6) == (0, 11.0)


def test_recommendation_from_a_trace_picks_the_largest_window():
    curve = [0.0, 0.01, 0.02, 0.2, 0.3, 0.25, 0.1, 0.0, 0.0, 0.4, 0.0, 0.0]
    recommendation = recommend_layers(synthetic_trace(curve), width=3)
    assert recommendation.layers == [3, 4, 5] and recommendation.start == 3
    assert recommendation.score == pytest.approx(0.75)
    assert recommendation.curve == pytest.approx(curve)
    assert recommendation.interval is None and recommendation.source == "trace"
    assert len(recommendation.window_sums) == LAYERS - 2
    assert "layers 3-5" in recommendation.explanation
    single = recommend_layers(synthetic_trace(curve), width=1)
    assert single.layers == [9]
    again = LayerRecommendation.from_dict(recommendation.to_dict())
    assert again == recommendation


def test_recommendation_says_when_the_strongest_cell_is_elsewhere_and_flags_layers():
    curve = [0.1] * LAYERS
    curve[6] = 0.5
    recommendation = recommend_layers(synthetic_trace(curve, other_peak=(1, 2)), width=5, flagged_layers={5: "outlier keys"})
    assert 6 in recommendation.layers and 5 in recommendation.layers
    assert "not at the last subject token" in recommendation.explanation
    assert recommendation.warnings == ["Layer 5 is in R: outlier keys"]
    assert "Warning" in recommendation.explanation


def test_recommendation_from_averages_has_an_interval():
    records = []
    for known_id, shift in enumerate((0.0, 0.02, -0.01)):
        scores = [[0.1] * LAYERS for _ in range(4)]
        scores[1] = [0.1 + shift + (0.3 if 6 <= layer <= 8 else 0.0) for layer in range(LAYERS)]
        records.append({"known_id": known_id, "subject_range": [0, 2], "low": 0.1, "high": 0.8, "scores": {"mlp": scores}})
    average = aggregate(records, "test", LAYERS, TraceSettings(kinds=("mlp",)))
    recommendation = recommend_layers(average, width=3)
    assert recommendation.layers == [6, 7, 8] and recommendation.source == "average"
    lower, upper = recommendation.interval
    assert all(low < value < high for low, value, high in zip(lower, recommendation.curve, upper))


def test_bad_requests_are_plain_errors():
    trace = synthetic_trace([0.1] * LAYERS)
    for width in (0, LAYERS + 1, 2.5):
        with pytest.raises(InputError):
            recommend_layers(trace, width=width)
    no_mlp = synthetic_trace([0.1] * LAYERS)
    no_mlp.scores = {"hidden": no_mlp.scores["mlp"]}
    with pytest.raises(InputError, match="no MLP"):
        recommend_layers(no_mlp)
    unfinished = synthetic_trace([0.1] * LAYERS)
    unfinished.scores["mlp"][2][3] = math.nan
    with pytest.raises(InputError, match="not finished"):
        recommend_layers(unfinished)
    with pytest.raises(InputError):
        recommend_layers("a trace")


def test_outlier_layers_are_flagged_against_the_median():
    eigenvalues = [1.2, 0.9, 140.0, 1.1, 1.0, 0.95]
    flagged = flag_outliers(eigenvalues)
    assert list(flagged) == [2] and "outlier" in flagged[2]
    assert flag_outliers([1.0] * 6) == {}


def test_a_weak_curve_is_said_to_be_weak():
    weak = [0.0] * LAYERS
    weak[4] = 0.05  # below 10% of high - low = 0.85
    recommendation = recommend_layers(synthetic_trace(weak), width=3)
    assert recommendation.warnings and recommendation.warnings[0].startswith("Weak signal")
    assert "10%" in recommendation.warnings[0] and "Weak signal" in recommendation.explanation
    strong = [0.0] * LAYERS
    strong[4] = 0.09  # above 10% of 0.85
    assert recommend_layers(synthetic_trace(strong), width=3).warnings == []
    flat = synthetic_trace(strong)
    flat.high = flat.low  # the corruption did not move the answer at all
    assert "does not lower" in recommend_layers(flat, width=3).warnings[0]
