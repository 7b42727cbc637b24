"""Progress reporting for long operations: `progress(fraction 0..1, message)` callbacks, stages, a tqdm bar, safe points.

A safe point is a place in a long computation where the model holds nothing of it: no hooks, no
temporary weight change other than ones registered with `editor.edits.weights.hold_weights` (ledger
edits, an edit's layer updates), which can be taken off and put back exactly. Library code offers one
with `safe_point(progress)`; a plain progress callable ignores it, and the app's job (ui/runner.py)
runs other visitors' short jobs there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

Progress = Callable[[float, str], None]


def safe_point(progress: Progress | None) -> None:
    """Offer `progress` a pause here (call only where the model is clean, see the module docstring).

    The pause is taken by a callback with a `safe_point()` method, or by a bound method of an object
    that has one (the app's `Job.progress`); anything else, or None, does nothing.
    """
    offer = getattr(progress, "safe_point", None) or getattr(getattr(progress, "__self__", None), "safe_point", None)
    if callable(offer):
        offer()


@dataclass(frozen=True)
class DerivedProgress:
    """A progress callback made from another: reports through `report`, passes `parent`'s safe points on."""

    parent: Progress
    report: Progress

    def __call__(self, fraction: float, message: str) -> None:
        self.report(fraction, message)

    def safe_point(self) -> None:
        safe_point(self.parent)


def derived(parent: Progress, report: Progress) -> DerivedProgress:
    """`report` as a progress callback that keeps `parent`'s safe points (wrap a lambda that calls `parent`)."""
    return DerivedProgress(parent, report)


def stage(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A callback that maps a sub-task's 0..1 onto [start, end] of `progress` (None stays None; safe points pass on)."""
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return derived(progress, report)


def tqdm_progress(description: str = "", unit_scale: int = 1000) -> tuple[Progress, Callable[[], None]]:
    """A (callback, close) pair showing `progress` calls as a tqdm bar (for the CLIs)."""
    bar = tqdm(total=unit_scale, desc=description, leave=False, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def report(fraction: float, message: str) -> None:
        bar.n = int(round(min(max(fraction, 0.0), 1.0) * unit_scale))
        bar.set_postfix_str(message[:80], refresh=False)
        bar.refresh()

    return report, bar.close
