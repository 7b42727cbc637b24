"""Benchmark: 100 dev-set edits in one batch vs the straightforward way, in one run, with quality.

Batched: C for every layer of R in one corpus pass; all target vectors optimized together (rows of
similar length per forward pass, the tokens before each subject computed once and kept as keys/values).
Straightforward: one corpus pass per layer; targets optimized one request at a time, every row run
from its first token at every step. Both then share the same layer loop, and both are scored on the
same CounterFact dev records (ES/PS/NS). Covariances are computed fresh (no cache) in both.

    python -m bench edit            # or: make bench
    python -m bench.bench_edit --n 20 --tokens 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from core.loading import load_model
from editor.edits.ledger import EditLedger
from editor.evaluation.counterfact import load_records
from editor.evaluation.evaluate import score_records, summarize
from editor.layers import parse_layers
from editor.methods.memit import Memit
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import TargetResult, compute_targets
from editor.statistics import covariance

ROOT = Path(__file__).resolve().parents[1]
DEVSET = ROOT / "assets" / "devset_smollm2-135m-instruct.json"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_edit", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="dev-set edits (default 100)")
    parser.add_argument("--data", default=str(DEVSET))
    parser.add_argument("--layers", default=None, help="R (default: the family default, the tracer's R = 2-6 on SmolLM2)")
    parser.add_argument("--tokens", type=int, default=None, help="covariance token budget (default: the editor's)")
    parser.add_argument("--lambda", dest="mom2_weight", type=float, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (on a shared, busy machine 1 is often faster)")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    loaded = load_model("embedded", device=arguments.device)
    records = load_records(arguments.data)[: arguments.n]
    requests = [record.request() for record in records]
    layers = parse_layers(arguments.layers, loaded.layout.num_layers) if arguments.layers else None
    memit = Memit.for_model(loaded.layout, layers=layers, cov_tokens=arguments.tokens, mom2_weight=arguments.mom2_weight)
    settings = memit.settings
    print(f"{loaded.name} on {loaded.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{len(requests)} edits, R = {list(settings.layers)}, lambda = {settings.mom2_weight:g}, "
          f"covariance over {settings.cov_tokens:,} Wikipedia tokens (computed fresh for both)")
    prefixes = context_prefixes(loaded, settings)  # shared by both (seconds; generated once per model)

    def log(label):
        last = [0.0]

        def report(fraction, message):
            if time.perf_counter() - last[0] > 60:
                print(f"  [{label}] {fraction:5.1%} {message}", flush=True)
                last[0] = time.perf_counter()
        return report

    # --- batched ---------------------------------------------------------------------------
    covariance._MEMORY.clear()
    clock = time.perf_counter()
    covariances = covariance.layer_covariances(loaded, list(settings.layers), settings.cov_tokens, use_cache=False,
                                               progress=log("batched covariance"))
    batched_cov = time.perf_counter() - clock
    clock = time.perf_counter()
    batched_targets = compute_targets(loaded, requests, settings, prefixes, engine="cached", progress=log("batched targets"))
    batched_z = time.perf_counter() - clock
    batched = memit.compute(loaded, requests, covariances=covariances, targets=batched_targets)
    batched_times = {"covariance": batched_cov, "targets": batched_z, "layers": batched.timings["layers"]}
    print(f"batched done: {sum(batched_times.values()):.0f} s", flush=True)

    # --- straightforward ---------------------------------------------------------------------
    covariance._MEMORY.clear()
    clock = time.perf_counter()
    per_layer = {}
    for layer in settings.layers:
        single = covariance.layer_covariances(loaded, [layer], settings.cov_tokens, use_cache=False,
                                              progress=log(f"covariance layer {layer}"))
        per_layer[layer] = single
    serial_cov = time.perf_counter() - clock
    serial_covariances = covariance.CovarianceSet(
        {layer: s.covariances[layer] for layer, s in per_layer.items()},
        {layer: s.diagnostics[layer] for layer, s in per_layer.items()},
    )
    clock = time.perf_counter()
    parts = []
    for index, request in enumerate(requests):
        parts.append(compute_targets(loaded, [request], settings, prefixes, engine="full"))
        if (index + 1) % 10 == 0:
            print(f"  [serial targets] {index + 1}/{len(requests)} ({time.perf_counter() - clock:.0f} s)", flush=True)
    serial_targets = TargetResult(
        parts[0].layer, torch.cat([p.targets for p in parts]), torch.cat([p.hidden for p in parts]),
        [d for p in parts for d in p.diagnostics],
    )
    serial_z = time.perf_counter() - clock
    serial = memit.compute(loaded, requests, covariances=serial_covariances, targets=serial_targets)
    serial_times = {"covariance": serial_cov, "targets": serial_z, "layers": serial.timings["layers"]}

    # --- quality -------------------------------------------------------------------------------
    pre, _ = score_records(loaded, records, generation=False)
    scores = {"unedited": summarize(pre, [])}
    for label, batch in (("batched", batched), ("straightforward", serial)):
        ledger = EditLedger.for_model(loaded)
        ledger.add(batch, loaded)
        with ledger.applied(loaded):
            post, _ = score_records(loaded, records, generation=False)
        scores[label] = summarize(post, [])
    agreement = {
        "max_target_difference_relative": float(
            ((batched_targets.targets - serial_targets.targets).norm(dim=-1) / serial_targets.targets.norm(dim=-1)).max()
        ),
        "max_delta_difference_relative": max(
            float((batched.deltas[layer] - serial.deltas[layer]).norm() / serial.deltas[layer].norm()) for layer in settings.layers
        ),
    }

    total_batched, total_serial = sum(batched_times.values()), sum(serial_times.values())
    print()
    print(f"{'seconds':16}{'covariance':>12}{'targets':>10}{'layers':>9}{'total':>9}")
    for label, times in (("batched", batched_times), ("straightforward", serial_times)):
        print(f"{label:16}{times['covariance']:12.1f}{times['targets']:10.1f}{times['layers']:9.1f}{sum(times.values()):9.1f}")
    ratio = total_serial / total_batched
    print(f"speed-up: {ratio:.2f}x overall (covariance {serial_times['covariance'] / batched_times['covariance']:.2f}x, "
          f"targets {serial_times['targets'] / batched_times['targets']:.2f}x)")
    print()
    print(f"{'quality':16}{'ES':>8}{'PS':>8}{'NS':>8}{'S':>8}{'Eff.acc':>9}{'Nbr.acc':>9}")
    for label, summary in scores.items():
        print(f"{label:16}{summary.ES:8.1f}{summary.PS:8.1f}{summary.NS:8.1f}{summary.S:8.1f}"
              f"{summary.efficacy_accuracy:9.1f}{summary.neighborhood_accuracy:9.1f}")
    print(f"batched vs straightforward: targets z differ by at most {agreement['max_target_difference_relative']:.1e} "
          f"(relative), layer updates by {agreement['max_delta_difference_relative']:.1e}")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (CPU timings on a shared machine are noisy)")
    if arguments.out:
        Path(arguments.out).write_text(json.dumps({
            "model": loaded.name, "device": str(loaded.device), "n": len(requests), "layers": list(settings.layers),
            "lambda": settings.mom2_weight, "cov_tokens": settings.cov_tokens,
            "batched_seconds": batched_times, "straightforward_seconds": serial_times, "speedup": ratio,
            "scores": {label: summary.to_dict() for label, summary in scores.items()}, "agreement": agreement,
        }, indent=1))
    targets_met = (
        scores["batched"].ES >= 95 and scores["batched"].PS >= 80 and scores["batched"].NS >= scores["unedited"].NS - 10
    )
    print(f"targets (ES >= 95, PS >= 80, NS >= unedited - 10): {'met' if targets_met else 'NOT met'}; "
          f"speed-up >= 5x: {'met' if ratio >= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
