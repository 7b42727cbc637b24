"""The Averages tab's service: what it asks of the tracer (known facts, the averaging stream, its figures)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.errors import InputError
from core.facts import facts_model_knows, load_known_facts
from core.kinds import KINDS
from tracer import figures
from tracer.average import average_traces_stream
from tracer.trace import TraceSettings

KIND_CHOICES = figures.KIND_CHOICES  # (words, kind) for the "What to restore" boxes
kind_title = figures.kind_title
__all__ = ["KINDS", "KIND_CHOICES", "average_settings", "check_fact_count", "average_stream", "figures_of", "known_fact_count", "kind_title"]


def known_fact_count() -> int:
    """How many known facts there are to average over (the most a visitor may ask for)."""
    return len(load_known_facts())


def check_fact_count(loaded: Any, count: int) -> None:
    """InputError when the model knows fewer facts than asked for (the average is never silently over fewer)."""
    known = len(facts_model_knows(loaded))
    if count > known:
        raise InputError(f"Facts to average: this model knows {known:,} of the known facts, so at most {known:,} can be "
                         f"averaged, not {count:,}.")


def average_settings(kinds: tuple[str, ...], samples: int) -> TraceSettings:
    """The trace settings of an average (checked by the tracer)."""
    settings = TraceSettings(kinds=kinds, samples=samples)
    settings.validate()
    return settings


def average_stream(loaded: Any, count: int, settings: TraceSettings, pool: Any = None) -> Iterator[Any]:
    """The tracer's AverageUpdates over the first `count` known facts (cached, resumable; on `pool` when given)."""
    return average_traces_stream(loaded, count, settings, pool=pool)


def figures_of(result: Any) -> list[Any]:
    """One figure per kind (KINDS order) of an average so far."""
    return [figures.average_figure(result, kind) for kind in KINDS]
