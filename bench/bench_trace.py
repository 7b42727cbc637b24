"""Benchmark of the causal tracer: the fast exact engine against the straightforward reference.

`make bench` (or `python -m bench trace`) runs the full benchmark; `python -m bench.bench_trace --quick`
a shorter one. Embedded model on the CPU, all three kinds, 10 samples, window 10. The two engines
run interleaved (a fast step, then the same share of reference cells), so that load from other
processes on the machine hits both alike. Where the reference would take too long, it is timed on
a random sample of cells and extrapolated to all cells; the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.loading import load_model
from tracer.fast_trace import FastTracer
from tracer.noise import embedding_sigma
from tracer.preview import preview_trace
from tracer.problem import prepare_trace
from tracer.reference import reference_cell, reference_score
from tracer.trace import TraceSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = {
    "eiffel": ("The Eiffel Tower is located in the city of", "Eiffel Tower"),
    "short": ("Michael Jordan plays the sport of", "Michael Jordan"),
    "long": (
        "Every summer, thousands of visitors from all over the world travel to see the famous Eiffel Tower, "
        "which stands proudly in the heart of the city of",
        "Eiffel Tower",
    ),
}
# share of the reference's cells timed per case (1.0 = every cell); the rest is extrapolated
FULL_FRACTIONS = {"eiffel": 1.0, "short": 1.0, "long": 0.02}
QUICK_FRACTIONS = {"eiffel": 0.1, "short": 0.1}


@dataclass
class CaseTiming:
    name: str
    tokens: int
    cells: int
    fast_seconds: float
    reference_seconds: float  # measured or extrapolated to all cells
    reference_cells_timed: int
    max_abs_difference: float

    @property
    def ratio(self) -> float:
        return self.reference_seconds / self.fast_seconds

    @property
    def extrapolated(self) -> bool:
        return self.reference_cells_timed < self.cells


def run_case(loaded, name: str, settings, fraction: float, seed: int = 0) -> CaseTiming:
    """Time the fast engine and the reference (interleaved) on one prompt; compare their scores."""
    prompt, subject = CASES[name]
    problem = prepare_trace(loaded, prompt, subject, settings)
    layers = loaded.layout.num_layers
    all_cells = [(kind, token, layer) for token in range(problem.num_tokens) for kind in settings.kinds for layer in range(layers)]
    count = len(all_cells) if fraction >= 1.0 else max(1, round(fraction * len(all_cells)))
    reference_cells = all_cells if count == len(all_cells) else random.Random(seed).sample(all_cells, count)
    reference_scores: dict = {}
    timers = {"fast": 0.0, "reference": 0.0}

    def timed(engine: str, function, *args):
        started = time.perf_counter()
        value = function(*args)
        timers[engine] += time.perf_counter() - started
        return value

    tracer = FastTracer(loaded, problem)
    timed("fast", tracer.corrupted_run)
    timed("reference", reference_score, loaded, problem, [])  # the reference's own corrupted run (low)
    fast_scores: dict = {}
    steps = tracer.steps()
    done = 0
    for step in steps:
        fast_scores.update(timed("fast", tracer.run_step, step))
        target = round(tracer.fraction_done() * len(reference_cells))
        while done < target:
            cell = reference_cells[done]
            reference_scores[cell] = timed("reference", reference_cell, loaded, problem, *cell)
            done += 1
    while done < len(reference_cells):
        cell = reference_cells[done]
        reference_scores[cell] = timed("reference", reference_cell, loaded, problem, *cell)
        done += 1
    difference = max(abs(fast_scores[cell] - value) for cell, value in reference_scores.items())
    reference_seconds = timers["reference"] * len(all_cells) / len(reference_cells)
    return CaseTiming(name, problem.num_tokens, len(all_cells), timers["fast"], reference_seconds, len(reference_cells), difference)


def time_preview(loaded, settings, repeats: int = 3) -> tuple[float, float]:
    """(first call, median of `repeats` more) seconds of the attribution-patching preview of the Eiffel prompt."""
    prompt, subject = CASES["eiffel"]
    started = time.perf_counter()
    preview_trace(loaded, prompt, subject, settings)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        preview_trace(loaded, prompt, subject, settings)
        times.append(time.perf_counter() - started)
    return first, statistics.median(times)


def _load() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_trace", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Eiffel and short prompts only, reference on 10%% of the cells")
    parser.add_argument("--cases", default=None, help="comma list of eiffel, short, long (default: all; quick: eiffel,short)")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    arguments = parser.parse_args(argv)

    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    fractions = QUICK_FRACTIONS if arguments.quick else FULL_FRACTIONS
    names = arguments.cases.split(",") if arguments.cases else list(fractions)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
        return 2
    loaded = load_model("embedded", device=arguments.device)
    settings = TraceSettings(samples=arguments.samples, window=10)
    embedding_sigma(loaded)  # cached in assets/; measured once otherwise
    print(f"model: {loaded.name} on {loaded.device} ({torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs); "
          f"kinds hidden,mlp,attn; samples {settings.samples}; window {settings.window}; noise 3x sigma")
    load_start = _load()
    print(f"machine load average at start: {load_start} (other processes share the CPU: compare ratios, not seconds)")

    first, median = time_preview(loaded, settings)
    print(f"preview (attribution patching, approximate): first {first:.2f} s, then median {median:.2f} s  "
          f"[target < 1 s: {'ok' if median < 1.0 else 'MISSED'}]")

    results = []
    for name in names:
        fraction = fractions.get(name, 1.0)
        print(f"... {name}: fast engine and reference interleaved"
              + ("" if fraction >= 1.0 else f" (reference on a random {fraction:.0%} of the cells, extrapolated)"), flush=True)
        timing = run_case(loaded, name, settings, fraction)
        results.append(timing)
        print(f"    {timing.tokens} tokens, {timing.cells} cells: fast {timing.fast_seconds:.1f} s, reference "
              f"{'~' if timing.extrapolated else ''}{timing.reference_seconds:.1f} s"
              f"{f' (extrapolated from {timing.reference_cells_timed} cells)' if timing.extrapolated else ''}, "
              f"ratio {timing.ratio:.2f}x, max abs diff {timing.max_abs_difference:.2e}", flush=True)

    print("\ncase      tokens  cells  reference_s  fast_s   ratio  max_abs_diff  reference")
    for timing in results:
        how = f"sampled {timing.reference_cells_timed}/{timing.cells}, extrapolated" if timing.extrapolated else "every cell"
        print(f"{timing.name:<9} {timing.tokens:>6} {timing.cells:>6} {timing.reference_seconds:>12.1f} {timing.fast_seconds:>7.1f} "
              f"{timing.ratio:>6.2f}x {timing.max_abs_difference:>13.2e}  {how}")
    load_end = _load()
    print(f"machine load average at the end: {load_end}")
    if arguments.out:
        Path(arguments.out).write_text(json.dumps({
            "model": loaded.name, "device": str(loaded.device), "threads": torch.get_num_threads(),
            "samples": settings.samples, "window": settings.window, "kinds": list(settings.kinds), "quick": arguments.quick,
            "preview": {"first_seconds": first, "median_seconds": median},
            "cases": [asdict(timing) | {"prompt": CASES[timing.name][0], "ratio": timing.ratio, "extrapolated": timing.extrapolated}
                      for timing in results],
            "load_start": load_start, "load_end": load_end,
        }, indent=1), encoding="utf-8")
    status = 0
    eiffel = next((timing for timing in results if timing.name == "eiffel"), None)
    if eiffel is not None:
        speed_ok = eiffel.ratio >= 6.0
        exact_ok = eiffel.max_abs_difference <= 1e-5
        print(f"targets (Eiffel): ratio >= 6x {'ok' if speed_ok else 'MISSED'}; max abs diff <= 1e-5 "
              f"{'ok' if exact_ok else 'MISSED'}; preview < 1 s {'ok' if median < 1.0 else 'MISSED'}")
        status = 0 if exact_ok else 1  # speed depends on the machine's load; exactness does not
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
