"""Memory planning (core.memory) and out-of-memory errors injected on the CPU: every batched stage halves its
chunk and retries with the same results; at the floor it is a plain LocusError, weights and hooks as before.

The injection is a real failure mode, raised where it happens: a forward pre-hook on one decoder block raises
torch.OutOfMemoryError when its input holds more tokens (rows x positions) than a limit, as an allocator would.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import core.memory
from core.errors import LocusError
from core.hooks import hook_count, input_tensor
from core.memory import ChunkSize, ModelShape, available_ram, is_out_of_memory, out_of_memory_as_error, plan
from editor.edits.requests import EditRequest
from editor.edits.weights import weights_hash
from editor.evaluation.scoring import teacher_forced
from editor.methods.keys import request_keys
from editor.methods.memit import Memit, MemitSettings
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import compute_targets
from editor.statistics.covariance import layer_covariances
from tracer.fast_trace import FastTracer, fast_scores
from tracer.problem import TraceSettings, prepare_trace

TINY_PROMPT = "The Eiffel Tower is in Paris"
REQUESTS = [
    EditRequest("Eiffel Tower", "The {} is located in the city of", "Rome"),
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English"),
    EditRequest("Colosseum", "{} is in", "London Town"),
]


@contextmanager
def out_of_memory_above(loaded, limit: int, layer: int = 1):
    """Block `layer` raises torch.OutOfMemoryError for inputs of more than `limit` tokens; yields the count raised."""
    raised = [0]

    def check(module, args, kwargs):
        hidden = input_tensor(args, kwargs)
        tokens = hidden.shape[0] * hidden.shape[1] if hidden.dim() == 3 else hidden.shape[0]
        if tokens > limit:
            raised[0] += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected): {tokens} tokens > {limit}")

    handle = loaded.model.get_submodule(loaded.layout.block(layer)).register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield raised
    finally:
        handle.remove()


def no_stubbed_forwards(model) -> bool:
    return all("forward" not in module.__dict__ for module in model.modules())


# --- planning ----------------------------------------------------------------------------------

def test_plans_follow_free_memory_with_a_floor_and_the_cpu_default(monkeypatch):
    assert available_ram() > 0
    monkeypatch.setattr(core.memory, "available_ram", lambda: 10_000)  # 5,000 bytes plannable on a CPU
    assert plan("cpu", 10, default=100) == 100  # room for 500: the CPU default bounds it
    assert plan("cpu", 100, default=100) == 50
    assert plan("cpu", 1_000, default=100, floor=8) == 8  # room for 5: the floor
    assert plan("cpu", 100, default=100, reserved=4_000) == 10
    assert plan("cpu", 1_000, default=4, floor=8) == 4  # never above the CPU default
    monkeypatch.setattr(core.memory, "free_memory", lambda device: 10_000)  # a GPU: free memory decides
    assert plan("cuda", 10, default=100) == 600
    assert plan("cuda", 10, default=100, ceiling=250) == 250
    assert plan("cuda", 10**6, default=100, floor=3) == 3


def test_out_of_memory_errors_are_recognised_and_halved_to_a_floor():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("out of memory"))
    chunk = ChunkSize(10, 3, "testing", "rows", "cpu")
    chunk.halve(torch.OutOfMemoryError("x"))
    assert chunk.size == 5
    chunk.halve(torch.OutOfMemoryError("x"))
    assert chunk.size == 3
    with pytest.raises(LocusError, match="Out of memory on cpu while testing even with 3 rows per batch"):
        chunk.halve(torch.OutOfMemoryError("x"))
    with pytest.raises(ValueError):
        ChunkSize(10, 1, "testing", "rows", "cpu").halve(ValueError("not memory"))
    with pytest.raises(LocusError, match="while loading"), out_of_memory_as_error("loading", "cpu"):
        raise torch.OutOfMemoryError("x")


def test_model_shape_reads_the_layout_and_config(tiny):
    shape = ModelShape.of(tiny("llama"))
    assert (shape.layers, shape.hidden, shape.mlp, shape.heads, shape.kv_width, shape.element) == (3, 32, 64, 4, 16, 4)
    assert shape.training_token_bytes(2, 10) > shape.forward_token_bytes(10) > 0


# --- injected out-of-memory errors -------------------------------------------------------------

def test_trace_halves_its_chunks_and_gets_the_same_scores(tiny):
    loaded = tiny("qwen2")
    settings = TraceSettings(samples=2, window=2, noise=0.5)
    problem = prepare_trace(loaded, TINY_PROMPT, "Eiffel Tower", settings)
    low, whole = fast_scores(loaded, problem)
    with out_of_memory_above(loaded, limit=3 * settings.samples * problem.num_tokens) as raised:
        halved_low, halved = fast_scores(loaded, problem)
    assert raised[0] > 0 and halved_low == low
    for key, value in whole.items():
        assert halved[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    # below one cell: a plain message, and the model is clean
    tracer = FastTracer(loaded, problem)
    tracer.corrupted_run()
    computed = next(step for step in tracer.steps() if step.fill is None)
    with out_of_memory_above(loaded, limit=1), pytest.raises(LocusError, match="Out of memory on cpu while tracing"):
        tracer.run_step(computed)
    assert hook_count(loaded.model) == 0 and no_stubbed_forwards(loaded.model)


def test_targets_halve_requests_and_passes_and_memit_fails_plainly_at_the_floor(tiny):
    loaded = tiny("llama")
    hparams = MemitSettings(layers=(0, 1), steps=3, prefix_tokens=5, cov_tokens=300, prefix_starts=("The", "I"))
    prefixes = context_prefixes(loaded, hparams)
    whole = compute_targets(loaded, REQUESTS, hparams, prefixes)
    with out_of_memory_above(loaded, limit=60, layer=2) as raised:  # one request's rows, not three
        halved = compute_targets(loaded, REQUESTS, hparams, prefixes)
    assert raised[0] > 0
    scale = float(whole.targets.norm(dim=-1).max())
    assert torch.allclose(halved.targets, whole.targets, atol=1e-4 * scale)
    assert [d.steps for d in halved.diagnostics] == [d.steps for d in whole.diagnostics]
    covariances = layer_covariances(loaded, list(hparams.layers), hparams.cov_tokens)
    before = weights_hash(loaded, hparams.layers)
    with out_of_memory_above(loaded, limit=1, layer=2), pytest.raises(LocusError, match="Out of memory on cpu while"):
        Memit(hparams).compute(loaded, REQUESTS, covariances=covariances)
    assert weights_hash(loaded, hparams.layers) == before and hook_count(loaded.model) == 0
    assert no_stubbed_forwards(loaded.model)


def test_covariance_halves_its_batches_and_gets_the_same_sums(tiny, tmp_path, monkeypatch):
    import editor.statistics.covariance as covariance

    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    monkeypatch.setattr(covariance, "_MEMORY", {})
    loaded = tiny("gpt2")
    whole = layer_covariances(loaded, [0, 2], 1500, use_cache=False)
    with out_of_memory_above(loaded, limit=300) as raised:  # two texts of ~200 tokens, not one
        halved = layer_covariances(loaded, [0, 2], 1500, use_cache=False)
    assert raised[0] > 0
    for layer in (0, 2):
        expected = whole.covariances[layer]
        assert torch.allclose(halved.covariances[layer], expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    monkeypatch.setattr(covariance, "_MEMORY", {})  # computed again, with the disk cache on
    with out_of_memory_above(loaded, limit=1), pytest.raises(LocusError, match="covariance statistics"):
        layer_covariances(loaded, [0, 2], 1500, checkpoint_seconds=0)
    assert not list(tmp_path.rglob("*.safetensors")) and hook_count(loaded.model) == 0


def test_keys_and_scores_halve_their_rows_with_the_same_results(tiny):
    loaded = tiny("opt")
    prefixes = ["", "Some text. ", "Another longer text here. "]
    keys = request_keys(loaded, REQUESTS, prefixes, [0, 2], hidden_layer=2)
    pairs = [(request.text, request.target_new) for request in REQUESTS] + [("The sky is", " blue and wide")]
    scores = teacher_forced(loaded, pairs)
    with out_of_memory_above(loaded, limit=30) as raised:
        halved_keys = request_keys(loaded, REQUESTS, prefixes, [0, 2], hidden_layer=2)
        halved_scores = teacher_forced(loaded, pairs)
    assert raised[0] >= 2
    for layer in (0, 2):
        assert torch.allclose(halved_keys.keys[layer], keys.keys[layer], atol=1e-6)
    assert torch.allclose(halved_keys.hidden, keys.hidden, atol=1e-6)
    for (nll, hit), (halved_nll, halved_hit) in zip(scores, halved_scores):
        assert halved_nll == pytest.approx(nll, rel=1e-5) and halved_hit == hit
    with out_of_memory_above(loaded, limit=1), pytest.raises(LocusError, match="even with one row"):
        teacher_forced(loaded, pairs)
    assert hook_count(loaded.model) == 0
