"""Benchmark: 100 dev-set edits in one batch vs the straightforward way, in one run, with quality.

Batched: C for every layer of R in one corpus pass; all target vectors optimized together (rows of
similar length per forward pass, the tokens before each subject computed once and kept as keys/values).
Straightforward: one corpus pass per layer; targets optimized one request at a time, every row run
from its first token at every step. Both then share the same layer loop, and both are scored on the
same CounterFact dev records (ES/PS/NS). Covariances are computed fresh (no cache) in both.

Variants (`--variants lr=1 early_stop_steps=2`) are the levers for faster target vectors: each optimizes the same
requests' targets with the batched engine and those settings changed, writes them with the same covariances,
and is scored beside the defaults, with its target time as a ratio to the defaults' in the same run.

    python -m bench edit            # or: make bench
    python -m bench.bench_edit --n 20 --tokens 20000
    python -m bench.bench_edit --n 40 --no-straightforward --variants lr=1 lr=2 early_stop_steps=2
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
from editor.methods.memit import Memit, MemitSettings
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
    parser.add_argument("--variants", nargs="*", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                        help="target-optimisation levers to compare with the defaults, e.g. lr=1 early_stop_steps=2")
    parser.add_argument("--no-straightforward", dest="straightforward", action="store_false",
                        help="skip the straightforward way (the slow baseline), e.g. when only the variants are wanted")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    return parser.parse_args(argv)


def parse_variant(text: str, settings_class) -> dict:
    """'lr=1,steps=40' -> {'lr': 1.0, 'steps': 40}, typed as the settings' fields; only the target optimisation's."""
    changes = {}
    for pair in text.split(","):
        name, equals, value = pair.partition("=")
        name = name.strip()
        if not equals or name not in TARGET_LEVERS:
            raise SystemExit(f"--variants takes NAME=VALUE[,NAME=VALUE] with NAME one of {', '.join(TARGET_LEVERS)}; got {text!r}")
        changes[name] = settings_class.parse_value(name, value.strip())
    return changes


TARGET_LEVERS = ("lr", "steps", "loss_stop", "early_stop_steps", "kl_factor", "weight_decay", "clamp_norm", "first_step")


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    variant_changes = [parse_variant(text, MemitSettings) for text in arguments.variants]  # before the model loads
    if len(set(arguments.variants)) != len(arguments.variants):
        raise SystemExit("--variants: each variant once")
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
          f"covariance over {settings.cov_tokens:,} Wikipedia tokens (computed fresh{' for both ways' if arguments.straightforward else ''})")
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
    serial = serial_targets = serial_times = None
    if arguments.straightforward:
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

    # --- levers: the batched engine with other target-optimisation settings, the same covariances ---------------
    variants = []
    for text, changes in zip(arguments.variants, variant_changes):
        clock = time.perf_counter()
        targets = compute_targets(loaded, requests, settings.replace(**changes).check(loaded.layout), prefixes, engine="cached",
                                  progress=log(f"targets {text}"))
        seconds = time.perf_counter() - clock
        variants.append({"label": text, "changes": changes, "targets_seconds": seconds, "ratio": batched_z / seconds,
                         "mean_steps": mean_steps(targets), "batch": memit.compute(loaded, requests, covariances=covariances,
                                                                                  targets=targets)})
        print(f"variant {text} done: targets {seconds:.0f} s", flush=True)

    # --- quality -------------------------------------------------------------------------------
    pre, _ = score_records(loaded, records, generation=False)
    scores = {"unedited": summarize(pre, [])}
    edited = [("batched", batched)] + ([("straightforward", serial)] if serial else [])
    for label, batch in edited + [(variant["label"], variant["batch"]) for variant in variants]:
        ledger = EditLedger.for_model(loaded)
        ledger.add(batch, loaded)
        with ledger.applied(loaded):
            post, _ = score_records(loaded, records, generation=False)
        scores[label] = summarize(post, [])

    print()
    print(f"{'seconds':16}{'covariance':>12}{'targets':>10}{'layers':>9}{'total':>9}")
    for label, times in (("batched", batched_times), ("straightforward", serial_times)):
        if times:
            print(f"{label:16}{times['covariance']:12.1f}{times['targets']:10.1f}{times['layers']:9.1f}{sum(times.values()):9.1f}")
    ratio = agreement = None
    if serial:
        ratio = sum(serial_times.values()) / sum(batched_times.values())
        print(f"speed-up: {ratio:.2f}x overall (covariance {serial_times['covariance'] / batched_times['covariance']:.2f}x, "
              f"targets {serial_times['targets'] / batched_times['targets']:.2f}x)")
        agreement = {
            "max_target_difference_relative": float(
                ((batched_targets.targets - serial_targets.targets).norm(dim=-1) / serial_targets.targets.norm(dim=-1)).max()
            ),
            "max_delta_difference_relative": max(
                float((batched.deltas[layer] - serial.deltas[layer]).norm() / serial.deltas[layer].norm())
                for layer in settings.layers
            ),
        }
    if variants:
        print(f"\n{'targets':24}{'seconds':>9}{'speed-up':>10}{'steps':>7}  (speed-up: the defaults' target time / the variant's)")
        print(f"{'defaults':24}{batched_z:9.1f}{1.0:9.2f}x{mean_steps(batched_targets):7.1f}")
        for variant in variants:
            print(f"{variant['label']:24}{variant['targets_seconds']:9.1f}{variant['ratio']:9.2f}x{variant['mean_steps']:7.1f}")
    print()
    print(f"{'quality':24}{'ES':>8}{'PS':>8}{'NS':>8}{'S':>8}{'ES-gen':>8}{'PS-gen':>8}{'Eff.acc':>9}{'Nbr.acc':>9}")
    for label, summary in scores.items():
        print(f"{label:24}{summary.ES:8.1f}{summary.PS:8.1f}{summary.NS:8.1f}{summary.S:8.1f}{cell(summary.ES_gen)}"
              f"{cell(summary.PS_gen)}{summary.efficacy_accuracy:9.1f}{summary.neighborhood_accuracy:9.1f}")
    if agreement:
        print(f"batched vs straightforward: targets z differ by at most {agreement['max_target_difference_relative']:.1e} "
              f"(relative), layer updates by {agreement['max_delta_difference_relative']:.1e}")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (CPU timings on a shared machine are noisy)")
    if arguments.out:
        Path(arguments.out).write_text(json.dumps({
            "model": loaded.name, "device": str(loaded.device), "n": len(requests), "layers": list(settings.layers),
            "lambda": settings.mom2_weight, "cov_tokens": settings.cov_tokens,
            "batched_seconds": batched_times, "straightforward_seconds": serial_times, "speedup": ratio,
            "batched_mean_steps": mean_steps(batched_targets),
            "variants": [{key: value for key, value in variant.items() if key != "batch"} | {"scores": scores[variant["label"]].to_dict()}
                         for variant in variants],
            "scores": {label: summary.to_dict() for label, summary in scores.items()}, "agreement": agreement,
        }, indent=1))
    targets_met = (
        scores["batched"].ES >= 95 and scores["batched"].PS >= 80 and scores["batched"].NS >= scores["unedited"].NS - 10
    )
    print(f"targets (ES >= 95, PS >= 80, NS >= unedited - 10): {'met' if targets_met else 'NOT met'}"
          + (f"; speed-up >= 5x: {'met' if ratio >= 5 else 'NOT met'}" if ratio else ""))
    return 0


def mean_steps(targets: TargetResult) -> float:
    """Target-optimisation steps per request, counting the last evaluation (gradient steps + 1)."""
    return sum(diagnostic.steps + 1 for diagnostic in targets.diagnostics) / len(targets.diagnostics)


def cell(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8}"


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
