"""The warning that tells a user the weight updates did not carry the edit (lambda too large)."""

from __future__ import annotations

from editor.batch import LayerDiagnostics
from editor.hparams import MemitHyperParams
from editor.memit import weak_update_warnings


def layer(residual_norm: float) -> LayerDiagnostics:
    return LayerDiagnostics(layer=2, update_norm=1.0, weight_norm=10.0, relative_update=0.1,
                            residual_norm=residual_norm, residual_share=residual_norm / 5, key_norm=5.0)


def test_weak_updates_are_reported_with_the_fraction_written_and_lambda():
    hparams = MemitHyperParams(mom2_weight=15000.0)
    (warning,) = weak_update_warnings([layer(72.0)], 54.0, hparams)
    assert "only 25%" in warning and "72.0 to 54.0" in warning and "15000" in warning
    assert weak_update_warnings([layer(72.0)], 20.0, hparams) == []  # 72% written: no warning
    assert "only 0%" in weak_update_warnings([layer(10.0)], 12.0, hparams)[0]  # worse than before: 0%, not negative
    assert weak_update_warnings([layer(72.0)], 60.0, hparams.replace(method="rome")) == []
    assert weak_update_warnings([], 1.0, hparams) == []
