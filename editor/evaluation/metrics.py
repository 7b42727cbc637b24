"""CounterFact metrics (SPEC section 4) as plain functions of negative log-likelihoods and texts."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class PairScore:
    """Teacher-forced scores of the new and the true object after one prompt."""

    nll_new: float  # mean NLL of the new object's tokens
    nll_true: float
    argmax_new: bool  # greedy (teacher-forced) argmax reproduces every token of the new object
    argmax_true: bool


def efficacy_success(score: PairScore) -> float:
    """ES for one prompt: 1 when the new object is more likely than the true one."""
    return float(score.nll_new < score.nll_true)


def neighborhood_success(score: PairScore) -> float:
    """NS for one prompt: 1 when the true object stays more likely than the new one."""
    return float(score.nll_true < score.nll_new)


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def harmonic_mean(values) -> float | None:
    """Harmonic mean (0 when any value is 0; None when a value is missing)."""
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


@dataclass(frozen=True)
class RecordScores:
    """One record's fractions (0..1); None where the record has no such prompts."""

    es: float
    ps: float | None
    ns: float | None
    efficacy_accuracy: float
    neighborhood_accuracy: float | None
    # success by generation (SPEC 6); None where not measured (or, for ps_gen/ns_gen, no such prompts)
    es_gen: float | None = None
    ps_gen: float | None = None
    ns_gen: float | None = None


@dataclass(frozen=True)
class GenerationHits:
    """One record's success-by-generation checks: o_new after the rewrite and each paraphrase, o_true after each neighbour."""

    rewrite: bool
    paraphrases: list[bool]
    neighbors: list[bool]


def record_scores(
    rewrite: PairScore, paraphrases: list[PairScore], neighbors: list[PairScore], generated: GenerationHits | None = None
) -> RecordScores:
    """ES, PS, NS, the stricter accuracies and, when `generated` is given, ES/PS/NS by generation of one record."""
    return RecordScores(
        es=efficacy_success(rewrite),
        ps=mean(efficacy_success(s) for s in paraphrases),
        ns=mean(neighborhood_success(s) for s in neighbors),
        efficacy_accuracy=float(rewrite.argmax_new),
        neighborhood_accuracy=mean(float(s.argmax_true) for s in neighbors),
        es_gen=None if generated is None else float(generated.rewrite),
        ps_gen=None if generated is None else mean(float(hit) for hit in generated.paraphrases),
        ns_gen=None if generated is None else mean(float(hit) for hit in generated.neighbors),
    )


def generation_success(continuation: str, target: str) -> bool:
    """SPEC 6: the generated continuation, stripped of leading whitespace, starts with the object's string.

    Taken literally: case-sensitive, and a longer word that begins with the object counts ("Romeo"
    for "Rome"), as does the object followed by anything ("Rome, Italy"). An empty object never succeeds.
    """
    target = target.strip()
    return bool(target) and continuation.lstrip().startswith(target)


WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the n-gram entropies (bits) of `text`'s words: ROME/MEMIT's fluency measure."""
    words = WORD.findall(text.lower())
    parts = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        parts.append(weight * entropy)
    return sum(parts) / len(parts)


def percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value
