"""Causal traces: the fast engine against the reference (every family and the real model), the published
pattern on the Eiffel prompt, reproducibility, a clean model after success/error/cancel, bad input."""

from __future__ import annotations

import random

import numpy
import pytest
import torch

from core.errors import InputError
from core.hooks import forward_hooks, hook_count
from tests.tiny_models import FAMILIES
from tracer.fast_trace import fast_scores
from tracer.noise import draw_noise, measure_embedding_sigma, parse_noise
from tracer.problem import (
    MAX_TRACE_TOKENS,
    TraceResult,
    TraceSettings,
    prepare_trace,
    token_classes,
    window_layers,
)
from tracer.reference import reference_cell, reference_score
from tracer.trace import trace, trace_stream

EIFFEL = "The Eiffel Tower is located in the city of"
TINY_PROMPT = "The Eiffel Tower is in Paris"


def no_stubbed_forwards(model) -> bool:
    """True when no module carries an instance-level `forward` (the engine's block stubs are gone)."""
    return all("forward" not in module.__dict__ for module in model.modules())


def last_logits(loaded, text: str = EIFFEL) -> torch.Tensor:
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        return loaded.model(ids).logits[0, -1].clone()


# --- plain functions ---------------------------------------------------------------------------

def test_windows_follow_the_spec():
    assert list(window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(window_layers(12, 10, 30)) == list(range(7, 17))
    assert list(window_layers(29, 10, 30)) == list(range(24, 30))
    assert list(window_layers(4, 5, 30)) == [2, 3, 4, 5, 6]
    assert list(window_layers(7, 1, 30)) == [7]


def test_token_classes_follow_rome():
    classes = token_classes(10, (1, 4))
    assert classes[1] == ["first subject token"]
    assert classes[2] == ["middle subject tokens"]
    assert classes[3] == ["last subject token"]
    assert classes[4] == ["first token after the subject"]
    assert classes[5:9] == [["further tokens"]] * 4
    assert classes[9] == ["last token"]
    assert classes[0] == []
    single = token_classes(3, (0, 1))  # one-token subject followed by the last token
    assert single[0] == ["first subject token", "last subject token"]
    assert single[1] == ["first token after the subject"]
    assert single[2] == ["last token"]


def test_noise_is_the_reference_rng():
    drawn = draw_noise(3, 2, 5, seed=1)
    expected = numpy.random.RandomState(1).randn(3, 2, 5)
    assert drawn.dtype == torch.float64 and numpy.array_equal(drawn.numpy(), expected)
    uniform = draw_noise(2, 2, 4, seed=7, noise_type="uniform")
    assert numpy.array_equal(uniform.numpy(), numpy.random.RandomState(7).uniform(-1, 1, (2, 2, 4)))
    assert parse_noise("3x") == ("sigma", 3.0) and parse_noise(0.25) == ("absolute", 0.25)
    assert parse_noise("0.5") == ("absolute", 0.5)
    for bad in ("three", "-1", "x3", True):
        with pytest.raises(InputError):
            parse_noise(bad)


def test_sigma_of_the_embedded_model_matches_the_spec(embedded):
    from core.facts import load_known_facts
    from tracer.noise import embedding_sigma

    sigma = measure_embedding_sigma(embedded, [fact.subject for fact in load_known_facts()])
    assert sigma == pytest.approx(0.11666, abs=5e-6)
    assert embedding_sigma(embedded) == pytest.approx(sigma, rel=1e-6)  # the cached value in assets/


# --- fast == reference -------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", FAMILIES)
def test_fast_engine_equals_reference_on_tiny_models(model_type, tiny):
    loaded = tiny(model_type)
    settings = TraceSettings(samples=2, window=2, noise=0.5)
    problem = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", settings)
    low, fast = fast_scores(loaded, problem)
    assert low == pytest.approx(reference_score(loaded, problem, []), rel=1e-5, abs=1e-9)
    layers, tokens = loaded.layout.num_layers, problem.num_tokens
    assert len(fast) == 3 * layers * tokens
    effects = []
    for (kind, token, layer), value in fast.items():
        expected = reference_cell(loaded, problem, kind, token, layer)
        assert abs(value - expected) <= 1e-5 and abs(value - expected) <= 1e-5 * abs(expected), (kind, token, layer)
        effects.append(abs(expected - low) / low)
    # the comparison can fail: restoring changes these random models' scores far beyond the tolerance
    assert max(effects) > 1e-3
    assert hook_count(loaded.model) == 0 and no_stubbed_forwards(loaded.model)


@pytest.fixture(scope="module")
def eiffel(embedded):
    """The fast Eiffel trace (2 samples, all kinds) and its prepared problem, shared by this module."""
    settings = TraceSettings(samples=2)
    result = trace(embedded, EIFFEL, "Eiffel Tower", settings)
    return result, prepare_trace(embedded, EIFFEL, "Eiffel Tower", settings)


def test_fast_engine_equals_reference_on_the_real_model(embedded, eiffel):
    result, problem = eiffel
    assert result.low == pytest.approx(reference_score(embedded, problem, []), abs=1e-6)
    begin = result.subject_range[0]
    rng = random.Random(3)
    cells = [(kind, token, layer) for kind in result.kinds for token in range(begin, len(result.tokens)) for layer in range(30)]
    chosen = rng.sample(cells, 9) + [("mlp", 2, 2), ("hidden", 9, 23), ("attn", 9, 19), ("hidden", 0, 5)]
    for kind, token, layer in chosen:
        expected = reference_cell(embedded, problem, kind, token, layer)
        assert result.scores[kind][token][layer] == pytest.approx(expected, abs=1e-5), (kind, token, layer)


def test_eiffel_trace_shows_the_published_pattern(eiffel):
    result, _ = eiffel
    begin, end = result.subject_range
    assert result.answer.strip() == "Paris" and result.high > 0.5 and result.low < 0.1
    layers = result.num_layers
    effect = result.high - result.low
    mlp = result.indirect_effect("mlp")
    token, layer = numpy.unravel_index(mlp.argmax(), mlp.shape)
    assert begin <= token < end and layer < layers // 3  # strongest MLP restoration: subject tokens, early layers
    assert mlp[token, layer] > 0.3 * effect
    hidden = result.indirect_effect("hidden")
    last = hidden[-1]
    assert last[layers // 2 :].max() > 0.6 * effect  # last token, late layers: restoring brings the answer back
    assert last[: layers // 3].max() < 0.2 * effect  # ... but not in early layers
    assert hidden[begin:end, : layers // 3].max() > 0.4 * effect  # subject tokens, early layers
    attn = result.indirect_effect("attn")
    assert numpy.unravel_index(attn.argmax(), attn.shape)[0] == len(result.tokens) - 1  # attention matters at the end
    assert numpy.all(result.score_matrix("mlp")[:begin] == result.low)  # tokens before the subject: low exactly


def test_result_round_trips_through_json_and_csv(eiffel):
    result, _ = eiffel
    import json

    again = TraceResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.scores == result.scores and again.subject_range == result.subject_range
    assert again.settings == result.settings and again.answer_id == result.answer_id
    lines = result.to_csv().splitlines()
    assert len(lines) == 1 + 3 * len(result.tokens) * result.num_layers
    assert lines[0].startswith("kind,token_index,token")


def test_reference_engine_streams_rows(tiny):
    loaded = tiny("gpt2")
    settings = TraceSettings(kinds=("mlp",), samples=2, window=2, noise=0.5, engine="reference")
    updates = list(trace_stream(loaded, TINY_PROMPT, "Eiffel Tower", settings))
    fractions = [update.fraction for update in updates]
    assert fractions == sorted(fractions) and updates[-1].done and fractions[-1] == 1.0
    fast = trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(kinds=("mlp",), samples=2, window=2, noise=0.5))
    numpy.testing.assert_allclose(updates[-1].result.score_matrix("mlp"), fast.score_matrix("mlp"), rtol=1e-5, atol=1e-9)


# --- reproducibility and a clean model ----------------------------------------------------------

def test_same_seed_same_trace_other_seed_other_trace(tiny):
    loaded = tiny("llama")
    settings = TraceSettings(kinds=("hidden",), samples=2, noise=0.5)
    first = trace(loaded, TINY_PROMPT, "Eiffel Tower", settings)
    second = trace(loaded, TINY_PROMPT, "Eiffel Tower", settings)
    other = trace(loaded, TINY_PROMPT, "Eiffel Tower", TraceSettings(kinds=("hidden",), samples=2, noise=0.5, seed=2))
    assert first.scores == second.scores and first.low == second.low
    assert other.low != first.low


def test_closing_the_stream_early_leaves_the_model_clean(embedded):
    before = last_logits(embedded)
    hooks = hook_count(embedded.model)
    stream = trace_stream(embedded, EIFFEL, "Eiffel Tower", TraceSettings(kinds=("hidden",), samples=1))
    partial = None
    for update in stream:
        partial = update.result
        if update.fraction > 0:
            break
    stream.close()
    matrix = partial.score_matrix("hidden")
    assert numpy.isnan(matrix).any() and numpy.isfinite(matrix).any()
    assert hook_count(embedded.model) == hooks and no_stubbed_forwards(embedded.model)
    assert torch.equal(last_logits(embedded), before)


def test_an_error_inside_the_engine_leaves_the_model_clean(embedded):
    """A hook that fails while the engine runs its batched blocks, then one while the block stubs are in."""
    before = last_logits(embedded)
    hooks = hook_count(embedded.model)
    layout = embedded.layout
    problem = prepare_trace(embedded, EIFFEL, "Eiffel Tower", TraceSettings(kinds=("hidden",), samples=1))
    length = problem.num_tokens

    def fail_on_batched_rows(module, args, output):
        if output.shape[0] > 1:
            raise RuntimeError("failure inside a batched block")

    def fail_on_short_queries(module, args, output):
        if output.shape[1] < length:
            raise RuntimeError("failure while the block stubs are in place")

    for name, hook in ((layout.block(5), fail_on_batched_rows), (layout.final_norm, fail_on_short_queries)):
        with forward_hooks(embedded.model, {name: hook}), pytest.raises(RuntimeError, match="failure"):
            fast_scores(embedded, problem)
        assert hook_count(embedded.model) == hooks and no_stubbed_forwards(embedded.model)
    assert torch.equal(last_logits(embedded), before)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "prompt, subject, settings, message",
    [
        (EIFFEL, "Big Ben", TraceSettings(), "does not occur"),
        ("   ", "Eiffel", TraceSettings(), "prompt is empty"),
        (" ".join(["word"] * (MAX_TRACE_TOKENS + 5)), "word", TraceSettings(), "too long"),
        (EIFFEL, "Eiffel Tower", TraceSettings(samples=0), "Samples"),
        (EIFFEL, "Eiffel Tower", TraceSettings(window=0), "window"),
        (EIFFEL, "Eiffel Tower", TraceSettings(kinds=()), "at least one kind"),
        (EIFFEL, "Eiffel Tower", TraceSettings(noise="loud"), "Noise"),
        (EIFFEL, "Eiffel Tower", TraceSettings(answer="   "), "answer is empty"),
        (EIFFEL, "", TraceSettings(), "subject is empty"),
    ],
)
def test_bad_input_gives_a_plain_error(embedded, prompt, subject, settings, message):
    with pytest.raises(InputError, match=message):
        trace(embedded, prompt, subject, settings)


def test_a_named_answer_is_followed(embedded):
    problem = prepare_trace(embedded, EIFFEL, "Eiffel Tower", TraceSettings(samples=1, answer="London"))
    assert problem.answer.strip() == "London" and problem.high < 0.1


def test_prompts_longer_than_a_sliding_window_use_the_reference(tiny):
    from tracer.fast_trace import fast_engine_supports

    loaded = tiny("gemma2")  # sliding window of 64 tokens in tests/tiny_models.py
    prompt = "The Eiffel Tower " + "is a very tall tower and " * 12 + "is in"
    assert not fast_engine_supports(loaded, 70) and fast_engine_supports(loaded, 20)
    stream = trace_stream(loaded, prompt, "Eiffel Tower", TraceSettings(kinds=("hidden",), samples=1, noise=0.5))
    first = next(stream)
    stream.close()
    assert first.result.engine == "reference" and len(first.result.tokens) > 64


def test_small_chunks_give_the_same_scores(tiny, monkeypatch):
    import tracer.fast_trace

    loaded = tiny("qwen2")
    settings = TraceSettings(samples=2, window=2, noise=0.5)
    problem = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", settings)
    _, whole = fast_scores(loaded, problem)
    monkeypatch.setattr(tracer.fast_trace, "CPU_TOKENS_PER_CHUNK", 20)  # a few cells per batch
    tracer_object = tracer.fast_trace.FastTracer(loaded, problem)
    tracer_object.corrupted_run()
    computed = [step for step in tracer_object.steps() if step.fill is None]
    assert len(computed) > problem.num_tokens  # several chunks per token
    _, chunked = fast_scores(loaded, problem)
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
