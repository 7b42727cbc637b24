"""Corruptions (noise, replace, resample), metrics (prob, logit-diff, logprob) and single-head traces (SPEC 6):
the fast engine against the reference in every new mode (tiny models of every family, the real model),
the replacement subjects, the metric functions, and plain errors."""

from __future__ import annotations

import math

import numpy
import pytest
import torch

from core.errors import InputError
from core.facts import load_known_facts
from core.hooks import hook_count
from core.tokens import encode_prompt
from tests.tiny_models import FAMILIES
from tracer.corruption import SUBJECT_KINDS, automatic_replacement, subject_relation
from tracer.fast_trace import FastTracer, fast_scores
from tracer.metrics import answer_probability, contrast_token, metric_values
from tracer.problem import TraceResult, TraceSettings, empty_result, prepare_trace
from tracer.reference import reference_cell, reference_score

EIFFEL = "The Eiffel Tower is located in the city of"
TINY_PROMPT = "The Eiffel Tower is in Paris"

MODES = {
    "replace auto, logit-diff, heads at the last token": dict(
        kinds=("mlp", "heads"), corruption="replace", metric="logit-diff"
    ),
    "resample, logprob, heads at every token": dict(
        kinds=("hidden", "heads"), corruption="resample", samples=3, metric="logprob", head_positions="all"
    ),
    "noise, logit-diff against a named answer": dict(
        kinds=("attn",), noise=0.5, samples=2, metric="logit-diff", counterfactual_answer="London"
    ),
}


def assert_fast_equals_reference(loaded, problem) -> None:
    low, fast = fast_scores(loaded, problem)
    assert low == pytest.approx(reference_score(loaded, problem, []), rel=1e-5, abs=1e-6)
    spread = []
    for (kind, row, layer), value in fast.items():
        expected = reference_cell(loaded, problem, kind, row, layer)
        assert abs(value - expected) <= 1e-5 * max(1.0, abs(expected)), (kind, row, layer, value, expected)
        spread.append(abs(expected - low))
    assert max(spread) > 1e-3  # the comparison can fail: restoring moves these scores far beyond the tolerance


@pytest.mark.parametrize("model_type", FAMILIES)
def test_fast_engine_equals_reference_with_replacement_and_heads_on_every_family(model_type, tiny):
    loaded = tiny(model_type)
    problem = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(window=2, **MODES[next(iter(MODES))]))
    assert problem.samples == 1 and problem.noise is None and problem.contrast_id not in (None, problem.answer_id)
    begin, end = problem.subject_range
    corrupted, clean = problem.corruption.input_ids[0], problem.input_ids[0]
    assert torch.equal(corrupted[:begin], clean[:begin]) and torch.equal(corrupted[end:], clean[end:])
    assert not torch.equal(corrupted[begin:end], clean[begin:end])
    assert_fast_equals_reference(loaded, problem)
    assert hook_count(loaded.model) == 0


@pytest.mark.parametrize("mode", list(MODES)[1:])
@pytest.mark.parametrize("model_type", ["gpt2", "qwen3", "opt"])
def test_fast_engine_equals_reference_in_the_other_modes(model_type, mode, tiny):
    loaded = tiny(model_type)
    problem = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(window=2, **MODES[mode]))
    assert_fast_equals_reference(loaded, problem)


def test_new_modes_on_the_real_model(embedded):
    """Symmetric replacement by Colosseum: the corrupted run says Rome; fast == reference (every head, one token's MLP row)."""
    settings = TraceSettings(kinds=("mlp", "heads"), corruption="replace", replacement="Colosseum", metric="logit-diff")
    problem = prepare_trace(embedded, EIFFEL, "Eiffel Tower", settings)
    tracer = FastTracer(embedded, problem)
    low = tracer.corrupted_run()
    assert problem.contrast.strip() == "Rome" and problem.corruption.replacements == ["Colosseum"]
    assert problem.high > 0 > low  # Paris over Rome when clean, Rome over Paris with the Colosseum
    last_subject = problem.subject_range[1] - 1
    result = empty_result(embedded, problem, low)
    for step in tracer.steps():  # the heads and the MLP row of the last subject token (the rest is the same engine)
        if step.fill is None and (step.cells[0].kind == "heads" or step.token == last_subject):
            for (kind, row, layer), value in tracer.run_step(step).items():
                result.set_cell(kind, row, layer, value)
    heads = result.head_effect()
    assert heads.shape == (embedded.layout.num_heads, embedded.layout.num_layers) and numpy.isfinite(heads).all()
    assert heads.max() > 0.05 * result.total_effect  # single heads carry part of the answer
    strongest = numpy.unravel_index(heads.argmax(), heads.shape)
    cells = [("mlp", last_subject, 3), ("mlp", last_subject, 17), ("heads", int(strongest[0]), int(strongest[1])), ("heads", 0, 0)]
    for kind, row, layer in cells:
        value = result.head_scores[row][layer] if kind == "heads" else result.scores[kind][row][layer]
        assert value == pytest.approx(reference_cell(embedded, problem, kind, row, layer), abs=1e-4), (kind, row, layer)
    again = TraceResult.from_dict(result.to_dict())
    assert again.head_scores[0] == result.head_scores[0] and again.contrast == result.contrast and again.settings == result.settings
    assert sum(line.startswith("heads,") for line in result.to_csv().splitlines()) == heads.size


def test_defaults_are_the_published_noise_and_probability(tiny):
    loaded = tiny("llama")
    default = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(samples=2, noise=0.5))
    assert default.corruption.method == "noise" and default.settings.metric == "prob" and default.contrast_id is None
    assert torch.equal(default.corruption.input_ids, default.input_ids.repeat(2, 1)) and default.noise.shape[0] == 2


# --- replacement subjects ---------------------------------------------------------------------------------------------

def test_resampled_subjects_follow_the_seed_and_keep_the_length(tiny):
    loaded = tiny("gpt2")
    settings = dict(kinds=("hidden",), corruption="resample", samples=4)
    first = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(**settings))
    same = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(**settings))
    other = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(seed=2, **settings))
    assert first.corruption.replacements == same.corruption.replacements != other.corruption.replacements
    assert len(first.corruption.replacements) == 4 and "Eiffel Tower" not in first.corruption.replacements
    for subject, ids in zip(first.corruption.replacements, first.corruption.input_ids.tolist()):
        assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == TINY_PROMPT.replace("Eiffel Tower", subject)


def test_auto_replacement_is_a_same_length_subject_of_the_same_kind(embedded):
    """auto takes a known subject of the traced fact's relation (a landmark for the Eiffel Tower, not a music service),
    with as many tokens, and says which and why."""
    problem = prepare_trace(embedded, EIFFEL, "Eiffel Tower", TraceSettings(kinds=("mlp",), corruption="replace"))
    (subject,) = problem.corruption.replacements
    assert subject != "Eiffel Tower" and problem.settings.replacement is None
    assert embedded.tokenizer.decode(problem.corruption.input_ids[0], skip_special_tokens=True) == EIFFEL.replace("Eiffel Tower", subject)
    facts = {fact.subject: fact for fact in load_known_facts()}
    assert facts[subject].relation_id == "P131"  # "located in": Royal National Theatre, not Beats Music
    note = problem.corruption.note
    assert note.startswith(f"auto chose {subject!r}, of the same relation (P131") and "3 tokens of 'Eiffel Tower'" in note
    result = empty_result(embedded, problem, 0.0)
    assert result.corruption_note == note and TraceResult.from_dict(result.to_dict()).corruption_note == note
    # A known subject: its own relation. No subject of the relation fits: one of the same kind (a person).
    beats = prepare_trace(embedded, "Beats Music is owned by", "Beats Music", TraceSettings(kinds=("mlp",), corruption="replace"))
    assert facts[beats.corruption.replacements[0]].relation_id == "P127" and "known subject" in beats.corruption.note
    jordan = "Michael Jordan professionally plays the sport of"
    assert subject_relation(jordan, "Michael Jordan", 0, list(facts.values()))[0] == "P641"
    encoded = encode_prompt(embedded.tokenizer, jordan)
    chosen, _, note = automatic_replacement(embedded.tokenizer, encoded, "Michael Jordan", 0,
                                            encoded.subject_range("Michael Jordan"), " basketball")
    assert SUBJECT_KINDS[facts[chosen].relation_id] == "person" and facts[chosen].relation_id != "P641"
    assert "a person like the subjects of the prompt's relation (P641" in note


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(corruption="blur"), "Unknown corruption"),
        (dict(metric="accuracy"), "Unknown metric"),
        (dict(replacement="Colosseum"), "only with the replace corruption"),
        (dict(corruption="replace", replacement="  "), "replacement subject is empty"),
        (dict(counterfactual_answer="Rome"), "only by the logit-diff metric"),
        (dict(metric="logit-diff", counterfactual_answer=" "), "counterfactual answer is empty"),
        (dict(kinds=("heads",), head_positions="first"), "last or all"),
        (dict(kinds=("neurons",)), "Unknown kind"),
        (dict(corruption="replace", replacement="Big Ben and the Tower of London"), "token for token"),
        (dict(metric="logit-diff", counterfactual_answer="Paris"), "same token as the answer"),
    ],
)
def test_bad_mode_settings_are_plain_errors(embedded, settings, message):
    with pytest.raises(InputError, match=message):
        prepare_trace(embedded, EIFFEL, "Eiffel Tower", TraceSettings(**settings))


# --- metrics -----------------------------------------------------------------------------------------------------------

def test_metric_functions():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.0, 0.0]])
    probability = answer_probability(logits, 1)
    assert torch.allclose(metric_values(logits, "prob", 1), probability)
    assert torch.allclose(metric_values(logits, "logprob", 1), probability.log())
    assert torch.equal(metric_values(logits, "logit-diff", 1, 0), torch.tensor([-1.0, 3.0]))
    assert contrast_token(logits, 3) == 1  # the top token of the mean probabilities
    assert contrast_token(logits, 1) == 0  # the answer itself on top: the runner-up
    with pytest.raises(ValueError):
        metric_values(logits, "logit-diff", 1)


def test_normalized_effect_and_heads_in_results():
    result = TraceResult(
        prompt="a b", subject="a", tokens=["a", " b"], subject_range=(0, 1), answer=" x", answer_id=3, high=2.0, low=-1.0,
        scores={"mlp": [[0.5, -1.0], [2.0, math.nan]]}, settings=TraceSettings(kinds=("mlp", "heads"), metric="logit-diff"),
        noise_level=0.0, model="test", num_layers=2, head_scores=[[0.0, math.nan], [2.0, -1.0]],
    )
    numpy.testing.assert_allclose(result.normalized_effect("mlp"), [[0.5, 0.0], [1.0, math.nan]])
    numpy.testing.assert_allclose(result.normalized_effect("heads"), [[1 / 3, math.nan], [1.0, 0.0]])
    assert result.fraction_done() == pytest.approx(6 / 8)
    result.set_cell("heads", 0, 1, 0.25)
    assert result.head_scores[0][1] == 0.25 and result.fraction_done() == pytest.approx(7 / 8)
