"""The Test tab's service: what it computes on the model (predictions, a continuation, model health), apart from display."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.loading import LoadedModel
from core.predict import generate_greedy, predict_next_tokens
from core.progress import Progress, derived, stage
from editor.evaluation.health import PROBE_COUNT, HealthReport, model_health, original_share, probe_facts


def predictions_and_continuation(loaded: LoadedModel, prompt: str, count: int, tokens: int) -> tuple[list[Any], str]:
    """The top-`count` next tokens and a greedy continuation of `tokens` tokens, on the weights as they are now."""
    return predict_next_tokens(loaded, prompt, count), generate_greedy(loaded, prompt, tokens)


def labelled(progress: Progress, label: str) -> Progress:
    """A progress callback that puts `label` before each message (and passes safe points on)."""
    return derived(progress, lambda fraction, message: progress(fraction, f"{label}: {message}"))


def health_original_then_edited(
    loaded: LoadedModel,
    ledger: Any,
    progress: Progress,
    emit: Callable[[HealthReport], None],
    corpus: Any = None,
    probe_count: int | None = None,
) -> HealthReport:
    """Perplexity and retention of the original model (handed to `emit` when an edited one follows), then with `ledger`.

    Call it with the ledger *not* applied: model_health measures the original weights and applies the ledger itself.
    One probe set serves both, none about an edited subject. Returns the last report (the edited one, if any).
    """
    subjects = [request.subject for request in ledger.requests] if ledger is not None else []
    probes = probe_facts(loaded, subjects, probe_count or PROBE_COUNT)
    share = original_share(loaded, ledger, probes, corpus)
    original = model_health(loaded, None, stage(labelled(progress, "Original model"), 0.0, share), corpus=corpus, probes=probes)
    if ledger is None:
        return original
    emit(original)
    return model_health(loaded, ledger, stage(labelled(progress, "With your edits"), share, 1.0), corpus=corpus, probes=probes)
