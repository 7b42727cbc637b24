"""Benchmark: a visitor's prediction while another visitor runs an exact trace (preemptive fairness, issue 22).

Starts `app.py` on loopback (the embedded model, 2 torch threads by default) and, with gradio_client
sessions like bench/soak.py: measures /predict alone (idle), runs one exact trace alone (the
uninterrupted reference), then the same trace again while other visitors loop /predict (each waits
`--think` s between requests) until it finishes. Prints the predictions' p50/p95 latency and the
trace's time in each mode, and the correctness figure: the largest difference between the
interrupted trace's scores and the uninterrupted one's (same server process: 0, bit-identical).
The baseline restarts the app with `--no-preempt` (each job runs to its end) and repeats the
interrupted run: predictions then wait for the rest of the trace.

    python -m bench preempt                       # hidden, mlp, attn; 10 samples; 1 visitor predicting every 3 s
    python -m bench preempt --samples 3 --no-baseline
    OMP_WAIT_POLICY=PASSIVE python -m bench preempt   # on a machine shared with other busy processes

On a busy shared machine OpenMP's spinning threads fight the other processes for the cores: there,
with 2 threads, /predict alone took 6-8 s instead of 1.1 s with OMP_WAIT_POLICY=PASSIVE (the app
inherits the environment, and the header line says which policy ran).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.bench_soak import READY, AppProcess, free_port
from bench.soak import FACTS, LocusApi, SoakSettings

TRACED = FACTS[0]  # the tracing visitor's fact; the predicting visitors take the next ones


@dataclass
class Run:
    """One mode: the predictions' latencies (seconds) and the trace's time and scores."""

    mode: str
    latencies: list[float] = field(default_factory=list)
    trace_seconds: float = 0.0
    scores: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def row(self) -> str:
        values = np.array(self.latencies) if self.latencies else np.array([math.nan])
        trace = f"{self.trace_seconds:>9.1f}" if self.trace_seconds else f"{'-':>9}"
        return (f"{self.mode:<24}{len(self.latencies):>7}{np.percentile(values, 50):>8.2f}{np.percentile(values, 95):>8.2f}"
                f"{values.max():>8.2f}{trace}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench preempt", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="hidden,mlp,attn", help="kinds of the exact trace (default hidden,mlp,attn)")
    parser.add_argument("--samples", type=int, default=10, help="noise samples of the trace (default 10, the app's)")
    parser.add_argument("--visitors", type=int, default=1, help="visitors predicting while the trace runs (default 1)")
    parser.add_argument("--think", type=float, default=3.0, help="seconds each waits between predictions (default 3)")
    parser.add_argument("--idle", type=int, default=10, help="predictions measured on the idle app (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the app (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without preemption")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the app's model")
    parser.add_argument("--json", default=None, help="also write every latency and both traces' scores as JSON")
    arguments = parser.parse_args(argv)
    if arguments.samples < 1 or arguments.visitors < 1 or arguments.threads < 1 or arguments.think < 0:
        parser.error("--samples, --visitors and --threads must be at least 1, --think not negative")
    return arguments


def idle_predictions(url: str, settings: SoakSettings, count: int) -> Run:
    api, run = LocusApi(url, settings), Run("idle (nothing else runs)")
    try:
        api.predict(FACTS[1].prompt)  # the first request allocates what later ones reuse
        for _ in range(count):
            started = time.monotonic()
            api.predict(FACTS[1].prompt)
            run.latencies.append(time.monotonic() - started)
    finally:
        api.close()
    return run


def trace_alone(url: str, settings: SoakSettings, kinds: list[str], samples: int) -> Run:
    api, run = LocusApi(url, settings), Run("trace alone")
    try:
        started = time.monotonic()
        run.scores = api.trace_result(api.start_trace(TRACED, kinds, samples))["scores"]
        run.trace_seconds = time.monotonic() - started
    finally:
        api.close()
    return run


def trace_with_predictions(url: str, settings: SoakSettings, kinds: list[str], samples: int, visitors: int,
                           think: float, mode: str) -> Run:
    """The trace again, while `visitors` sessions loop /predict from its first streamed output until it finishes."""
    tracer = LocusApi(url, settings)
    predictors = [LocusApi(url, settings) for _ in range(visitors)]
    run, lock = Run(mode), threading.Lock()
    try:
        started = time.monotonic()
        job = tracer.start_trace(TRACED, kinds, samples)
        while not job.outputs() and not job.done():  # its preview is out: the exact trace is running now
            time.sleep(0.05)

        def predict(api: LocusApi, prompt: str) -> None:
            while not job.done():
                sent = time.monotonic()
                try:
                    api.predict(prompt)
                except Exception as error:  # recorded, the run goes on
                    with lock:
                        run.failures.append(f"{type(error).__name__}: {error}")
                    return
                with lock:
                    run.latencies.append(time.monotonic() - sent)
                time.sleep(think)

        threads = [threading.Thread(target=predict, args=(api, FACTS[1 + number % (len(FACTS) - 1)].prompt), daemon=True)
                   for number, api in enumerate(predictors)]
        for thread in threads:
            thread.start()
        next_line = time.monotonic() + 30
        while not job.done():  # a line every half minute: the run is alive
            time.sleep(0.5)
            if time.monotonic() >= next_line:
                next_line += 30
                with lock:
                    done = list(run.latencies)
                print(f"  {time.monotonic() - started:6.0f} s: {len(done)} predictions answered"
                      + (f", the last in {done[-1]:.1f} s" if done else ""), flush=True)
        run.scores = tracer.trace_result(job)["scores"]
        run.trace_seconds = time.monotonic() - started
        for thread in threads:
            thread.join()
    finally:
        for api in [tracer, *predictors]:
            api.close()
    return run


def max_difference(first: dict, second: dict) -> float:
    """Largest |a - b| over every score of both traces (inf when their shapes or missing cells differ)."""
    if first.keys() != second.keys():
        return math.inf
    largest = 0.0
    for kind in first:
        for row_a, row_b in zip(first[kind], second[kind], strict=True):
            for a, b in zip(row_a, row_b, strict=True):
                if (a is None) != (b is None):
                    return math.inf
                if a is not None:
                    largest = max(largest, abs(a - b))
    return largest


def serve(arguments: argparse.Namespace, options: tuple[str, ...]) -> AppProcess:
    app = AppProcess(free_port(), arguments.threads, options)
    app.wait_for(READY, arguments.startup_timeout)
    return app


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    kinds = [kind.strip() for kind in arguments.kinds.split(",") if kind.strip()]
    settings = SoakSettings(visitors=arguments.visitors, seconds=1.0)
    print(f"{arguments.visitors} visitor(s) predicting (/predict, {arguments.think:g} s apart) while another runs an "
          f"exact trace ({', '.join(kinds)}; {arguments.samples} samples) of {TRACED.prompt!r}; app.py on "
          f"{arguments.threads} torch thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: list[Run] = []
    app = serve(arguments, ())
    try:
        runs.append(idle_predictions(app.url, settings, arguments.idle))
        print("the trace alone (the uninterrupted reference) ...", flush=True)
        runs.append(trace_alone(app.url, settings, kinds, arguments.samples))
        print("the trace again, with predictions (preemptive) ...", flush=True)
        runs.append(trace_with_predictions(app.url, settings, kinds, arguments.samples, arguments.visitors,
                                           arguments.think, "preemptive (default)"))
    finally:
        app.stop()
    if not arguments.no_baseline:
        app = serve(arguments, ("--no-preempt",))
        try:
            print("the trace with predictions, app.py --no-preempt (each job runs to its end) ...", flush=True)
            runs.append(trace_with_predictions(app.url, settings, kinds, arguments.samples, arguments.visitors,
                                               arguments.think, "run to the end (baseline)"))
        finally:
            app.stop()
    print(f"{'predict latency':<24}{'n':>7}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'trace s':>9}")
    for run in runs:
        print(run.row())
    reference, interrupted = runs[1], runs[2]
    difference = max_difference(reference.scores, interrupted.scores)
    failures = [failure for run in runs for failure in run.failures]
    print(f"interrupted trace vs uninterrupted (same server): max abs diff {difference:.3g} over every score"
          f"{' (bit-identical)' if difference == 0 else ''}; failed requests: {len(failures)}; load average now "
          + "/".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores")
    for failure in failures[:10]:
        print(f"FAILED {failure}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps({"arguments": vars(arguments), "runs": [asdict(run) for run in runs],
                                                    "max_abs_diff": difference}, indent=1), encoding="utf-8")
    passed = difference == 0 and not failures and bool(interrupted.latencies)
    print("PASS" if passed else "FAIL: see the difference and failures above")
    return 0 if passed else 1
