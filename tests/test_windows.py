"""R measured by editing (SPEC 6): windows, the per-window edit against a plain evaluation, resuming, the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InputError
from editor.evaluation.counterfact import load_records
from editor.evaluation.evaluate import Scores, evaluate_records
from editor.methods.memit import Memit, MemitSettings
from editor.methods.rome import Rome, RomeSettings
from editor.studies.windows import (
    WindowScore,
    WindowsResult,
    measure_windows,
    measure_windows_stream,
    parse_windows,
    rank_correlation,
    windows_cache_path,
)
from tests.conftest import weights_fingerprint
from tracer.problem import TraceSettings
from tracer.recommend import recommend_layers
from tracer.trace import trace

DEVSET = Path(__file__).resolve().parents[1] / "assets" / "devset_smollm2-135m-instruct.json"


def test_windows_are_parsed_with_bounds():
    every = parse_windows("all", 30, 5)
    assert len(every) == 26 and every[0] == (0, 1, 2, 3, 4) and every[-1] == (25, 26, 27, 28, 29)
    assert parse_windows("10-14, 1-5,2-6", 30) == [(1, 2, 3, 4, 5), (2, 3, 4, 5, 6), (10, 11, 12, 13, 14)]
    assert parse_windows("3", 30) == [(3,)]
    for text, width, message in (("1-5", 0, "width"), ("all", 31, "width"), ("28-30", 5, "does not exist"), ("x", 5, "not understood")):
        with pytest.raises(InputError, match=message):
            parse_windows(text, 30, width)


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2], [1, 2]) is None and rank_correlation([1, 1, 1], [1, 2, 3]) is None


def _result(windows, tracing) -> WindowsResult:
    return WindowsResult(
        model="test", n=3, width=2, method="memit", method_settings="lambda 1", cov_tokens=10,
        unedited=Scores(10.0, 10.0, 90.0, 14.0, None, None, None, 3), windows=windows, trace_curve=[0.1, 0.3, 0.2, 0.0],
        trace_facts=5, tracing_recommended=tracing,
    )


def test_the_verdict_says_when_tracing_and_editing_disagree():
    windows = [WindowScore([0, 1], 90, 80, 70, 79.0, trace_effect=0.4), WindowScore([1, 2], 95, 85, 75, 84.0, trace_effect=0.5),
               WindowScore([2, 3], 60, 50, 90, 63.0, trace_effect=0.2)]
    agreeing = _result(windows, [1, 2])
    assert agreeing.editing_best == [1, 2] and agreeing.agree and "they agree" in agreeing.explanation()
    disagreeing = _result(windows, [0, 1])
    assert not disagreeing.agree and "disagree" in disagreeing.explanation() and "rank 2 of 3" in disagreeing.explanation()
    assert disagreeing.correlation == pytest.approx(1.0)
    unmeasured = _result(windows[1:], [0, 1])
    assert not unmeasured.agree and "not edited here" in unmeasured.explanation()
    data = disagreeing.to_dict()
    assert [window["layers"] for window in data["windows"]] == [[0, 1], [1, 2], [2, 3]]
    assert {"layers", "ES", "PS", "NS", "S", "trace_effect"} <= set(data["windows"][0])
    assert data["tracing_recommended"] == [0, 1] and data["editing_best"] == [1, 2] and data["agree"] is False
    no_paraphrases = _result([WindowScore([0, 1], 50, None, None, None), WindowScore([1, 2], 100, None, None, None)], [0, 1])
    assert no_paraphrases.editing_best == [1, 2]  # ranked by ES when there is no S
    assert "T " in disagreeing.table() or " T" in disagreeing.table()


def test_each_window_is_a_plain_edit_and_a_rerun_reads_the_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    loaded = tiny("llama")
    records = load_records(DEVSET)[:2]
    hparams = MemitSettings(layers=(1, 2), cov_tokens=300, mom2_weight=1e-4, steps=8, prefix_starts=())
    traced = trace(loaded, records[0].rewrite_prompt, records[0].subject, TraceSettings(kinds=("mlp",), samples=2, noise=0.5, window=1))
    recommendation = recommend_layers(traced, width=2)
    before = weights_fingerprint(loaded.model)
    updates = list(measure_windows_stream(loaded, records, [(1, 2), (0, 1), (2,), (1, 2)], Memit(hparams), width=2,
                                          recommendation=recommendation))  # a window twice is measured once
    fractions = [update.fraction for update in updates]
    assert fractions == sorted(fractions) and updates[-1].done and fractions[-1] == 1.0
    result = updates[-1].result
    assert weights_fingerprint(loaded.model) == before
    assert [window.layers for window in result.windows] == [[0, 1], [1, 2], [2]]  # by last layer: targets shared by 1-2 and 2
    assert result.tracing_recommended == recommendation.layers and result.cached_windows == 0
    for window in result.windows:
        assert window.trace_effect == pytest.approx(sum(recommendation.curve[layer] for layer in window.layers))
    plain = evaluate_records(loaded, records, Memit(hparams.replace(layers=(1, 2))), generation=False)
    measured = result.window([1, 2])
    assert (measured.ES, measured.PS, measured.NS, measured.S) == pytest.approx((plain.post.ES, plain.post.PS, plain.post.NS, plain.post.S))
    assert (measured.ES_gen, measured.PS_gen, measured.NS_gen) == pytest.approx((plain.post.ES_gen, plain.post.PS_gen, plain.post.NS_gen))
    assert measured.ES_gen is not None and result.unedited.NS_gen == pytest.approx(plain.pre.NS_gen) and "ES-gen" in result.table()
    assert (result.unedited.ES, result.unedited.NS) == pytest.approx((plain.pre.ES, plain.pre.NS))
    assert result.editing_best in ([0, 1], [1, 2], [2]) and result.agree == (result.editing_best == recommendation.layers)
    path = windows_cache_path(loaded, records, Memit(hparams))
    assert len(path.read_text().splitlines()) == 4  # the unedited scores and three windows
    again = measure_windows(loaded, records, [(0, 1), (1, 2), (2,)], Memit(hparams), width=2, recommendation=recommendation)
    assert again.cached_windows == 3 and [w.to_dict() for w in again.windows] == [w.to_dict() for w in result.windows]
    # lines of an older version have no success by generation: measured again when it is asked for, else read without it
    older = [json.loads(line) for line in path.read_text().splitlines()]
    for entry in older:
        for key in ("ES_gen", "PS_gen", "NS_gen"):
            entry.get("window", entry.get("scores")).pop(key)
    kept = [entry for entry in older if entry["kind"] == "unedited" or entry["window"]["layers"] == [0, 1]]
    path.write_text("".join(json.dumps(entry) + "\n" for entry in kept))  # the unedited line and window 0-1
    without = measure_windows(loaded, records, [(0, 1)], Memit(hparams), width=2, recommendation=recommendation, by_generation=False)
    assert without.cached_windows == 1 and without.windows[0].ES_gen is None and without.unedited.ES_gen is None
    assert without.windows[0].ES == result.window([0, 1]).ES and "ES-gen" in without.table()
    remeasured = measure_windows(loaded, records, [(0, 1)], Memit(hparams), width=2, recommendation=recommendation)
    assert remeasured.cached_windows == 0 and remeasured.windows[0].to_dict() | {"seconds": 0} == result.window([0, 1]).to_dict() | {"seconds": 0}
    assert remeasured.unedited == result.unedited
    assert weights_fingerprint(loaded.model) == before


def test_bad_requests_fail_before_any_edit(tiny):
    loaded = tiny("llama")
    records = load_records(DEVSET)[:1]
    with pytest.raises(InputError, match="No records"):
        next(measure_windows_stream(loaded, [], "all", width=2))
    with pytest.raises(InputError, match="ROME"):
        next(measure_windows_stream(loaded, records, "all", Rome(RomeSettings(layers=(1,))), width=2))
    with pytest.raises(InputError, match="does not exist"):
        next(measure_windows_stream(loaded, records, "2-4", width=2))


def test_the_windows_figure_draws_both_curves_and_marks_both_answers():
    from editor.studies.figures import windows_figure
    from tracer.figures import figure_caption

    windows = [WindowScore([0, 1], 90, 80, 70, 79.0, trace_effect=0.4), WindowScore([1, 2], 95, 85, 75, 84.0, trace_effect=0.5)]
    figure = windows_figure(_result(windows, [0, 1]))
    names = [trace.name for trace in figure.data]
    assert names[:4] == ["S", "ES", "PS", "NS"] and "tracing" in names[4]
    assert list(figure.data[0].x) == ["0-1", "1-2"] and list(figure.data[0].y) == [79.0, 84.0]
    assert list(figure.data[4].y) == [0.4, 0.5] and figure.data[4].yaxis == "y2"
    assert len(figure.layout.shapes) == 2 and "disagree" in figure.layout.title.text
    assert "trust the editing" in figure_caption(figure)
    assert not windows_figure(_result([], [0, 1])).data


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--windows", "1-5x"], "not understood"),
        (["--limit", "0"], "--limit"),
        (["--trace-facts", "0"], "--trace-facts"),
    ],
)
def test_the_layers_command_refuses_bad_input_before_loading(arguments, message, capsys):
    from editor.cli import main

    assert main(["layers", "--data", str(DEVSET), *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and message in error[-1]


def test_a_tie_for_the_best_window_counts_as_agreement():
    windows = [WindowScore([0, 1], 90, 80, 70, 84.0), WindowScore([1, 2], 95, 85, 75, 84.0), WindowScore([2, 3], 60, 50, 90, 63.0)]
    tied = _result(windows, [1, 2])
    assert tied.editing_best == [0, 1] and tied.tied_best == [[0, 1], [1, 2]] and tied.agree
    assert "Tied with R = 1-2" in tied.explanation() and "they agree" in tied.explanation()


def test_the_progress_shares_follow_the_estimated_cost_of_each_step(tiny, tmp_path, monkeypatch):
    """A cached covariance takes no share; a missing one does; the steps tile [0, 1] in the order they run."""
    from editor.statistics.covariance import layer_covariances
    from editor.studies.work_plan import WorkPlan, missing_covariance_layers

    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    loaded = tiny("llama")
    records = load_records(DEVSET)[:2]
    settings = MemitSettings(layers=(1, 2), cov_tokens=200, steps=8, prefix_starts=("The",))
    by_last = {1: [(0, 1)], 2: [(1, 2), (2,)]}
    windows = [window for group in by_last.values() for window in group]
    assert missing_covariance_layers(loaded, windows, settings) == [0, 1, 2]

    def plan(missing: list[int], trace_facts: int = 0) -> WorkPlan:
        return WorkPlan.of(loaded, records, by_last, settings, trace_facts=trace_facts, score_unedited=True,
                           covariance_layers=missing, by_generation=True)

    cold = plan([0, 1, 2], trace_facts=3)
    steps = list(cold.bounds.values())
    assert list(cold.bounds) == ["trace", "unedited", "covariance", ("targets", 1), (0, 1), ("targets", 2), (1, 2), (2,)]
    assert steps[0][0] == 0.0 and steps[-1][1] == pytest.approx(1.0)
    assert all(earlier[1] == pytest.approx(later[0]) for earlier, later in zip(steps, steps[1:]))
    assert all(high > low for low, high in steps)
    layer_covariances(loaded, [0, 1, 2], settings.cov_tokens)
    assert missing_covariance_layers(loaded, windows, settings) == []
    warm = plan([])
    assert warm.bounds["trace"] == (0.0, 0.0) and warm.bounds["covariance"][0] == warm.bounds["covariance"][1]
    targets_1, targets_2 = (warm.bounds[("targets", last)] for last in (1, 2))
    assert targets_1[1] - targets_1[0] > targets_2[1] - targets_2[0]  # more blocks after layer 1 than after layer 2
