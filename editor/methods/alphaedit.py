"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of C (SPEC section 3).

The update of each layer is restricted to the span of C's eigenvectors whose eigenvalues lie below a
threshold, so keys of ordinary text (which C describes) map to the same outputs; the earlier edits' keys
(K_p K_p^T, from the ledger) join the solve, so a sequence of edits keeps the earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editor.edits.batch import LayerDiagnostics
from editor.methods.memit import LayerProblem, MemitFamily
from editor.methods.settings import EditSettings, finite_at_least
from editor.methods.updates import alphaedit_factors, null_space, projected_key_share

NULLSPACE_LEAK = 0.05  # a "null" space holding more of the text keys' energy than this protects little


@dataclass(frozen=True)
class AlphaEditSettings(EditSettings):
    """AlphaEdit's settings: the shared ones, the null-space threshold and the ridge term."""

    nullspace_threshold: float = 1e-2  # eigenvalues of C below this span the null space the update may use
    l2: float = 10.0  # ridge term added to the projected system

    def check(self, layout=None) -> AlphaEditSettings:
        super().check(layout)
        finite_at_least(self.nullspace_threshold, 0, "The null-space threshold", strict=True)
        finite_at_least(self.l2, 0, "AlphaEdit's l2")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> AlphaEditSettings:
        if "alphaedit_l2" in data and "l2" not in data:  # the name ledgers of earlier versions recorded
            data = {**data, "l2": data["alphaedit_l2"]}
        return super().from_dict(data)


class AlphaEdit(MemitFamily):
    """Delta = X^T with (P (K K^T + K_p K_p^T) + l2 I) X = P K D^T, P the projection onto C's null space."""

    name = "alphaedit"
    title = "AlphaEdit"
    label = "AlphaEdit (MEMIT kept off what C preserves)"
    Settings = AlphaEditSettings
    uses_earlier_keys = True

    def layer_factors(self, problem: LayerProblem) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
        space = null_space(problem.covariance, self.settings.nullspace_threshold)
        factors = alphaedit_factors(problem.residual, problem.keys, space.projection, problem.earlier_gram, self.settings.l2)
        return factors, {"nullspace_size": space.size, "nullspace_energy": space.energy_share,
                         "nullspace_key_share": projected_key_share(problem.keys, space.projection)}

    def describe(self) -> str:
        return f"null space < {self.settings.nullspace_threshold:g}, l2 {self.settings.l2:g}"

    def weak_update_remedy(self) -> str:
        return (f"a smaller l2 (now {self.settings.l2:g}) or a larger null-space threshold "
                f"(now {self.settings.nullspace_threshold:g}) or more layers")

    def extra_warnings(self, layers: list[LayerDiagnostics]) -> list[str]:
        """A warning when the null space holds much of ordinary text's key energy (its threshold is scale-dependent)."""
        leaky = [layer for layer in layers if (layer.nullspace_energy or 0.0) > NULLSPACE_LEAK]
        if not leaky:
            return []
        where = ", ".join(f"layer {layer.layer} ({layer.nullspace_energy:.0%})" for layer in leaky)
        return [
            f"AlphaEdit's null space is not null here: at {where} it holds that share of ordinary text's key energy "
            f"(eigenvalues of C below {self.settings.nullspace_threshold:g}), so the update also changes what the model "
            "does on such text, and earlier knowledge is less protected than the method assumes. A smaller null-space "
            "threshold protects more but writes less; `python -m editor stats --layers "
            f"{min(layer.layer for layer in layers)}-{max(layer.layer for layer in layers)} --nullspace 0.005,0.01,0.02` "
            "shows the trade-off per layer."
        ]
