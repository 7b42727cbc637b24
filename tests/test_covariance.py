"""Covariance statistics C_l = E[k k^T]: exact against a direct computation, cached, resumable, diagnostics."""

from __future__ import annotations

import pytest
import torch

from core.facts import model_key
from core.hooks import capture_inputs, sequence_view
from editor.statistics.corpus import load_corpus
from editor.statistics.covariance import (
    CovarianceKey,
    add_second_moment,
    covariance_warnings,
    layer_covariances,
    spectrum_diagnostics,
)
from tests.test_editor_support import shared_covariances

BUDGET = 1500  # tokens; ends inside a text, so the cut of the last text is exercised too


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty LOCUS_CACHE for this test (the in-memory cache is keyed by path-independent keys, so clear it)."""
    import editor.statistics.covariance as covariance

    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    monkeypatch.setattr(covariance, "_MEMORY", {})
    return tmp_path


def direct_second_moments(loaded, layers, budget):
    """E[k k^T] the obvious way: one text at a time, float64 throughout."""
    corpus = load_corpus()
    names = {layer: loaded.layout.mlp_output_projection(layer) for layer in layers}
    totals = {layer: torch.zeros(loaded.layout.mlp_size, loaded.layout.mlp_size, dtype=torch.float64) for layer in layers}
    seen = 0
    for text in corpus.texts:
        ids = list(loaded.tokenizer(text)["input_ids"])[: loaded.max_length]
        take = min(len(ids), budget - seen)
        with torch.no_grad(), capture_inputs(loaded.model, list(names.values())) as inputs:
            loaded.model(torch.tensor([ids]))
        for layer, name in names.items():
            keys = sequence_view(inputs[name], 1, len(ids))[0, :take].double()
            totals[layer] += keys.T @ keys
        seen += take
        if seen >= budget:
            break
    return {layer: total / seen for layer, total in totals.items()}


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "opt"])
def test_tiny_covariance_equals_direct_computation(model_type, tiny, fresh_cache):
    loaded = tiny(model_type)
    result = layer_covariances(loaded, [0, 2], BUDGET, checkpoint_seconds=0)
    expected = direct_second_moments(loaded, [0, 2], BUDGET)
    for layer in (0, 2):
        got = result.covariances[layer]
        assert got.dtype == torch.float64 and got.shape == (loaded.layout.mlp_size,) * 2
        assert torch.allclose(got, expected[layer], rtol=1e-5, atol=1e-6 * float(expected[layer].abs().max()))
        assert result.diagnostics[layer].tokens == BUDGET
    assert sorted(result.computed_layers) == [0, 2]
    again = layer_covariances(loaded, [0, 2], BUDGET)
    assert again.computed_layers == []  # served from the cache
    assert torch.equal(again.covariances[0], result.covariances[0])


def test_interrupted_pass_resumes_and_larger_budget_extends(tiny, fresh_cache):
    loaded = tiny("llama")
    corpus = load_corpus()

    class Interrupt(Exception):
        pass

    def stop_halfway(fraction, message):
        if fraction > 0.5:
            raise Interrupt

    with pytest.raises(Interrupt):
        layer_covariances(loaded, [1], BUDGET, progress=stop_halfway, checkpoint_seconds=0)
    key = CovarianceKey(model_key(loaded), corpus.digest, 1, BUDGET)
    assert key.path(partial=True).is_file() and not key.path().exists()
    resumed = layer_covariances(loaded, [1], BUDGET)
    assert not key.path(partial=True).exists() and key.path().is_file()
    fresh = layer_covariances(loaded, [1], BUDGET, use_cache=False)
    assert torch.allclose(resumed.covariances[1], fresh.covariances[1], rtol=1e-9, atol=1e-12)
    extended = layer_covariances(loaded, [1], 2 * BUDGET)  # continues from the finished BUDGET file
    direct = direct_second_moments(loaded, [1], 2 * BUDGET)[1]
    assert extended.diagnostics[1].tokens == 2 * BUDGET
    assert torch.allclose(extended.covariances[1], direct, rtol=1e-5, atol=1e-6 * float(direct.abs().max()))


def test_second_moment_math_and_diagnostics():
    keys = torch.randn(50, 6, dtype=torch.float64)
    total = torch.zeros(6, 6, dtype=torch.float64)
    add_second_moment(total, keys[:20])
    add_second_moment(total, keys[20:])
    assert torch.allclose(total, keys.T @ keys, rtol=1e-5)
    covariance = torch.diag(torch.tensor([100.0, 1.0, 0.5, 0.25, 0.1, 0.05], dtype=torch.float64))
    diag = spectrum_diagnostics(3, 50, covariance)
    assert diag.largest_eigenvalue == pytest.approx(100.0) and diag.condition_number == pytest.approx(2000.0)
    normal = spectrum_diagnostics(4, 50, torch.eye(6, dtype=torch.float64))
    warnings = covariance_warnings([diag, normal, spectrum_diagnostics(5, 50, torch.eye(6, dtype=torch.float64))])
    assert len(warnings) == 1 and warnings[0].startswith("Layer 3")


def test_embedded_layer_2_outlier_is_reported(embedded_covariances):
    """SPEC 5: on SmolLM2 the keys of layer 2 have an outlier direction; the editor says so."""
    diagnostics = embedded_covariances.diagnostics
    assert diagnostics[2].largest_eigenvalue > 20 * max(diagnostics[layer].largest_eigenvalue for layer in (3, 4, 5, 6))
    warnings = embedded_covariances.warnings()
    assert any(w.startswith("Layer 2") and "outlier" in w for w in warnings)
    assert not any(w.startswith(f"Layer {layer}") for layer in (3, 4, 5, 6) for w in warnings)


@pytest.fixture(scope="module")
def embedded_covariances(embedded):
    return shared_covariances(embedded, [2, 3, 4, 5, 6])
