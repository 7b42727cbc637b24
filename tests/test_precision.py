"""bfloat16 and float16 end to end on the CPU: the fast trace engine against the reference within a stated
tolerance, and MEMIT on half-precision models (float32 targets and keys, float64 covariance and solve, the
update rounded into the weights once).

Stated tolerances (fast vs reference engine, same model and dtype): float32 1e-5 (tests/test_trace.py);
bfloat16 and float16 2e-3 relative on the 3-layer tiny models (near-uniform outputs, so a relative bound);
2e-2 absolute on the 30-layer embedded model in bfloat16. The engines compute the same cells in batches
of different sizes, so the matrix products round differently (bfloat16 keeps 8 bits: 3.9e-3 relative per
rounding) and 30 layers amplify that: most cells agree within 1e-3, a few late-layer cells differ by
~5e-3 (hidden, "iffel", layer 22), none of the float32 engines' 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from core.errors import LocusError
from core.loading import from_parts, load_model
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.edits.weights import projection_weight, weights_hash
from editor.methods.memit import Memit, MemitSettings
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import FLOAT16_LOSS_SCALE, LARGEST_LOSS_SCALE, LossScale, compute_targets
from editor.statistics.covariance import layer_covariances
from tests.test_covariance import direct_second_moments
from tests.tiny_models import tiny_model
from tracer.fast_trace import FastTracer, Step, build_cells, fast_scores
from tracer.problem import TraceSettings, prepare_trace
from tracer.reference import reference_cell, reference_score

TINY_PROMPT = "The Eiffel Tower is in Paris"
EIFFEL = "The Eiffel Tower is located in the city of"
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
BFLOAT16_EMBEDDED = 2e-2  # fast vs reference, absolute, on the 30-layer embedded model in bfloat16 (see above)
REQUESTS = [
    EditRequest("Eiffel Tower", "The {} is located in the city of", "Rome"),
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English"),
    EditRequest("Colosseum", "{} is in", "London Town"),
]


def half_tiny(model_type: str, dtype: str, tokenizer):
    return from_parts(tiny_model(model_type).to(HALF[dtype]), tokenizer, spec=f"tiny-{model_type}")


@pytest.mark.parametrize("model_type,dtype", [("llama", "bfloat16"), ("gpt2", "bfloat16"), ("opt", "bfloat16"), ("llama", "float16")])
def test_fast_engine_equals_reference_in_half_precision(model_type, dtype, tokenizer):
    loaded = half_tiny(model_type, dtype, tokenizer)
    assert loaded.dtype == HALF[dtype]
    settings = TraceSettings(samples=2, window=2, noise=0.5)
    problem = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", settings)
    low, fast = fast_scores(loaded, problem)
    assert low == pytest.approx(reference_score(loaded, problem, []), rel=2e-3)
    effects = []
    for (kind, token, layer), value in fast.items():
        expected = reference_cell(loaded, problem, kind, token, layer)
        assert value == pytest.approx(expected, rel=2e-3), (kind, token, layer)
        effects.append(abs(expected - low) / low)
    assert max(effects) > 1e-2  # restoring moves these scores by more than the tolerance: the check can fail


@pytest.fixture(scope="module")
def embedded_bfloat16():
    """The embedded model loaded a second time, in bfloat16 (its own weights: the shared float32 one is untouched)."""
    return load_model("embedded", device="cpu", dtype="bfloat16")


# strong and weak cells of the Eiffel trace: "iffel" (token 2), the last subject token (4), the last token (9)
EMBEDDED_CELLS = [("mlp", 2, 2), ("hidden", 2, 22), ("hidden", 4, 3), ("mlp", 4, 10), ("attn", 9, 19), ("hidden", 9, 25)]


def test_embedded_bfloat16_trace_fast_vs_reference_and_vs_float32(embedded_bfloat16, embedded):
    loaded = embedded_bfloat16
    settings = TraceSettings(samples=2)
    problem = prepare_trace(loaded, EIFFEL, "Eiffel Tower", settings)
    float32 = prepare_trace(embedded, EIFFEL, "Eiffel Tower", settings)
    assert problem.answer_id == float32.answer_id and problem.high == pytest.approx(float32.high, abs=0.05)
    tracers = {"bfloat16": FastTracer(loaded, problem), "float32": FastTracer(embedded, float32)}
    for tracer in tracers.values():
        tracer.corrupted_run()
    assert tracers["bfloat16"].corrupted.low == pytest.approx(reference_score(loaded, problem, []), abs=BFLOAT16_EMBEDDED)
    layers = loaded.layout.num_layers
    windows = {kind: settings.window_for(kind) for kind in settings.kinds}
    scores = {name: {} for name in tracers}
    for token in sorted({token for _, token, _ in EMBEDDED_CELLS}):
        cells = [cell for cell in build_cells(settings.kinds, windows, token, layers) if cell.key in EMBEDDED_CELLS]
        for name, tracer in tracers.items():
            scores[name].update(tracer.run_step(Step(token, cells)))
    references = {key: reference_cell(loaded, problem, *key) for key in EMBEDDED_CELLS}
    assert max(references.values()) - min(references.values()) > 0.2  # far beyond the tolerance: the check can fail
    for key, expected in references.items():
        assert scores["bfloat16"][key] == pytest.approx(expected, abs=BFLOAT16_EMBEDDED), key
        assert scores["bfloat16"][key] == pytest.approx(scores["float32"][key], abs=0.05), key  # agreement, not equality


@pytest.mark.parametrize("model_type,dtype", [("llama", "bfloat16"), ("gpt2", "bfloat16"), ("llama", "float16")])
def test_memit_on_a_half_precision_model(model_type, dtype, tokenizer, tmp_path, monkeypatch):
    import editor.statistics.covariance as covariance

    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    monkeypatch.setattr(covariance, "_MEMORY", {})
    loaded = half_tiny(model_type, dtype, tokenizer)
    # R = 0-1, so that block 2's attention carries each delta to the target positions: a gradient path of
    # real size in every dtype (with l_R the last block, the NLL's gradient is rounding noise of ~1e-9,
    # which float16 flushes to zero on some CPUs and not on others)
    hparams = MemitSettings(layers=(0, 1), cov_tokens=300, mom2_weight=1e-4, steps=8, prefix_starts=())
    layers = list(hparams.layers)
    covariances = layer_covariances(loaded, layers, hparams.cov_tokens)
    expected = direct_second_moments(loaded, layers, hparams.cov_tokens)  # float64 products of the upcast keys
    for layer in layers:
        got = covariances.covariances[layer]
        assert got.dtype == torch.float64
        assert torch.allclose(got, expected[layer], rtol=1e-5, atol=1e-6 * float(expected[layer].abs().max()))
    cached = list(tmp_path.rglob("*.safetensors"))
    assert cached and all(path.parent.parent.name.endswith(f"-{dtype}") for path in cached)  # cached per dtype
    requests = REQUESTS
    targets = compute_targets(loaded, requests, hparams, context_prefixes(loaded, hparams))
    assert targets.targets.dtype == torch.float32 and all(d.delta_norm > 0 for d in targets.diagnostics)
    before = weights_hash(loaded, layers)
    saved = {layer: projection_weight(loaded, layer).detach().clone() for layer in layers}
    batch = Memit(hparams).compute(loaded, requests, covariances=covariances, targets=targets)
    assert weights_hash(loaded, layers) == before
    assert all(delta.dtype == torch.float32 and torch.isfinite(delta).all() for delta in batch.deltas.values())
    assert all(keys.dtype == torch.float32 for keys in batch.keys.values())
    # the whole change z - h is written (lambda ~ 0), up to the half-precision rounding of the weights
    assert batch.final_residual_norm < 0.02 * batch.layer_diagnostics[0].residual_norm
    ledger = EditLedger.for_model(loaded)
    ledger.add(batch, loaded)
    with ledger.applied(loaded):
        for layer in layers:  # rounded into the weight's dtype once, from float32
            rounded = (saved[layer].float() + batch.deltas[layer]).to(HALF[dtype])
            assert torch.equal(projection_weight(loaded, layer), rounded)
    assert weights_hash(loaded, layers) == before


# --- the float16 loss scale, on gradients made here (no model: the same on every CPU) --------------------

SCALE_REQUESTS = [REQUESTS[0], REQUESTS[1]]


def test_loss_scale_passes_float32_and_bfloat16_gradients_through():
    scale = LossScale.for_dtype(torch.bfloat16)
    grad = torch.zeros(2, 4)  # even a zero gradient: only float16 is checked
    assert scale.value == 1.0 and scale.unscale(grad, torch.ones(2, dtype=torch.bool), SCALE_REQUESTS) is grad


def test_loss_scale_retries_smaller_after_an_overflow_and_larger_after_an_underflow():
    scale = LossScale.for_dtype(torch.float16)
    active = torch.ones(2, dtype=torch.bool)
    assert scale.value == FLOAT16_LOSS_SCALE
    underflow = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # the second request's gradient flushed to zero
    assert scale.unscale(underflow, active, SCALE_REQUESTS) is None and scale.value == FLOAT16_LOSS_SCALE * 16
    fine = torch.tensor([[64.0, 0.0], [128.0, 4096.0]])
    assert torch.equal(scale.unscale(fine, active, SCALE_REQUESTS), fine / (FLOAT16_LOSS_SCALE * 16))
    overflow = torch.tensor([[1.0, float("inf")], [2.0, 3.0]])
    assert scale.unscale(overflow, active, SCALE_REQUESTS) is None and scale.value == FLOAT16_LOSS_SCALE
    # a finished request's zero row is no underflow
    assert torch.equal(scale.unscale(underflow, torch.tensor([True, False]), SCALE_REQUESTS), underflow / FLOAT16_LOSS_SCALE)


def test_loss_scale_names_the_request_whose_gradient_stays_zero():
    scale = LossScale.for_dtype(torch.float16)
    active = torch.ones(2, dtype=torch.bool)
    assert scale.unscale(torch.tensor([[float("nan"), 1.0], [1.0, 1.0]]), active, SCALE_REQUESTS) is None
    underflow = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    # x16 would reach the scale that overflowed: no larger scale is left to try
    with pytest.raises(LocusError, match="underflows to zero for 'Danielle Darrieux' -> 'English'.*bfloat16 or float32"):
        scale.unscale(underflow, active, SCALE_REQUESTS)
    growing = LossScale.for_dtype(torch.float16)
    tries = 0
    with pytest.raises(LocusError, match="Danielle Darrieux.*bfloat16 or float32"):
        while growing.unscale(underflow, active, SCALE_REQUESTS) is None:
            tries += 1
    assert growing.value == LARGEST_LOSS_SCALE and tries == 4  # 2^16 -> 2^32 in steps of 16


def test_loss_scale_gives_up_on_overflow_below_one():
    scale = LossScale(2.0)  # the retry at 2 / 16 would be below 1
    with pytest.raises(LocusError, match="overflow.*bfloat16 or float32"):
        scale.unscale(torch.tensor([[float("inf")]]), torch.ones(1, dtype=torch.bool), SCALE_REQUESTS[:1])
