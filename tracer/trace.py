"""Causal traces (SPEC section 1): the entry points `trace` and `trace_stream`.

They run the fast exact engine (`tracer.fast_trace`) by default, or the straightforward reference
(`tracer.reference`) when asked (or when only it is exact for the model). Settings and results are
defined in `tracer.problem` and importable from here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from typing import Any

from core.kinds import HEADS
from core.loading import LoadedModel
from core.memory import out_of_memory_as_error
from core.progress import Progress, safe_point
from tracer.fast_trace import FastTracer, fast_engine_supports
from tracer.problem import (
    MAX_TRACE_TOKENS,
    TOKEN_CLASSES,
    TraceProblem,
    TraceResult,
    TraceSettings,
    TraceUpdate,
    empty_result,
    prepare_trace,
    token_classes,
)
from tracer.reference import reference_rows, reference_score

__all__ = [
    "MAX_TRACE_TOKENS", "TOKEN_CLASSES", "TraceResult", "TraceSettings", "TraceUpdate", "token_classes", "trace", "trace_stream",
]

# --- entry points ------------------------------------------------------------------------------

def trace_stream(loaded: LoadedModel, prompt: str, subject: str, settings: TraceSettings | None = None) -> Iterator[TraceUpdate]:
    """Yield partial results as rows finish (NaN = not yet computed); the last update has done=True.

    Every update carries the same TraceResult, filled in place (copy it to keep a snapshot); the fast
    engine also yields after each block call of a step (cells unchanged, finer progress). Nothing is
    left on the model between two updates, so closing the generator early leaves it clean and another
    job may use the model there; the model lock is taken per block call, never across a yield.
    """
    settings = settings or TraceSettings()
    started = time.perf_counter()
    with loaded.lock, out_of_memory_as_error("running the clean prompt", loaded.device):
        problem = prepare_trace(loaded, prompt, subject, settings)
    engine = settings.engine
    if engine == "fast" and not fast_engine_supports(loaded, problem.num_tokens):
        engine = "reference"  # a sliding-window cache shorter than the prompt: only the reference is exact
    updates = _fast_updates(loaded, problem, started) if engine == "fast" else _reference_updates(loaded, problem, started)
    result = yield from updates
    result.elapsed = time.perf_counter() - started
    yield TraceUpdate(result, 1.0, done=True, message=f"trace done in {result.elapsed:.1f} s")


def _reference_updates(loaded: LoadedModel, problem: TraceProblem, started: float):
    """Updates of the reference algorithm, one per (kind, token) row; returns the result."""
    with loaded.lock:
        low = reference_score(loaded, problem, [])
    result = empty_result(loaded, problem, low, engine="reference")
    yield TraceUpdate(result, 0.0, message="corrupted run done")
    total = problem.num_tokens * len(problem.settings.site_kinds) + len(result.head_scores)
    for finished, (kind, row, scores) in enumerate(reference_rows(loaded, problem), start=1):
        for layer, score in enumerate(scores):
            result.set_cell(kind, row, layer, score)
        result.elapsed = time.perf_counter() - started
        where = f"head {row}" if kind == HEADS else f"{kind} row of token {row}"
        yield TraceUpdate(result, finished / total, message=f"{where} done")
    return result


def _fast_updates(loaded: LoadedModel, problem: TraceProblem, started: float):
    """Updates of the fast engine, one per batched step; returns the result."""
    tracer = FastTracer(loaded, problem)
    with loaded.lock:
        low = tracer.corrupted_run()
    result = empty_result(loaded, problem, low, engine="fast")
    yield TraceUpdate(result, 0.0, message="corrupted run done")
    layers = loaded.layout.num_layers
    for step in tracer.steps():
        with contextlib.closing(tracer.step_parts(step)) as parts:
            while True:  # an update after every block call: nothing of the step is on the model between them
                with loaded.lock:
                    finished, value = _advance(parts)
                if finished:
                    break
                result.elapsed = time.perf_counter() - started
                yield TraceUpdate(result, tracer.fraction_done(), message=f"{step.describe()} (block {value + 1} of {layers})")
        for (kind, row, layer), score in value.items():
            result.set_cell(kind, row, layer, score)
        result.elapsed = time.perf_counter() - started
        yield TraceUpdate(result, tracer.fraction_done(), message=step.describe())
    return result


def _advance(parts: Generator[Any, None, Any]) -> tuple[bool, Any]:
    """(False, the next value) of `parts`, or (True, its return value) once it is finished."""
    try:
        return False, next(parts)
    except StopIteration as stop:
        return True, stop.value


def trace(
    loaded: LoadedModel,
    prompt: str,
    subject: str,
    settings: TraceSettings | None = None,
    progress: Progress | None = None,
) -> TraceResult:
    """The full causal trace of `subject` in `prompt` (all requested kinds, every token x layer cell)."""
    result = None
    for update in trace_stream(loaded, prompt, subject, settings):
        result = update.result
        if progress is not None:
            progress(update.fraction, update.message)
            safe_point(progress)  # nothing of the trace is on the model between two updates
    assert result is not None
    return result
