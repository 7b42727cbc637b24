"""The lifelong editors NAS, RLSEdit and UltraEdit (docs/LIFELONG.md): each one's defining property, exact undo and
export/import of its per-ledger state, and the command line's flags for them."""

from __future__ import annotations

import math

import pytest
import torch

import editor.methods.memit as memit_module
import editor.methods.nas as nas_module
import editor.methods.targets as targets_module
from core.errors import InputError
from core.facts import load_known_facts
from core.loading import from_parts
from core.paths import ASSETS
from core.predict import predict_next_tokens
from editor.cli import _method, build_parser
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.evaluation.counterfact import load_records
from editor.methods.nas import (
    Nas,
    NasSettings,
    anchor_norm,
    anchor_path,
    anchored_targets,
    mlp_outputs,
    trimmed_mean,
)
from editor.methods.registry import METHOD_NAMES, method_for
from editor.methods.rlsedit import (
    RlsEdit,
    RlsEditSettings,
    rls_factors,
    rls_prior,
    spd_inverse,
    woodbury_step,
)
from editor.methods.targets import compute_targets
from editor.methods.ultraedit import (
    SUMMARY_KEY,
    FeatureStatistics,
    UltraEdit,
    UltraEditSettings,
    key_statistics,
    ledger_statistics,
)
from editor.statistics.covariance import layer_covariances
from tests.tiny_models import tiny_model

LAYERS = (1, 2)
BATCHES = [
    [EditRequest("Eiffel Tower", "The {} is in", "Rome"), EditRequest("Louvre", "The {} is in", "Berlin")],
    [EditRequest("Colosseum", "{} is in", "London"), EditRequest("Big Ben", "{} is in", "Tokyo")],
    [EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English")],
]
SHARED = dict(layers=LAYERS, cov_tokens=300, steps=3, prefix_starts=())  # no context prefixes: nothing to generate
METHODS = {
    "nas": lambda: Nas(NasSettings(**SHARED, anchor_samples=6)),
    "rlsedit": lambda: RlsEdit(RlsEditSettings(**SHARED, mom2_weight=1e-2)),
    "ultraedit": lambda: UltraEdit(UltraEditSettings(**SHARED, step_size=1e-2, edits_per_pass=2)),
}


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """NAS's anchors and the tiny model's covariances in a cache of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCUS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def loaded(tokenizer):
    """A private tiny Llama (these tests change and restore its weights many times)."""
    return from_parts(tiny_model("llama"), tokenizer, spec="tiny-llama-lifelong-methods")


@pytest.fixture(scope="module")
def covariances(loaded):
    return layer_covariances(loaded, list(LAYERS), 300)


def weights_of(loaded, layers=LAYERS) -> dict[int, torch.Tensor]:
    return {layer: loaded.layout.output_projection_weight(loaded.model, layer).detach().clone() for layer in layers}


def stream(method, loaded, covariances, batches=BATCHES) -> EditLedger:
    """Batch after batch, each computed on the ledger of the earlier ones."""
    ledger = EditLedger.for_model(loaded)
    for requests in batches:
        ledger.add(method.compute(loaded, requests, ledger, covariances), loaded)
    return ledger


def same_bits(first, second) -> bool:
    return set(first.deltas) == set(second.deltas) and all(torch.equal(first.deltas[layer], second.deltas[layer]) for layer in first.deltas)


# --- NAS ----------------------------------------------------------------------------------------------


def test_nas_keeps_value_vector_norms_at_the_anchor(loaded, covariances):
    nas = METHODS["nas"]()
    anchor = anchor_norm(loaded, nas.settings)
    requests = BATCHES[0] + BATCHES[1]
    prefixes = [""]
    targets = compute_targets(loaded, requests, nas.settings, prefixes)
    v0 = mlp_outputs(loaded, requests, nas.settings.target_layer)
    # v0 is the MLP's output at the subject's last token: h (block l_R's output) = its input + attention + v0
    raw = (v0 + targets.targets.double() - targets.hidden.double()).norm(dim=-1)
    assert anchor > 0 and bool((raw < nas.settings.skip_factor * anchor).all())
    adjusted, notes = nas.adjust_targets(loaded, requests, prefixes, targets, anchor)
    assert notes == []
    written = (adjusted.targets.double() - adjusted.hidden.double() + v0).norm(dim=-1)  # v* as the solve writes it
    assert torch.allclose(written, torch.full_like(written, anchor), rtol=1e-5)
    directions = (adjusted.targets.double() - adjusted.hidden.double() + v0) / written.unsqueeze(-1)
    assert torch.allclose(directions, (v0 + targets.targets.double() - targets.hidden.double()) / raw.unsqueeze(-1), atol=1e-5)
    # a value vector longer than skip_factor x the anchor is not written at all (z = h)
    ordered = raw.sort().values
    outlier_anchor = float(ordered[-1] + ordered[-2]) / (2 * nas.settings.skip_factor)  # only the longest is above 2A
    rescaled, skipped = anchored_targets(targets, v0, outlier_anchor, nas.settings.skip_factor)
    assert skipped == [int(raw.argmax())]
    assert torch.equal(rescaled.targets[skipped[0]], targets.hidden[skipped[0]])
    kept = [i for i in range(len(requests)) if i not in skipped]
    written = (rescaled.targets.double() - rescaled.hidden.double() + v0).norm(dim=-1)[kept]
    assert torch.allclose(written, torch.full_like(written, outlier_anchor), rtol=1e-5)
    assert trimmed_mean(torch.arange(1.0, 21.0), 0.95) == pytest.approx(10.0)  # 20 norms: the largest one left out


def test_nas_anchor_cache_key_follows_the_target_settings(loaded):
    """An anchor depends on how the reference targets were optimized: first_step changes its file, not its absence."""
    settings = METHODS["nas"]().settings
    records = ASSETS / "lifelong_counterfact.json"
    default = anchor_path(loaded, settings, records)
    assert anchor_path(loaded, settings.replace(first_step=0.5), records) != default
    assert anchor_path(loaded, settings.replace(first_step=0.0), records) == default


def test_nas_anchors_to_the_original_model_whatever_the_ledger(loaded, covariances):
    nas = METHODS["nas"]()
    original = anchor_norm(loaded, nas.settings, use_cache=False)
    assert anchor_norm(loaded, nas.settings) == original  # cached, the same number
    ledger = stream(nas, loaded, covariances, BATCHES[:1])
    with ledger.applied(loaded):
        assert anchor_norm(loaded, nas.settings) != original  # the edited model has other norms (never cached)
    seen = []

    class Recording(Nas):
        def adjust_targets(self, loaded, requests, prefixes, targets, statistics):
            seen.append(statistics)
            return super().adjust_targets(loaded, requests, prefixes, targets, statistics)

    Recording(nas.settings).compute(loaded, BATCHES[1], ledger, covariances)
    assert seen == [original]  # measured before the ledger's edits were applied


# --- RLSEdit ------------------------------------------------------------------------------------------


def test_rls_recursion_is_the_batch_least_squares_solution_in_float64():
    """Woodbury steps over a stream of 3 batches = the closed-form solution of the stream's objective (1e-10)."""
    generator = torch.Generator().manual_seed(0)
    d, m = 5, 8
    basis = torch.randn(m, m, dtype=torch.float64, generator=generator)
    covariance = basis @ basis.T / m + 0.1 * torch.eye(m, dtype=torch.float64)
    w0 = torch.randn(d, m, dtype=torch.float64, generator=generator)
    keys = [torch.randn(n, m, dtype=torch.float64, generator=generator) for n in (2, 3, 2)]  # K_s^T
    values = [torch.randn(n, d, dtype=torch.float64, generator=generator) for n in (2, 3, 2)]  # V_s^T
    prior = rls_prior(covariance, mom2_weight=2.0, mu=0.7, lam=0.3)
    inverse, weights, gram = spd_inverse(prior), w0.clone(), torch.zeros(m, m, dtype=torch.float64)
    for step, (key, value) in enumerate(zip(keys, values)):
        residual = value - key @ weights.T  # (V_t - W_{t-1} K_t)^T
        left, right = rls_factors(residual, key, covariance, 2.0, 0.7, 0.3, gram if step else None)  # state from the keys
        inverse, gain = woodbury_step(inverse, key)  # state carried recursively
        assert torch.allclose(right, gain.T, rtol=0, atol=1e-12)
        weights = weights + left @ right
        gram = gram + key.T @ key
    stacked_keys, stacked_values = torch.cat(keys), torch.cat(values)
    batch = w0 + (stacked_values - stacked_keys @ w0.T).T @ stacked_keys @ torch.linalg.inv(prior + gram)
    assert float((weights - batch).abs().max()) <= 1e-10 * float(batch.abs().max())
    assert torch.allclose(inverse, torch.linalg.inv(prior + gram), rtol=0, atol=1e-10)


def test_rlsedit_over_a_stream_is_the_batch_least_squares_solution(loaded, covariances):
    """The ledger's three RLSEdit batches sum to the least-squares solution over the stream of their (K_s, V_s).

    V_s = W_{s-1} K_s + D_s: the keys' outputs on the weights batch s was computed on, plus its residual share.
    The weights are float32 and each delta is kept as float32 factors, so the two agree to float32 rounding:
    within 1e-5 of the solution's norm (measured: 6e-8).
    """
    problems = []

    class Recording(RlsEdit):
        def layer_factors(self, problem):
            problems.append(problem)
            return super().layer_factors(problem)

    method = Recording(METHODS["rlsedit"]().settings)
    settings = method.settings
    original = weights_of(loaded)
    ledger = stream(method, loaded, covariances)
    assert len(problems) == len(BATCHES) * len(LAYERS)
    for index, layer in enumerate(LAYERS):
        asked = problems[index :: len(LAYERS)]  # this layer's (K_s, D_s), batch by batch
        prior = rls_prior(covariances.covariances[layer], settings.mom2_weight, settings.mu_reg, settings.lambda_reg)
        gram = sum(problem.keys.T @ problem.keys for problem in asked)
        moment = torch.zeros_like(original[layer], dtype=torch.float64)
        for batch_index, problem in enumerate(asked):
            earlier = EditLedger.for_model(loaded)
            for batch in list(ledger)[:batch_index]:
                earlier.add(batch)
            with earlier.applied(loaded):
                before = weights_of(loaded)[layer].double()  # W_{s-1}, the bits batch s was computed on
            values = problem.keys @ before.T + problem.residual  # V_s^T
            moment += (values - problem.keys @ original[layer].double().T).T @ problem.keys
        solution = moment @ torch.linalg.inv(prior + gram)  # W* - W_0
        with ledger.applied(loaded):
            recursive = weights_of(loaded)[layer].double() - original[layer].double()
        assert float((recursive - solution).norm()) <= 1e-5 * float(solution.norm())
    assert ledger.batches[1].settings["mom2_weight"] == settings.mom2_weight


# --- UltraEdit ----------------------------------------------------------------------------------------


def test_ultraedit_needs_no_optimisation_loop(loaded, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("UltraEdit must not optimise target vectors")

    for module in (targets_module, memit_module, nas_module):
        monkeypatch.setattr(module, "compute_targets", refuse)
    passes = {"forward": 0, "backward": 0}
    backward = torch.Tensor.backward

    def counted_backward(self, *args, **kwargs):
        passes["backward"] += 1
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counted_backward)
    handle = loaded.model.register_forward_pre_hook(lambda module, args: passes.__setitem__("forward", passes["forward"] + 1))
    try:
        method = METHODS["ultraedit"]()  # 2 requests per pass
        requests = BATCHES[0] + BATCHES[2]
        batch = method.compute(loaded, requests)
    finally:
        handle.remove()
    groups = math.ceil(len(requests) / method.settings.edits_per_pass)
    assert passes == {"backward": groups, "forward": 2 * groups}  # one gradient pass, one check pass per group
    rows = sum(len(request.target_ids(loaded.tokenizer)) for request in requests)  # one row per answer token
    assert all(batch.keys[layer].shape == (rows, loaded.layout.mlp_size) for layer in LAYERS)
    assert batch.settings[SUMMARY_KEY]["rows"] == rows * len(LAYERS)  # one normaliser pooled over the layers
    assert all(len(d.losses) == 2 and d.steps == 1 for d in batch.request_diagnostics)  # before and after the one step
    assert all(d.losses[1] < d.losses[0] for d in batch.request_diagnostics)


def test_ultraedit_runs_a_sequence_without_covariance_statistics(loaded, monkeypatch):
    """UltraEdit has no C: a sequential run never measures it (and `unused_settings` names its budget)."""
    import editor.studies.sequential as sequential_module

    def refuse(*args, **kwargs):
        raise AssertionError("UltraEdit uses no covariance statistics")

    monkeypatch.setattr(sequential_module, "layer_covariances", refuse)
    records = load_records(ASSETS / "lifelong_counterfact.json")[:2]
    probes = load_known_facts()[:3]
    texts = ("The city of Paris is the capital of France and its largest city.",) * 2
    run, ledger = sequential_module.run_sequential(loaded, records, METHODS["ultraedit"](), 1, 2, probes=probes, texts=texts,
                                                   by_generation=False)
    assert len(run.batches) == 2 and len(ledger) == 2 and not run.stopped
    assert not UltraEdit.uses_covariance and {"cov_tokens", "corpus"} <= set(UltraEdit.unused_settings)
    assert all(cls.uses_covariance for cls in (Nas, RlsEdit))


def test_ultraedit_normalisation_follows_the_ledger(loaded, tmp_path):
    method = METHODS["ultraedit"]()
    ledger = stream(method, loaded, None, BATCHES[:2])
    first, second = ledger.batches
    m, d = loaded.layout.mlp_size, loaded.layout.hidden_size
    statistics = ledger_statistics(ledger, m, d)
    keys = torch.cat([batch.keys[layer] for batch in (first, second) for layer in LAYERS])
    assert statistics.count == keys.shape[0]
    assert torch.allclose(statistics.mean[:m], keys.double().mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(statistics.m2[:m], ((keys.double() - keys.double().mean(0)) ** 2).sum(0), rtol=1e-10, atol=1e-12)
    gradients = FeatureStatistics.from_dict(first.settings[SUMMARY_KEY]).merged(FeatureStatistics.from_dict(second.settings[SUMMARY_KEY]))
    assert torch.equal(statistics.mean[m:], gradients.mean) and torch.equal(statistics.m2[m:], gradients.m2)
    # undo then redo: the same bits
    third = method.compute(loaded, BATCHES[2], ledger)
    ledger.add(third, loaded)
    ledger.undo()
    assert same_bits(method.compute(loaded, BATCHES[2], ledger), third)
    # undoing the middle batch takes its features out: the statistics are the first batch's alone
    ledger.add(third, loaded)
    ledger.undo(second.batch_id)
    alone = key_statistics(first.keys).joined(FeatureStatistics.from_dict(first.settings[SUMMARY_KEY]))
    after = ledger_statistics(ledger, m, d).merged(FeatureStatistics.empty(m + d))
    expected = FeatureStatistics.empty(m + d).merged(alone).merged(key_statistics(third.keys).joined(
        FeatureStatistics.from_dict(third.settings[SUMMARY_KEY])))
    assert torch.equal(after.mean, expected.mean) and torch.equal(after.m2, expected.m2)
    # export/import keeps the state: the next batch has the same bits
    imported = EditLedger.load(ledger.save(tmp_path / "ultra.safetensors"), loaded)
    restored = ledger_statistics(imported, m, d)
    assert torch.equal(restored.mean, after.mean) and torch.equal(restored.m2, after.m2)
    assert same_bits(method.compute(loaded, BATCHES[1], imported), method.compute(loaded, BATCHES[1], ledger))


# --- all three: exact undo, export/import --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_undo_of_a_middle_batch_is_exact_and_export_keeps_the_state(name, loaded, covariances, tmp_path):
    method = METHODS[name]()
    original = weights_of(loaded)
    ledger = stream(method, loaded, covariances)
    first, middle, last = ledger.batches
    assert all(batch.method == name for batch in ledger)
    ledger.undo(middle.batch_id)
    expected = {layer: (original[layer] + first.deltas[layer]) + last.deltas[layer] for layer in LAYERS}
    fresh = EditLedger.for_model(loaded)
    fresh.add(first)
    fresh.add(last)
    for candidate in (ledger, fresh):  # rebuilt after the undo, and from the original weights
        with candidate.applied(loaded):
            assert all(torch.equal(weights_of(loaded)[layer], expected[layer]) for layer in LAYERS)
    assert all(torch.equal(weights_of(loaded)[layer], original[layer]) for layer in LAYERS)
    imported = EditLedger.load(ledger.save(tmp_path / f"{name}.safetensors"), loaded)
    with imported.applied(loaded):
        assert all(torch.equal(weights_of(loaded)[layer], expected[layer]) for layer in LAYERS)
    # the per-ledger state (K_p K_p^T; UltraEdit's statistics) came along: the next batch has the same bits
    assert all(torch.equal(imported.key_grams(LAYERS)[layer], ledger.key_grams(LAYERS)[layer]) for layer in LAYERS)
    assert same_bits(method.compute(loaded, BATCHES[1], imported, covariances), method.compute(loaded, BATCHES[1], ledger, covariances))


# --- where they are used ------------------------------------------------------------------------------


def test_the_methods_take_flags_settings_and_the_edit_tabs_fields(loaded):
    assert {"nas", "rlsedit", "ultraedit"} <= set(METHOD_NAMES)
    parser = build_parser()

    def chosen(*flags):
        return _method(parser.parse_args(["edit", "--subject", "s", "--prompt", "{} is", "--target-new", "x", *flags]), loaded, LAYERS)

    assert chosen("--method", "ultraedit", "--step-size", "1e-3").settings.step_size == 1e-3
    assert chosen("--method", "rlsedit", "--lambda", "1500", "--set", "lambda_reg=2").settings.mom2_weight == 1500
    assert chosen("--method", "rlsedit", "--set", "lambda_reg=2").settings.lambda_reg == 2.0
    assert chosen("--method", "nas", "--set", "anchor_samples=100", "--l2", "5").settings.anchor_samples == 100
    with pytest.raises(InputError, match="--step-size"):
        chosen("--method", "memit", "--step-size", "1e-3")
    with pytest.raises(InputError, match="soft constraint"):
        chosen("--method", "rlsedit", "--set", "mu_reg=0")
    for name in ("nas", "rlsedit", "ultraedit"):  # what the app's Edit tab sends with every method
        method_for(loaded.layout, name, layers=LAYERS, steps=25, lr=0.5, kl_factor=0.0625, clamp_norm=0.75)


def test_ultraedit_flips_real_predictions(embedded):
    """The embedded SmolLM2: 3 dev-set requests at late layers (as the paper's down_proj edits) and a step size for
    a 135M model (the paper's 1e-6 is for 7B: see docs/LIFELONG.md)."""
    requests = [record.request() for record in load_records(ASSETS / "devset_smollm2-135m-instruct.json")[:3]]
    method = UltraEdit.for_model(embedded.layout, layers=(24, 25, 26, 27, 28), step_size=1e-3)
    ledger = EditLedger.for_model(embedded)
    ledger.add(method.compute(embedded, requests), embedded)
    new = [request.target_ids(embedded.tokenizer)[0] for request in requests]
    assert [predict_next_tokens(embedded, r.text, 1)[0].token_id for r in requests] != new
    with ledger.applied(embedded):
        assert [predict_next_tokens(embedded, r.text, 1)[0].token_id for r in requests] == new
