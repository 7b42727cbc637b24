"""Progress reporting for long operations: `progress(fraction 0..1, message)` callbacks, stages, a tqdm bar."""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

Progress = Callable[[float, str], None]


def stage(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A callback that maps a sub-task's 0..1 onto [start, end] of `progress` (None stays None)."""
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return report


def tqdm_progress(description: str = "", unit_scale: int = 1000) -> tuple[Progress, Callable[[], None]]:
    """A (callback, close) pair showing `progress` calls as a tqdm bar (for the CLIs)."""
    bar = tqdm(total=unit_scale, desc=description, leave=False, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def report(fraction: float, message: str) -> None:
        bar.n = int(round(min(max(fraction, 0.0), 1.0) * unit_scale))
        bar.set_postfix_str(message[:80], refresh=False)
        bar.refresh()

    return report, bar.close
