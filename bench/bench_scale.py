"""Scale-out benchmark: the same averaged-trace job in one process and on 1 and 2 Ray workers, and what 8 would do.

`python -m bench scale` traces the first --n facts the embedded model knows (CPU, --kinds, 10 samples) five
ways: one process with 1 thread and with every core, then on a local Ray cluster with 1 worker (every core)
and 2 workers (a core each). It prints each run's time, the ratio against the 1-thread process, and the max
abs difference of the averages against it (float32 rounding: runs with other thread counts reduce in another order). It then measures
the driver's cost per fact (a pool round trip of a fact-sized record, the cache append and the running
aggregate) and estimates 8 workers (say 8 GPUs) from the measured per-fact time and that overhead. Timings
on a shared machine: the load average is printed; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy
import torch

from core.distributed import ModelSpec
from core.facts import facts_model_knows
from core.loading import load_model
from core.ray_pool import RayPool, ray, start_local_cluster
from tracer.average import (
    AGGREGATE_SECONDS,
    AverageResult,
    aggregate,
    append_record,
    average_cache_path,
    average_traces,
    read_records,
)
from tracer.problem import TraceSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

AGREEMENT = 1e-5  # max abs difference of averaged probabilities between runs with other thread counts or processes


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def echo_record(loaded, shared: None, record: dict) -> dict:
    """A work item that only sends a fact's record back: the pool's round trip without the trace."""
    return record


def max_difference(one: AverageResult, other: AverageResult) -> float:
    """Largest absolute difference between two averages' curves and total effects."""
    worst = abs(one.total_effect - other.total_effect)
    for kind, curves in one.effects.items():
        for name, curve in curves.items():
            a = numpy.asarray(curve.mean, dtype=float)
            b = numpy.asarray(other.effects[kind][name].mean, dtype=float)
            both = numpy.isfinite(a) & numpy.isfinite(b)
            if (numpy.isfinite(a) != numpy.isfinite(b)).any():
                return float("inf")
            if both.any():
                worst = max(worst, float(numpy.abs(a[both] - b[both]).max()))
    return worst


def driver_seconds_per_fact(pool: RayPool, records: list[dict], settings: TraceSettings, count: int) -> tuple[float, float, float]:
    """(pool round trip per fact, cache append per fact, one running aggregate over `count` facts), in seconds."""
    copies = [records[index % len(records)] for index in range(count)]
    started = time.perf_counter()
    for _ in pool.run(echo_record, copies):
        pass
    round_trip = (time.perf_counter() - started) / count
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cache.jsonl"
        started = time.perf_counter()
        for record in copies:
            append_record(path, record)
        append = (time.perf_counter() - started) / count
    started = time.perf_counter()
    aggregate(copies, "model", len(records[0]["scores"][settings.kinds[0]][0]), settings)
    return round_trip, append, time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="facts to trace (default 8)")
    parser.add_argument("--kinds", default="hidden", help="trace kinds (default hidden)")
    parser.add_argument("--samples", type=int, default=10, help="corrupted samples (default 10)")
    parser.add_argument("--job-facts", type=int, default=1000, help="facts of the job the 8-worker estimate is for")
    parser.add_argument("--quick", action="store_true", help="only the 1-thread process and 2 workers (and the driver's cost)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    arguments = parser.parse_args(argv)
    if "LOCUS_CACHE" in os.environ:
        parser.error("unset LOCUS_CACHE: the benchmark uses a temporary cache of its own")
    cores = os.cpu_count() or 1
    settings = TraceSettings(kinds=tuple(arguments.kinds.split(",")), samples=arguments.samples)
    loaded = load_model("embedded", device="cpu")
    facts = facts_model_knows(loaded)[: arguments.n]
    print(f"job: average of {len(facts)} facts, kinds {','.join(settings.kinds)}, {settings.samples} samples, "
          f"model {loaded.name} on CPU; {cores} cores")
    print(f"machine load average at start: {_load()} (other processes share the CPU: compare ratios, not seconds)")
    rows: list[tuple[str, int, int, float, float, float]] = []  # label, workers, threads, start, run, diff
    default_threads = torch.get_num_threads()
    baseline = None
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LOCUS_CACHE"] = cache  # the first run's records feed the driver measurement below
        for threads in (1,) if arguments.quick else (1, cores):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            result = average_traces(loaded, len(facts), settings, facts=facts, use_cache=baseline is None)
            rows.append((f"one process, {threads} thread(s)", 0, threads, 0.0, time.perf_counter() - started,
                         0.0 if baseline is None else max_difference(baseline, result)))
            baseline = baseline or result
            print(f"  {rows[-1][0]}: {rows[-1][4]:.1f} s (load {_load()})", flush=True)
        records = list(read_records(average_cache_path(loaded, settings)).values())
        os.environ.pop("LOCUS_CACHE")
    torch.set_num_threads(default_threads)
    address = start_local_cluster()
    print(f"local Ray cluster at {address} (loopback)")
    overhead = None
    try:
        for workers in (min(2, cores),) if arguments.quick else (1, min(2, cores)):
            started = time.perf_counter()
            with RayPool(ModelSpec("embedded", "cpu"), workers=workers) as pool:
                start = time.perf_counter() - started
                started = time.perf_counter()
                result = average_traces(loaded, len(facts), settings, facts=facts, use_cache=False, pool=pool)
                run = time.perf_counter() - started
                rows.append((f"Ray, {pool.describe()}", workers, pool.threads, start, run, max_difference(baseline, result)))
                print(f"  {rows[-1][0]}: start {start:.1f} s, run {run:.1f} s (load {_load()})", flush=True)
                if workers == min(2, cores):
                    overhead = driver_seconds_per_fact(pool, records, settings, arguments.job_facts)
    finally:
        ray.shutdown()
    one_thread = rows[0][4]
    print("\nrun                                            workers threads  start_s   run_s  per_fact_s  speedup  max_abs_diff")
    for label, workers, threads, start, run, difference in rows:
        print(f"{label:<46} {workers:>7} {threads:>7} {start:>8.1f} {run:>7.1f} {run / len(facts):>11.2f} "
              f"{one_thread / run:>7.2f}x {difference:>13.3g}")
    two = rows[-1]
    if not arguments.quick:
        print(f"\n2 workers vs 1 worker with the same 2 cores: {rows[2][4] / two[4]:.2f}x; vs one process on every core: "
              f"{rows[1][4] / two[4]:.2f}x.")
    print(f"Two cores bound the ideal at 2x over one thread (measured {one_thread / two[4]:.2f}x); the rest is the load "
          "of other processes and memory bandwidth.")
    figures: dict = {
        "facts": len(facts), "kinds": list(settings.kinds), "samples": settings.samples, "cores": cores, "quick": arguments.quick,
        "runs": [{"run": label, "workers": workers, "threads": threads, "start_seconds": start, "run_seconds": run,
                  "speedup": one_thread / run, "max_abs_difference": difference}
                 for label, workers, threads, start, run, difference in rows],
    }
    if overhead is not None:
        round_trip, append, aggregate_seconds = overhead
        per_fact = two[4] / len(facts) * two[1]  # one worker's seconds per fact (a core each)
        job = arguments.job_facts
        # The driver spends round trip + append per fact, and re-aggregates at most every AGGREGATE_SECONDS.
        busy = aggregate_seconds / (AGGREGATE_SECONDS + aggregate_seconds)
        driver = (round_trip + append) / (1 - busy)
        estimate = job * max(per_fact / 8, driver)
        print(f"driver per fact: pool round trip {round_trip * 1e3:.2f} ms + cache append {append * 1e3:.2f} ms; the running "
              f"aggregate over {job} facts takes {aggregate_seconds * 1e3:.0f} ms, redone at most every {AGGREGATE_SECONDS:g} s "
              f"({busy:.0%} of the driver): {driver * 1e3:.2f} ms per fact in all")
        print(f"8 workers (e.g. 8 GPUs), {job} facts: about {estimate / 60:.1f} min at the per-fact time measured here "
              f"({per_fact:.1f} s per fact per worker; {job * per_fact / 60:.1f} min on one worker), "
              f"{job * per_fact / estimate:.1f}x; the driver would cap the speed-up at {per_fact / driver:.0f}x, i.e. only "
              f"workers faster than {8 * driver * 1e3:.1f} ms per fact would leave 8 of them waiting for it.")
        figures["estimate"] = {"job_facts": job, "round_trip_seconds": round_trip, "append_seconds": append,
                               "aggregate_seconds": aggregate_seconds, "driver_seconds_per_fact": driver,
                               "worker_seconds_per_fact": per_fact, "one_worker_seconds": job * per_fact,
                               "eight_workers_seconds": estimate}
    print(f"machine load average at the end: {_load()}")
    worst = max(row[5] for row in rows)
    # probabilities averaged over facts: float32 rounding of reductions split by thread count (core/__init__.py)
    print(f"largest difference from the 1-thread process: {worst:.3g} (bound {AGREEMENT:g}; "
          f"{'agree' if worst <= AGREEMENT else 'DISAGREE'}; bit-identical only for the same machine and threads)")
    if arguments.out:
        figures |= {"largest_difference": worst, "bound": AGREEMENT, "agree": worst <= AGREEMENT}
        Path(arguments.out).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return 0 if worst <= AGREEMENT else 1

