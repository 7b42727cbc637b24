"""The GPU check: one table of what the GPU path promises, ready to run on a machine with one GPU (< 8 minutes).

    python3 -m bench gpu                        # on the GPU machine (see docs/GPU.md, "The GPU check")
    python -m bench gpu --device cpu --quick    # a dry run of every stage, tiny, on a CPU

Its imports are torch, transformers, accelerate, safetensors, numpy and tqdm (and this repository), never
gradio or plotly: what a bare GPU image has (tests/test_bench_gpu.py checks). Stages:
1. trace: the embedded model (float32), the Eiffel prompt (10 tokens, 3 kinds, 10 samples) by the fast engine
   and by the reference engine, interleaved: the ratio and the max abs difference (target >= 20x).
2. edits: 100 dev-set edits batched (one corpus pass; all target vectors in one batch) against the
   straightforward way (a corpus pass per layer; targets one request at a time through every block):
   times, ratio and ES/PS/NS.
3. precision: the embedded model in bfloat16 against float32: the trace (max abs difference to float32, and
   bfloat16 fast vs reference on sampled cells) and ES/PS/NS of the batched edits (target: within 2 points).
4. shape: llama-3-8b's shape, bfloat16, random weights: the whole 10-token 3-kind trace (target < 60 s) and
   100 edits in one batch including a 50,000-token covariance (target < 5 minutes), with peak memory.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.bench_shapes import (
    DEVSET,
    PeakMemory,
    build_shape,
    embedded_tokenizer,
    gib,
    load_text,
    run_edits,
    synchronize,
    time_trace,
)
from core.errors import LocusError
from core.loading import LoadedModel, load_model, resolve_device
from editor.edits.ledger import EditLedger
from editor.evaluation.counterfact import load_records
from editor.evaluation.evaluate import Scores, score_records, summarize
from editor.methods.memit import Memit
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import TargetResult, compute_targets
from editor.statistics import covariance
from tracer.fast_trace import FastTracer
from tracer.problem import TraceSettings, prepare_trace
from tracer.reference import reference_cell, reference_score

STAGES = ("trace", "edits", "precision", "shape")
EIFFEL = ("The Eiffel Tower is located in the city of", "Eiffel Tower")
SHORT = ("Michael Jordan plays the sport of", "Michael Jordan")


@dataclass
class Row:
    """One line of the table: what was checked, what was measured, the target and whether it was met."""

    check: str
    measured: str
    target: str = ""
    met: bool | None = None


# --- stages ------------------------------------------------------------------------------------

def trace_engines(loaded: LoadedModel, prompt: tuple[str, str], samples: int, reference_share: float) -> dict:
    """Fast engine and reference on one prompt, interleaved; the reference timed on a share of the cells."""
    settings = TraceSettings(samples=samples, window=10)
    problem = prepare_trace(loaded, *prompt, settings)
    layers = loaded.layout.num_layers
    cells = [(kind, token, layer) for token in range(problem.num_tokens) for kind in settings.kinds for layer in range(layers)]
    count = len(cells) if reference_share >= 1.0 else max(1, round(reference_share * len(cells)))
    chosen = cells if count == len(cells) else random.Random(0).sample(cells, count)
    timers = {"fast": 0.0, "reference": 0.0}

    def timed(engine: str, function, *args):
        synchronize(loaded.device)
        started = time.perf_counter()
        value = function(*args)
        synchronize(loaded.device)
        timers[engine] += time.perf_counter() - started
        return value

    tracer = FastTracer(loaded, problem)
    timed("fast", tracer.corrupted_run)
    timed("reference", reference_score, loaded, problem, [])
    fast, reference, done = {}, {}, 0
    for step in tracer.steps():
        fast.update(timed("fast", tracer.run_step, step))
        while done < round(tracer.fraction_done() * len(chosen)):
            reference[chosen[done]] = timed("reference", reference_cell, loaded, problem, *chosen[done])
            done += 1
    for cell in chosen[done:]:
        reference[cell] = timed("reference", reference_cell, loaded, problem, *cell)
    return {
        "cells": len(cells), "timed_reference_cells": len(chosen), "fast_seconds": timers["fast"],
        "reference_seconds": timers["reference"] * len(cells) / len(chosen),
        "max_abs_difference": max(abs(fast[cell] - value) for cell, value in reference.items()),
        "fast": fast, "high": problem.high, "answer_id": problem.answer_id,
    }


def edit_ways(loaded: LoadedModel, records: list, cov_tokens: int, steps: int | None, straightforward: bool) -> dict:
    """Batched (and optionally straightforward) MEMIT of `records`; times, and scores before and after the batched edit."""
    requests = [record.request() for record in records]
    memit = Memit.for_model(loaded.layout, cov_tokens=cov_tokens, steps=steps)
    settings = memit.settings
    prefixes = context_prefixes(loaded, settings)
    layers = list(settings.layers)
    result: dict = {}
    covariance._MEMORY.clear()
    synchronize(loaded.device)
    clock = time.perf_counter()
    statistics = covariance.layer_covariances(loaded, layers, cov_tokens, use_cache=False)
    batched_targets = compute_targets(loaded, requests, settings, prefixes, engine="cached")
    batched = memit.compute(loaded, requests, covariances=statistics, targets=batched_targets)
    synchronize(loaded.device)
    result["batched_seconds"] = time.perf_counter() - clock
    if straightforward:
        covariance._MEMORY.clear()
        clock = time.perf_counter()
        per_layer = {layer: covariance.layer_covariances(loaded, [layer], cov_tokens, use_cache=False) for layer in layers}
        single = covariance.CovarianceSet(
            {layer: s.covariances[layer] for layer, s in per_layer.items()}, {layer: s.diagnostics[layer] for layer, s in per_layer.items()}
        )
        parts = [compute_targets(loaded, [request], settings, prefixes, engine="full") for request in requests]
        serial_targets = TargetResult(
            parts[0].layer, torch.cat([p.targets for p in parts]), torch.cat([p.hidden for p in parts]),
            [d for p in parts for d in p.diagnostics],
        )
        serial = memit.compute(loaded, requests, covariances=single, targets=serial_targets)
        synchronize(loaded.device)
        result["straightforward_seconds"] = time.perf_counter() - clock
        result["delta_difference"] = max(
            float((batched.deltas[layer] - serial.deltas[layer]).norm() / serial.deltas[layer].norm()) for layer in layers
        )
    before, _ = score_records(loaded, records, generation=False)
    ledger = EditLedger.for_model(loaded)
    ledger.add(batched, loaded)
    with ledger.applied(loaded):
        after, _ = score_records(loaded, records, generation=False)
    result["unedited"], result["edited"] = summarize(before, []), summarize(after, [])
    return result


def scores_text(scores: Scores) -> str:
    return f"ES {scores.ES:.1f} / PS {scores.PS:.1f} / NS {scores.NS:.1f}"


# --- the check ---------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="every stage tiny (with --device cpu: a dry run in minutes)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    parser.add_argument("--edits", type=int, default=None, help="dev-set edits (default 100; quick 3)")
    parser.add_argument("--shape", default="llama-3-8b", help="the large shape of stage 4 (bench shapes --shape)")
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    return parser.parse_args(argv)


def run(arguments: argparse.Namespace) -> list[Row]:
    device = resolve_device(arguments.device)
    stages = [stage.strip() for stage in arguments.stages.split(",") if stage.strip()]
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise LocusError(f"Unknown stage(s) {unknown}: choose from {', '.join(STAGES)}.")
    quick = arguments.quick
    edits = arguments.edits if arguments.edits is not None else (3 if quick else 100)
    records = load_records(str(DEVSET))[:edits]
    cov_tokens = 1_000 if quick else 50_000
    steps = 5 if quick else None
    prompt, samples, share = (SHORT, 2, 0.03) if quick else (EIFFEL, 10, 1.0)
    rows: list[Row] = []
    peak = PeakMemory(device)
    print(f"bench gpu on {device}"
          f"{f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''}; torch {torch.__version__}; "
          f"load average {load_text()}", flush=True)
    float32 = load_model("embedded", device=device, dtype="float32") if {"trace", "edits", "precision"} & set(stages) else None

    if "trace" in stages or "precision" in stages:
        clock = time.perf_counter()
        trace = trace_engines(float32, prompt, samples, share)
        ratio = trace["reference_seconds"] / trace["fast_seconds"]
        how = "every cell" if trace["timed_reference_cells"] == trace["cells"] else f"{trace['timed_reference_cells']} cells, extrapolated"
        rows.append(Row(f"trace, embedded float32 ({trace['cells']} cells)",
                        f"fast {trace['fast_seconds']:.2f} s, reference {trace['reference_seconds']:.1f} s ({how}): "
                        f"{ratio:.1f}x, max abs diff {trace['max_abs_difference']:.1e}",
                        ">= 20x, diff <= 1e-5", ratio >= 20 and trace["max_abs_difference"] <= 1e-5))
        print(f"  trace stage {time.perf_counter() - clock:.0f} s", flush=True)

    float32_edits = None
    if "edits" in stages or "precision" in stages:
        clock = time.perf_counter()
        float32_edits = edit_ways(float32, records, cov_tokens, steps, straightforward="edits" in stages)
        if "edits" in stages:
            batched, serial = float32_edits["batched_seconds"], float32_edits["straightforward_seconds"]
            rows.append(Row(f"{len(records)} edits, embedded float32",
                            f"batched {batched:.1f} s vs straightforward {serial:.1f} s: {serial / batched:.1f}x; "
                            f"updates differ by {float32_edits['delta_difference']:.1e} (relative)"))
            rows.append(Row(f"{len(records)} edits: quality",
                            f"unedited {scores_text(float32_edits['unedited'])}; edited {scores_text(float32_edits['edited'])}"))
        print(f"  edit stage {time.perf_counter() - clock:.0f} s", flush=True)

    if "precision" in stages:
        clock = time.perf_counter()
        bfloat16 = load_model("embedded", device=device, dtype="bfloat16")
        half = trace_engines(bfloat16, prompt, samples, 0.1 if not quick else share)
        agreement = max(abs(value - trace["fast"][cell]) for cell, value in half["fast"].items())
        rows.append(Row("trace, bfloat16 vs float32",
                        f"max abs diff {agreement:.1e} over {half['cells']} cells; bfloat16 fast vs reference "
                        f"{half['max_abs_difference']:.1e} ({half['timed_reference_cells']} cells); "
                        f"{half['reference_seconds'] / half['fast_seconds']:.1f}x", "fast vs reference <= 2e-2",
                        half["max_abs_difference"] <= 2e-2))
        half_edits = edit_ways(bfloat16, records, cov_tokens, steps, straightforward=False)
        gaps = [abs(getattr(half_edits["edited"], key) - getattr(float32_edits["edited"], key)) for key in ("ES", "PS", "NS")]
        rows.append(Row(f"{len(records)} edits, bfloat16 vs float32",
                        f"bfloat16 {scores_text(half_edits['edited'])} in {half_edits['batched_seconds']:.1f} s; "
                        f"float32 {scores_text(float32_edits['edited'])}", "within 2 points", max(gaps) <= 2.0))
        del bfloat16
        print(f"  precision stage {time.perf_counter() - clock:.0f} s", flush=True)
    del float32

    if "shape" in stages:
        clock = time.perf_counter()
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        peak.reset()
        loaded = build_shape(arguments.shape, device, dtype, embedded_tokenizer(), tiny=quick and device.type != "cuda")
        built = time.perf_counter() - clock
        peak.reset()
        trace = time_trace(loaded, None)
        rows.append(Row(f"{loaded.name}, {str(dtype).removeprefix('torch.')}: trace",
                        f"{trace.seconds:.1f} s for {trace.cells} cells (10 tokens x 3 kinds; built in {built:.0f} s); "
                        f"peak {gib(peak.peak())}", "< 60 s", trace.seconds < 60))
        peak.reset()
        seconds, timings, _ = run_edits(loaded, len(records), cov_tokens, steps)
        parts = ", ".join(f"{name} {value:.0f} s" for name, value in timings.items())
        rows.append(Row(f"{loaded.name}: {len(records)} edits",
                        f"{seconds:.0f} s ({parts}; covariance over {cov_tokens:,} tokens); peak {gib(peak.peak())}",
                        "< 300 s", seconds < 300))
        print(f"  shape stage {time.perf_counter() - clock:.0f} s", flush=True)
    return rows


def main(argv: list[str]) -> int:
    if not argv and not torch.cuda.is_available():  # `python -m bench` (make bench) on a machine without a GPU
        print("bench gpu: no CUDA GPU here; skipped (a dry run of every stage: python -m bench gpu --device cpu --quick)")
        return 0
    arguments = parse(argv)
    started = time.perf_counter()
    try:
        rows = run(arguments)
    except LocusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = max(len(row.check) for row in rows) if rows else 10
    print(f"\n{'check':<{width}}  {'target':<26}  measured")
    judged = resolve_device(arguments.device).type == "cuda" and not arguments.quick  # the targets are for one GPU
    for row in rows:
        verdict = "" if row.met is None or not judged else (" ok" if row.met else " MISSED")
        print(f"{row.check:<{width}}  {(row.target + verdict):<26}  {row.measured}")
    total = time.perf_counter() - started
    print(f"total {total:.0f} s (target < 480 s on one GPU); load average at the end {load_text()}")
    if arguments.out:
        device = resolve_device(arguments.device)
        Path(arguments.out).write_text(json.dumps({
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "quick": arguments.quick, "judged": judged, "rows": [asdict(row) for row in rows], "seconds": total,
        }, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
