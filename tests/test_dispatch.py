"""A model dispatched by accelerate, as `device_map="auto"` leaves it: every block's forward wrapped by a hook
that moves its inputs to the block's device. The fast trace engine stubs and calls those wrapped blocks, and
MEMIT edits them; both must work through the wrappers and leave them in place. (Here every block is on the
CPU: the wrappers are the same on several GPUs, which this machine does not have.)"""

from __future__ import annotations

import pytest
from accelerate import dispatch_model

from core.hooks import hook_count
from core.loading import from_parts
from editor.edits.requests import EditRequest
from editor.edits.weights import weights_hash
from editor.methods.memit import Memit, MemitSettings
from editor.statistics.covariance import layer_covariances
from tests.tiny_models import tiny_model
from tracer.fast_trace import fast_scores
from tracer.problem import TraceSettings, prepare_trace
from tracer.reference import reference_cell


def test_a_dispatched_model_traces_and_edits_through_the_device_hooks(tokenizer):
    model = tiny_model("llama")
    modules = ["model.embed_tokens", *(f"model.layers.{layer}" for layer in range(3)), "model.norm", "model.rotary_emb", "lm_head"]
    model = dispatch_model(model, device_map={name: "cpu" for name in modules}, force_hooks=True)
    wrapped = [block.__dict__.get("forward") for block in model.model.layers]
    assert all(forward is not None for forward in wrapped)  # accelerate's wrappers
    loaded = from_parts(model, tokenizer, spec="tiny-llama-dispatched")
    problem = prepare_trace(loaded, "The Eiffel Tower is in Paris", "Eiffel Tower", TraceSettings(samples=2, window=2, noise=0.5))
    _, fast = fast_scores(loaded, problem)
    for (kind, token, layer), value in fast.items():
        assert value == pytest.approx(reference_cell(loaded, problem, kind, token, layer), rel=1e-5, abs=1e-9)
    assert [block.__dict__.get("forward") for block in model.model.layers] == wrapped  # the wrappers are back
    hparams = MemitSettings(layers=(1, 2), cov_tokens=300, mom2_weight=1e-4, steps=4, prefix_starts=())
    before = weights_hash(loaded, [1, 2])
    covariances = layer_covariances(loaded, [1, 2], 300, use_cache=False)
    batch = Memit(hparams).compute(loaded, [EditRequest("Eiffel Tower", "The {} is located in the city of", "Rome")], covariances=covariances)
    assert batch.final_residual_norm < 0.02 * batch.layer_diagnostics[0].residual_norm
    assert weights_hash(loaded, [1, 2]) == before and hook_count(loaded.model) == 0
