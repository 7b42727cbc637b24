"""Scaled MEMIT: MEMIT whose every layer writes `scale` times its share of the change (docs/METHODS.md).

With scale < 1 each layer of R writes less than MEMIT's share; the layers after it see the change still
missing and take it up, so the edit moves toward the last layers of R. scale = 1 is MEMIT, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editor.edits.batch import LayerDiagnostics
from editor.methods.memit import LayerProblem, Memit, MemitSettings
from editor.methods.settings import finite_at_least
from editor.methods.updates import memit_factors


@dataclass(frozen=True)
class ScaledMemitSettings(MemitSettings):
    """MEMIT's settings and the factor on each layer's update."""

    scale: float = 0.5

    def check(self, layout=None) -> ScaledMemitSettings:
        super().check(layout)
        finite_at_least(self.scale, 0, "The scale", strict=True)
        return self


class ScaledMemit(Memit):
    """Delta = scale * D K^T (lambda C + K K^T)^-1 at each layer of R."""

    name = "scaled-memit"
    title = "Scaled MEMIT"
    label = "Scaled MEMIT (MEMIT's update times a factor)"
    Settings = ScaledMemitSettings

    def layer_factors(self, problem: LayerProblem) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
        left, right = memit_factors(problem.residual, problem.keys, problem.covariance, self.settings.mom2_weight)
        return (left * self.settings.scale, right), {}

    def describe(self) -> str:
        return f"lambda {self.settings.mom2_weight:g}, scale {self.settings.scale:g}"

    def weak_update_remedy(self) -> str:
        return f"a scale nearer 1 (now {self.settings.scale:g}), a smaller lambda or more layers"

    def extra_warnings(self, layers: list[LayerDiagnostics]) -> list[str]:
        if self.settings.scale <= 1 or not layers:
            return []
        return [f"Scale {self.settings.scale:g} writes more than the change layer {layers[0].layer} needs; "
                "later layers of R must undo the overshoot."]
