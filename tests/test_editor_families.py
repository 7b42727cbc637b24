"""MEMIT's keys, targets and updates on tiny random models of every family (GPT-2's transposed Conv1D included)."""

from __future__ import annotations

import pytest
import torch

from core.hooks import capture_inputs, sequence_view
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.edits.weights import projection_weight, weights_hash
from editor.methods.alphaedit import AlphaEdit, AlphaEditSettings
from editor.methods.keys import request_keys
from editor.methods.memit import Memit, MemitSettings
from editor.methods.prefixes import context_prefixes
from editor.methods.rome import Rome, RomeSettings
from editor.methods.targets import compute_targets
from editor.methods.updates import null_space_profile
from editor.statistics.covariance import layer_covariances
from ui.editing import NULLSPACE_COLUMNS, diagnostics_tables

REQUESTS = [
    EditRequest("Eiffel Tower", "The {} is located in the city of", "Rome"),
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English"),
    EditRequest("Colosseum", "{} is in", "London Town"),
]


# Several families with different block shapes: GPT-2 (transposed Conv1D), GPT-J and NeoX (parallel attention
# and MLP), Llama (gated MLP), Gemma 3 (a norm after the MLP), OPT (flattened MLP). Keys are checked on all.
SEVERAL = ["gpt2", "gptj", "gpt_neox", "llama", "gemma3_text", "opt"]


def tiny_hparams(**changes) -> MemitSettings:
    # only the empty prefix: the plain prompt's key is then the key, so the update can meet z exactly
    return MemitSettings(layers=(1, 2), cov_tokens=300, mom2_weight=1e-4, steps=8, prefix_starts=()).replace(**changes)


def test_keys_are_the_projection_inputs_at_the_last_subject_token(family, tiny):
    loaded = tiny(family)
    hparams = MemitSettings(layers=(0, 2), prefix_tokens=4)
    prefixes = context_prefixes(loaded, hparams)
    assert prefixes[0] == "" and all(p.endswith(". ") for p in prefixes[1:]) and len(prefixes) == 6
    keys = request_keys(loaded, REQUESTS[:2], prefixes, [0, 2]).keys
    name = loaded.layout.mlp_output_projection(2)
    for index, request in enumerate(REQUESTS[:2]):
        collected = []
        for prefix in prefixes:
            text = prefix + request.text
            ids = loaded.tokenizer(text)["input_ids"]
            subject_end = len(prefix) + request.prompt.index("{}") + len(request.subject)
            last = max(i for i, (s, e) in enumerate(loaded.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]) if e > s and s < subject_end)
            with torch.no_grad(), capture_inputs(loaded.model, [name]) as inputs:
                loaded.model(torch.tensor([ids]))
            collected.append(sequence_view(inputs[name], 1, len(ids))[0, last])
        expected = torch.stack(collected).mean(0)
        assert torch.allclose(keys[2][index], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", SEVERAL)
def test_cached_and_full_target_engines_agree(model_type, tiny):
    loaded = tiny(model_type)
    hparams = MemitSettings(layers=(1,), steps=4, prefix_tokens=5, target_batch_requests=2)
    prefixes = context_prefixes(loaded, hparams)
    cached = compute_targets(loaded, REQUESTS, hparams, prefixes, engine="cached")
    full = compute_targets(loaded, [REQUESTS[2]], hparams, prefixes, engine="full")
    scale = float(full.targets[0].norm())
    assert torch.allclose(cached.targets[2], full.targets[0], atol=1e-4 * scale)
    assert cached.diagnostics[2].losses == pytest.approx(full.diagnostics[0].losses, rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
@pytest.mark.parametrize("where", ["first", "last"])
def test_cached_engine_at_the_first_and_last_block(model_type, where, tiny):
    """The cached engine runs blocks l_R+1.. only: none when l_R is the last block, all but one when it is 0."""
    loaded = tiny(model_type)
    layer = 0 if where == "first" else loaded.layout.num_layers - 1
    hparams = MemitSettings(layers=(layer,), steps=3, prefix_tokens=5)
    prefixes = context_prefixes(loaded, hparams)
    cached = compute_targets(loaded, REQUESTS, hparams, prefixes, engine="cached")
    full = compute_targets(loaded, REQUESTS, hparams, prefixes, engine="full")
    scale = float(full.hidden.norm(dim=-1).max())
    assert torch.allclose(cached.hidden, full.hidden, atol=1e-5 * scale)
    for ours, theirs in zip(cached.diagnostics, full.diagnostics):
        assert ours.losses[0] == pytest.approx(theirs.losses[0], rel=1e-5)
    if where == "first":
        assert torch.allclose(cached.targets, full.targets, atol=1e-4 * scale)
    # At the last block delta reaches no later position, so the NLL has no gradient and Adam's first steps
    # follow the KL's rounding-level gradient at its minimum: the engines then agree on the loss only.


def test_cached_engine_when_some_requests_stop_early(tiny):
    """A request that reaches the stopping loss leaves the batch; the others go on with a subset of the rows."""
    loaded = tiny("llama")
    first_step = MemitSettings(layers=(1,), steps=1, prefix_tokens=5)
    prefixes = context_prefixes(loaded, first_step)
    losses = sorted(d.losses[0] for d in compute_targets(loaded, REQUESTS, first_step, prefixes, engine="full").diagnostics)
    hparams = first_step.replace(steps=4, loss_stop=(losses[0] + losses[1]) / 2)  # the lowest stops at once
    cached = compute_targets(loaded, REQUESTS, hparams, prefixes, engine="cached")
    full = compute_targets(loaded, REQUESTS, hparams, prefixes, engine="full")
    steps = [d.steps for d in cached.diagnostics]
    assert steps == [d.steps for d in full.diagnostics] and min(steps) == 0 and max(steps) == 3
    scale = float(full.targets.norm(dim=-1).max())
    assert torch.allclose(cached.targets, full.targets, atol=1e-4 * scale)


@pytest.mark.parametrize("model_type", SEVERAL)
def test_memit_update_meets_the_targets_and_leaves_weights_alone(model_type, tiny):
    loaded = tiny(model_type)
    hparams = tiny_hparams()
    layers = list(hparams.layers)
    before = weights_hash(loaded, layers)
    covariances = layer_covariances(loaded, layers, hparams.cov_tokens)
    batch = Memit(hparams).compute(loaded, REQUESTS, covariances=covariances)
    assert weights_hash(loaded, layers) == before
    layout = loaded.layout
    for layer in layers:
        delta = batch.deltas[layer]
        assert delta.shape == (layout.hidden_size, layout.mlp_size) and torch.isfinite(delta).all()
        assert delta.abs().max() > 0
    # with lambda ~ 0 and the plain keys, MEMIT writes the whole residual: h at l_R reaches z, unless a norm
    # sits between the MLP output and the residual (Gemma 2/3), which the edit then says
    if layout.mlp_output_norm:
        assert any("normalizes each MLP's output" in warning for warning in batch.warnings)
    else:
        assert batch.final_residual_norm < 0.02 * batch.layer_diagnostics[0].residual_norm
    # the delta acts on the projection module's output as Delta @ k (checks GPT-2's transposed Conv1D)
    module = loaded.model.get_submodule(layout.mlp_output_projection(layers[-1]))
    probe = torch.randn(1, layout.mlp_size)
    with torch.no_grad():
        plain = module(probe)
    ledger = EditLedger.for_model(loaded)
    ledger.add(batch, loaded)
    with ledger.applied(loaded), torch.no_grad():
        edited = module(probe)
        assert not torch.equal(projection_weight(loaded, layers[-1]), batch.deltas[layers[-1]])
    expected = probe @ batch.deltas[layers[-1]].T
    assert torch.allclose(edited - plain, expected, atol=1e-4 * float(expected.abs().max()) + 1e-6)
    assert weights_hash(loaded, layers) == before


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_rome_is_rank_one_and_writes_the_value_at_the_key(model_type, tiny):

    loaded = tiny(model_type)
    hparams = tiny_hparams(layers=(1,), steps=4)
    covariances = layer_covariances(loaded, [1], hparams.cov_tokens)
    batch = Rome(RomeSettings.from_dict(hparams.to_dict())).compute(loaded, REQUESTS[:1], covariances=covariances)
    delta = batch.deltas[1].double()
    singular = torch.linalg.svdvals(delta)
    assert singular[1] < 1e-5 * singular[0]
    key = request_keys(loaded, REQUESTS[:1], [""], [1]).keys[1][0].double()
    assert float((delta @ key).norm()) == pytest.approx(batch.request_diagnostics[0].delta_norm, rel=1e-4)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_alphaedit_leaves_the_preserved_key_space_alone(model_type, tiny):
    loaded = tiny(model_type)
    hparams = AlphaEditSettings.from_dict(tiny_hparams(layers=(2,)).to_dict())
    covariances = layer_covariances(loaded, [2], hparams.cov_tokens)
    covariance = covariances.covariances[2]
    values, vectors = torch.linalg.eigh(covariance)
    # Thresholds sit far from every eigenvalue: the code finds C's spectrum with its own call, and two
    # eigensolver runs (or CPUs) may differ by about eps * lambda_max (Weyl), so a threshold within that of an
    # eigenvalue could count it on either side. Split at the widest gap of the middle half of the spectrum.
    margin = 1e-9 * float(values[-1])
    half = max(range(len(values) // 4, 3 * len(values) // 4), key=lambda i: float(values[i] - values[i - 1]))
    assert float(values[half] - values[half - 1]) > 2 * margin
    threshold = float(values[half - 1] + values[half]) / 2  # about half the directions preserved, the rest free
    batch = AlphaEdit(hparams.replace(nullspace_threshold=threshold)).compute(loaded, REQUESTS, covariances=covariances)
    delta = batch.deltas[2].double()
    preserved = vectors[:, values >= threshold]
    assert float((delta @ preserved).norm()) < 1e-6 * float(delta.norm())
    assert float(delta.norm()) > 0
    # the diagnostics say how null the null space is, counted here from C's spectrum directly
    (diagnostics,) = batch.layer_diagnostics
    free = values < threshold
    assert diagnostics.nullspace_size == int(free.sum()) == null_space_profile(covariance, [threshold])[0][0]
    assert diagnostics.nullspace_energy == pytest.approx(float(values[free].clamp_min(0).sum() / values.clamp_min(0).sum()))
    assert 0 < diagnostics.nullspace_key_share < 1
    assert null_space_profile(covariance, [float(values[0]) - margin, float(values[-1]) * 2]) == [(0, 0.0), (len(values), 1.0)]
    per_layer = diagnostics_tables(batch)[1].value  # the Edit tab shows them beside the other per-layer figures
    assert per_layer["headers"][-3:] == NULLSPACE_COLUMNS
    assert per_layer["data"][0][-3:] == [diagnostics.nullspace_size, round(diagnostics.nullspace_energy, 3),
                                         round(diagnostics.nullspace_key_share, 3)]
