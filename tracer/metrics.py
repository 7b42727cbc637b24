"""The score of a run (SPEC sections 1 and 6) as plain functions of its last-position logits.

prob (the default) = softmax probability of the answer a; logprob = log p(a); logit-diff =
logit(a) - logit(a'), a' = the corrupted run's top token (or a counterfactual answer the user names).
A run's score is the per-row value averaged over the corrupted samples.
"""

from __future__ import annotations

import torch

from tracer.modes import METRICS


def answer_probability(logits: torch.Tensor, answer_id: int) -> torch.Tensor:
    """Softmax probability of `answer_id`: (..., vocab) logits -> (...) float32."""
    return torch.softmax(logits.float(), dim=-1)[..., answer_id]


def metric_values(logits: torch.Tensor, metric: str, answer_id: int, contrast_id: int | None = None) -> torch.Tensor:
    """The metric of every row: (..., vocab) logits -> (...) float32."""
    if metric == "prob":
        return answer_probability(logits, answer_id)
    if metric == "logprob":
        return torch.log_softmax(logits.float(), dim=-1)[..., answer_id]
    if metric == "logit-diff":
        if contrast_id is None:
            raise ValueError("the logit difference needs a contrast token a'")
        values = logits.float()
        return values[..., answer_id] - values[..., contrast_id]
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def contrast_token(corrupted_logits: torch.Tensor, answer_id: int) -> int:
    """a': the most probable token of the corrupted run (probabilities averaged over its rows) other than a.

    (rows, vocab) logits -> token id. When the corruption leaves a on top, the runner-up is taken, so
    the difference is never identically zero.
    """
    probabilities = torch.softmax(corrupted_logits.float(), dim=-1).mean(dim=0)
    probabilities[answer_id] = -1.0
    return int(probabilities.argmax())
