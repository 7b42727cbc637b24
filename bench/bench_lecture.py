"""Benchmark: the two long checks a lecture runs, timed through the library calls the app makes, with their time estimates.

1. Model health (the Test tab) after one MEMIT edit: perplexity on the held-out texts and retention of the probe facts,
   original then edited, in one `model_health` call (nothing remembered from before: the figures are forgotten first).
2. R measured by editing (the Choose R tab): one dev-set record edited at 5 windows around tracing's R and scored
   (ES/PS/NS and success by generation) by `measure_windows_stream`, with the window cache off.

Both once the covariance statistics of the layers involved are cached (computed first when they are not; that time
is printed apart). Goal: each within 3 minutes on 2 CPU cores. The baseline is that budget: the ratio printed is
the time over 180 s. Correctness: the job line's estimate of the total time (elapsed / share done, as
ui/runner.py makes it) at each progress report after the first 10% of the time, against the time it really took:
the largest relative error (an estimate that is right from the start stays near 0).

    python -m bench lecture [--out lecture.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.loading import load_model
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.evaluation.counterfact import load_records
from editor.evaluation.health import forget_health_figures, model_health
from editor.layers import layers_text, outlier_flags
from editor.methods.memit import Memit
from editor.methods.settings import EditSettings
from editor.statistics.covariance import layer_covariances
from editor.studies.devset import devset_file
from editor.studies.windows import measure_windows_stream
from tracer.recommend import packaged_recommendation

BUDGET_SECONDS = 180.0  # "each within 3 min on 2 cores once the covariance is cached" (issue 22)
SETTLED = 0.10  # estimates are judged from this share of the elapsed time on (the first chunk is measured by then)
EDIT = EditRequest("Eiffel Tower", "{} is located in the city of", "Rome")
EDIT_LAYERS = (1, 2, 3, 4, 5)


@dataclass
class EstimateLog:
    """(seconds since the start, share done) of every progress report, and the estimates they imply."""

    started: float = field(default_factory=time.perf_counter)
    reports: list[tuple[float, float]] = field(default_factory=list)

    def __call__(self, fraction: float | None = None, desc: str = "", *args, **kwargs) -> None:
        if fraction is not None:
            self.reports.append((time.perf_counter() - self.started, float(fraction)))

    def worst_error(self, total: float) -> tuple[float | None, float | None]:
        """(largest |estimated total - total| / total after SETTLED x total, the first such estimate) or (None, None)."""
        settled = [(t, f) for t, f in self.reports if t >= SETTLED * total and 0.0 < f < 1.0]
        if not settled:
            return None, None
        errors = [abs(t / f - total) / total for t, f in settled]
        return max(errors), settled[0][0] / settled[0][1]


@dataclass
class Check:
    name: str
    seconds: float
    worst_estimate_error: float | None
    first_estimate: float | None
    reports: int
    detail: str

    @property
    def within_budget(self) -> bool:
        return self.seconds <= BUDGET_SECONDS


def health_check(loaded) -> Check:
    """One edit, then model health (original, then with the edit), nothing remembered."""
    ledger = EditLedger.for_model(loaded)
    ledger.add(Memit.for_model(loaded.layout, layers=EDIT_LAYERS).compute(loaded, [EDIT]), loaded)
    forget_health_figures()
    log = EstimateLog()
    report = model_health(loaded, ledger, log)
    seconds = time.perf_counter() - log.started
    worst, first = log.worst_error(seconds)
    detail = (f"perplexity {report.unedited.perplexity:.2f} -> {report.edited.perplexity:.2f} over {report.edited.tokens:,} "
              f"tokens, retention {report.unedited.retention:.0f}% -> {report.edited.retention:.0f}% of {report.edited.probes}")
    return Check("model health (original + 1 edit)", seconds, worst, first, len(log.reports), detail)


def measure_check(loaded, windows: list[tuple[int, ...]]) -> Check:
    """The Choose R tab's measurement: the first dev-set record at `windows`, window cache off."""
    records = load_records(devset_file(loaded))[:1]
    tracing = packaged_recommendation(loaded, len(windows[0]), outlier_flags(loaded, None))
    log = EstimateLog()
    result = None
    for update in measure_windows_stream(loaded, records, windows, None, width=len(windows[0]), progress=log,
                                         recommendation=tracing, use_cache=False):
        log(update.fraction)
        result = update.result
    seconds = time.perf_counter() - log.started
    worst, first = log.worst_error(seconds)
    best = layers_text(result.editing_best) if result is not None else "-"
    return Check(f"R by editing (1 record, {len(windows)} windows)", seconds, worst, first, len(log.reports),
                 f"windows {', '.join(layers_text(list(w)) for w in windows)}; editing's best R = {best}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench lecture", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    torch.set_num_threads(arguments.threads or torch.get_num_threads())
    loaded = load_model("embedded")
    tracing = packaged_recommendation(loaded, 5, outlier_flags(loaded, None))
    first = max(0, min(tracing.layers[0] - 1, loaded.layout.num_layers - 9))
    windows = [tuple(range(start, start + 5)) for start in range(first, first + 5)]  # tracing's R among 5 neighbours
    layers = sorted({layer for window in windows for layer in window} | set(EDIT_LAYERS))
    clock = time.perf_counter()
    layer_covariances(loaded, layers, EditSettings().cov_tokens)
    setup = time.perf_counter() - clock
    print(f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}; "
          f"covariance of layers {layers[0]}-{layers[-1]} ready in {setup:.1f} s (cached before: near 0; not counted)", flush=True)
    checks = [health_check(loaded), measure_check(loaded, windows)]
    print(f"\n{'check':<44}{'seconds':>9}{'/ 180 s':>9}{'estimate err':>14}  detail")
    for check in checks:
        error = "-" if check.worst_estimate_error is None else f"{100 * check.worst_estimate_error:.0f}%"
        print(f"{check.name:<44}{check.seconds:9.1f}{check.seconds / BUDGET_SECONDS:9.2f}{error:>14}  {check.detail}")
    print("estimate err: the largest error of the estimated total time over the reports after the first "
          f"{SETTLED:.0%} of the time ({sum(c.reports for c in checks)} reports)")
    passed = all(check.within_budget for check in checks)
    print("PASS: both within 3 minutes" if passed else "FAIL: a check took longer than 3 minutes")
    if arguments.out:
        Path(arguments.out).write_text(json.dumps({
            "covariance_seconds": setup, "budget_seconds": BUDGET_SECONDS, "settled": SETTLED,
            "checks": [asdict(check) | {"within_budget": check.within_budget} for check in checks],
        }, indent=1), encoding="utf-8")
    return 0 if passed else 1
