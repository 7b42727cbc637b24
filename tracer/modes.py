"""The ways a trace corrupts and scores a run (SPEC sections 1 and 6), as names and plain words.

Torch-free, so the CLI's --help and the figures can use them. The defaults are ROME's: Gaussian
noise on the subject's embeddings, and the probability of the answer.
"""

from __future__ import annotations

CORRUPTIONS = ("noise", "replace", "resample")  # noise on the embeddings; the subject's tokens swapped (once / per sample)
METRICS = ("prob", "logit-diff", "logprob")
HEAD_POSITIONS = ("last", "all")  # a head is restored at the last token, or at every token
AUTO = "auto"  # --replacement auto: the first same-length subject of the known facts

METRIC_NAMES = {"prob": "probability", "logit-diff": "logit difference", "logprob": "log probability"}


def metric_name(metric: str) -> str:
    """'prob' -> 'probability', 'logit-diff' -> 'logit difference', 'logprob' -> 'log probability'."""
    return METRIC_NAMES.get(metric, metric)


def metric_label(metric: str, answer: str, contrast: str = "") -> str:
    """The score's formula with the answer: 'p(Paris)', 'log p(Paris)', 'logit(Paris) − logit(Rome)'."""
    answer = answer.strip() or answer
    if metric == "logprob":
        return f"log p({answer})"
    if metric == "logit-diff":
        return f"logit({answer}) − logit({contrast.strip() or contrast})"
    return f"p({answer})"


def corruption_words(corruption: str, replacements: list[str] | tuple[str, ...] = (), samples: int = 0) -> str:
    """How the subject was corrupted, in plain words (for captions and pages)."""
    if corruption == "replace":
        return f"replaced by {replacements[0]!r} (same number of tokens)" if replacements else "replaced by another subject"
    if corruption == "resample":
        count = samples or len(replacements)
        return f"replaced, in each of {count} runs, by another subject of the known facts with the same number of tokens"
    return "blurred with noise"
