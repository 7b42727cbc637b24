"""The warnings that tell a user the weight updates did not carry the edit, or that AlphaEdit's null space is not null."""

from __future__ import annotations

import dataclasses

import pytest

from editor.cli import build_parser
from editor.edits.batch import LayerDiagnostics
from editor.methods.alphaedit import AlphaEdit, AlphaEditSettings
from editor.methods.memit import Memit, MemitSettings, weak_update_warnings


def layer(residual_norm: float) -> LayerDiagnostics:
    return LayerDiagnostics(layer=2, update_norm=1.0, weight_norm=10.0, relative_update=0.1,
                            residual_norm=residual_norm, residual_share=residual_norm / 5, key_norm=5.0)


def test_weak_updates_are_reported_with_the_fraction_written_and_lambda():
    remedy = Memit(MemitSettings(mom2_weight=15000.0)).weak_update_remedy()
    (warning,) = weak_update_warnings([layer(72.0)], 54.0, remedy)
    assert "only 25%" in warning and "72.0 to 54.0" in warning and "lambda (now 15000)" in warning
    assert weak_update_warnings([layer(72.0)], 20.0, remedy) == []  # 72% written: no warning
    assert "only 0%" in weak_update_warnings([layer(10.0)], 12.0, remedy)[0]  # worse than before: 0%, not negative
    assert weak_update_warnings([], 1.0, remedy) == []
    alpha = AlphaEdit(AlphaEditSettings(l2=10.0, nullspace_threshold=0.01)).weak_update_remedy()
    assert "l2 (now 10)" in alpha and "threshold (now 0.01)" in alpha


def test_a_leaky_null_space_is_named_per_layer_with_its_share():
    alphaedit = AlphaEdit(AlphaEditSettings(nullspace_threshold=0.01))
    leaky = [dataclasses.replace(layer(10.0), layer=index, nullspace_size=900, nullspace_energy=share)
             for index, share in ((1, 0.23), (2, 0.035), (3, 0.284))]
    (warning,) = alphaedit.extra_warnings(leaky)
    assert "layer 1 (23%), layer 3 (28%)" in warning and "layer 2" not in warning and "below 0.01" in warning
    assert alphaedit.extra_warnings(leaky[1:2]) == []  # 3.5%: close enough to null
    assert Memit().extra_warnings(leaky) == []  # MEMIT has no null space


@pytest.mark.parametrize("flag, value, message", [
    ("--l2", "-1", "at least 0"), ("--nullspace-threshold", "0", "above 0"), ("--nullspace-threshold", "inf", "above 0"),
    ("--early-stop", "1.5", "not a whole number"), ("--norm-lambda", "nan", "at least 0"), ("--l2", "ten", "not a number"),
])
def test_method_settings_are_refused_while_parsing(flag, value, message, capsys):
    """Before any model loads, for every command that edits."""
    for command in (["edit", "--subject", "a", "--prompt", "{} is", "--target-new", "b"], ["evaluate", "--data", "x.json"],
                    ["sequential", "--data", "x.json"], ["sweep", "--data", "x.json", "--tokens", "100"],
                    ["layers", "--data", "x.json"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, flag, value])
        assert message in capsys.readouterr().err
    assert build_parser().parse_args(["sequential", "--data", "x", "--nullspace-threshold", "0.005"]).nullspace_threshold == 0.005
