"""The attribution-patching preview: labelled approximate, first-order exact for small noise, clean model."""

from __future__ import annotations

import numpy
import pytest
import torch

from core.hooks import hook_count
from tracer.preview import preview_trace, windowed_sum
from tracer.trace import TraceSettings, trace

EIFFEL = "The Eiffel Tower is located in the city of"


def test_windowed_sum_matches_the_spec_windows():
    effects = torch.arange(12, dtype=torch.float32).view(2, 6)
    summed = windowed_sum(effects, 3)  # window of layer l: [l - 1, l + 2)
    assert summed[0].tolist() == [0 + 1, 0 + 1 + 2, 1 + 2 + 3, 2 + 3 + 4, 3 + 4 + 5, 4 + 5]
    assert torch.equal(windowed_sum(effects, 1), effects)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "opt"])
def test_preview_is_the_first_order_trace_for_small_noise(model_type, tiny):
    loaded = tiny(model_type)
    settings = TraceSettings(kinds=("hidden", "attn"), samples=3, window=2, noise=5e-4)
    preview = preview_trace(loaded, "The Eiffel Tower is in Paris", "Eiffel Tower", settings)
    exact = trace(loaded, "The Eiffel Tower is in Paris", "Eiffel Tower", settings)
    assert preview.approximate and not exact.approximate and preview.low == pytest.approx(exact.low, rel=1e-5)
    for kind in settings.kinds:
        estimated, computed = preview.indirect_effect(kind).ravel(), exact.indirect_effect(kind).ravel()
        assert numpy.corrcoef(estimated, computed)[0, 1] > 0.99, kind


def test_preview_of_the_eiffel_prompt(embedded):
    hooks = hook_count(embedded.model)
    result = preview_trace(embedded, EIFFEL, "Eiffel Tower", TraceSettings())
    assert result.approximate and result.engine == "attribution patching"
    assert hook_count(embedded.model) == hooks and torch.is_inference_mode_enabled() is False
    begin, end = result.subject_range
    for kind in ("hidden", "mlp", "attn"):
        matrix = result.score_matrix(kind)
        assert matrix.shape == (10, 30) and numpy.isfinite(matrix).all() and (0 <= matrix).all() and (matrix <= 1).all()
        assert numpy.all(matrix[:begin] == result.low)  # nothing to restore before the subject
    mlp = result.indirect_effect("mlp")
    assert begin <= numpy.unravel_index(mlp.argmax(), mlp.shape)[0] < end
