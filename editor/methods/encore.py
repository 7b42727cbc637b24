"""ENCORE (Gupta et al. 2025): MEMIT for long edit sequences.

MEMIT's solve with the earlier edits' keys kept (K_p K_p^T, from the ledger, as AlphaEdit keeps them) and a
norm constraint norm_lambda I on each batch's update; and most-probable early stopping (MPES): a request's
target optimization stops `early_stop_steps` steps after its new object leads on all its prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editor.methods.memit import LayerProblem, Memit, MemitSettings
from editor.methods.settings import finite_at_least
from editor.methods.updates import memit_factors


@dataclass(frozen=True)
class EncoreSettings(MemitSettings):
    """ENCORE's settings: MEMIT's, the norm constraint, and MPES on by default (the paper's 2 steps)."""

    early_stop_steps: int = 2
    norm_lambda: float = 20.0  # weight of ||Delta||_F^2 (the norm constraint) in the MEMIT solve

    def check(self, layout=None) -> EncoreSettings:
        super().check(layout)
        finite_at_least(self.norm_lambda, 0, "ENCORE's norm constraint")
        return self


class Encore(Memit):
    """Delta = D K^T (lambda C + K_p K_p^T + K K^T + norm_lambda I)^-1 at each layer of R."""

    name = "encore"
    title = "ENCORE"
    label = "ENCORE (MEMIT for long edit sequences: early stop, norm constraint)"
    Settings = EncoreSettings
    uses_earlier_keys = True

    def layer_factors(self, problem: LayerProblem) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
        factors = memit_factors(problem.residual, problem.keys, problem.covariance, self.settings.mom2_weight,
                                problem.earlier_gram, self.settings.norm_lambda)
        return factors, {}

    def describe(self) -> str:
        return f"lambda {self.settings.mom2_weight:g}, norm {self.settings.norm_lambda:g}, early stop {self.settings.early_stop_steps}"

    def weak_update_remedy(self) -> str:
        return (f"a smaller lambda (now {self.settings.mom2_weight:g}) or a smaller norm constraint "
                f"(now {self.settings.norm_lambda:g}) or more layers")
