"""Real model sizes without downloads: a model built from the config of GPT-2 XL, GPT-J 6B, Llama-3-8B or
Qwen2.5-7B with random weights, timed on a trace, the target optimisation and the covariance pass.

    python -m bench shapes --shape gpt2-xl --quick           # minutes on a 2-core CPU
    python -m bench shapes --shape llama-3-8b --device cuda  # bfloat16 on a GPU: the whole trace, timed
    python -m bench shapes --shape gpt2-xl --trace-steps 1 --edits 20 --edit-steps 2 --cov-tokens 5000
        # the CPU memory check: the trace's largest chunks and 20 dev-set edits end to end (fewer target
        # steps and covariance tokens than a real edit: the same batches, so the same peak memory)

Random weights are fine for speed and memory (fidelity is checked on the embedded model). The tokenizer
is the embedded model's (its ids fit every shape's vocabulary). On a CPU the trace is timed on a strided
subset of its cells and extrapolated by work (rows x positions x blocks); on a GPU every cell runs. Peak
memory: the process's peak resident memory on a CPU, torch's peak allocation on a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from core.embedded import ensure_embedded_cache
from core.errors import InputError
from core.kinds import KINDS
from core.loading import LoadedModel, from_parts, resolve_device, resolve_dtype
from core.memory import free_memory
from editor.evaluation.counterfact import load_records
from editor.methods.memit import Memit
from editor.methods.settings import EditSettings, default_layers
from editor.methods.targets import compute_targets
from editor.statistics.corpus import WIKIPEDIA, load_corpus
from editor.statistics.covariance import collect_second_moments, layer_covariances
from tracer.fast_trace import FastTracer, Step, build_cells
from tracer.problem import TraceSettings, prepare_trace

ROOT = Path(__file__).resolve().parents[1]
DEVSET = ROOT / "assets" / "devset_smollm2-135m-instruct.json"
TRACE_PROMPT, TRACE_SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"  # 10 tokens
TRACE_NOISE = 0.1  # absolute: a random model has no measured embedding sigma
FIXED_PREFIXES = ["", "The city was quiet that night. ", "Therefore, the plan was changed. ", "Because it rained, we stayed. ",
                  "I read the whole report today. ", "You can see the river from here. "]

# The published configurations (sizes only; weights are random).
SHAPES: dict[str, tuple[str, dict]] = {
    "gpt2-xl": ("GPT2Config", dict(n_layer=48, n_embd=1600, n_head=25, n_positions=1024, vocab_size=50257)),
    "gpt-j-6b": ("GPTJConfig", dict(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, n_positions=2048, vocab_size=50400)),
    "llama-3-8b": ("LlamaConfig", dict(
        num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )),
    "qwen2.5-7b": ("Qwen2Config", dict(
        num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        use_sliding_window=False,
    )),
}
# --tiny: the same families at a width and depth that build in a second (a dry run of every stage)
TINY_CHANGES = {
    "GPT2Config": dict(n_layer=6, n_embd=64, n_head=4),
    "GPTJConfig": dict(n_layer=6, n_embd=64, n_head=4, rotary_dim=8),
    "LlamaConfig": dict(num_hidden_layers=6, hidden_size=64, intermediate_size=224, num_attention_heads=4, num_key_value_heads=2),
    "Qwen2Config": dict(num_hidden_layers=6, hidden_size=64, intermediate_size=296, num_attention_heads=4, num_key_value_heads=2),
}


# --- building -----------------------------------------------------------------------------------

def shape_config(name: str, tiny: bool = False) -> transformers.PretrainedConfig:
    """The transformers config of shape `name` (InputError for an unknown name)."""
    if name not in SHAPES:
        raise InputError(f"Unknown shape {name!r}: choose {', '.join(SHAPES)}.")
    class_name, values = SHAPES[name]
    values = {**values, **(TINY_CHANGES[class_name] if tiny else {})}
    config = getattr(transformers, class_name)(**values)
    config.use_cache = True
    return config


def parameter_count(config: transformers.PretrainedConfig) -> int:
    """Parameters of a model of `config`, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())


def embedded_tokenizer():
    """The embedded model's tokenizer (its ids are below every shape's vocabulary size)."""
    return transformers.AutoTokenizer.from_pretrained(str(ensure_embedded_cache()))


def build_shape(name: str, device: torch.device, dtype: torch.dtype, tokenizer, tiny: bool = False, seed: int = 0) -> LoadedModel:
    """A random-weight model of shape `name` on `device` in `dtype` (InputError first if its weights cannot fit)."""
    config = shape_config(name, tiny)
    if tokenizer.vocab_size > config.vocab_size:
        raise InputError(f"The tokenizer's {tokenizer.vocab_size} ids do not fit the {name} vocabulary of {config.vocab_size}.")
    weights = parameter_count(config) * torch.finfo(dtype).bits // 8
    free = free_memory(device)
    if weights > 0.9 * free:
        raise InputError(
            f"The {name} shape needs {weights / 2**30:.1f} GiB of weights in {str(dtype).removeprefix('torch.')}, "
            f"but {device} has {free / 2**30:.1f} GiB free. Use --dtype bfloat16, a GPU, or a smaller shape."
        )
    return from_parts(random_model(config, device, dtype, seed), tokenizer, spec=f"shape-{name}{'-tiny' if tiny else ''}",
                      name=f"{name} shape (random weights)")


def transformers_no_init_weights():
    """transformers' context that skips its weight initialisation, where this version has one (else None)."""
    if importlib.util.find_spec("transformers.initialization") is None:
        return None
    return getattr(importlib.import_module("transformers.initialization"), "no_init_weights", None)


def random_model(config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A model of `config` on `device`: matrices ~ N(0, initializer_range), norm scales 1, biases 0.

    One random draw per weight, where the device is: transformers' own initialisation (when it can be
    switched off) would draw twice, which takes most of a minute for GPT-2 XL on two CPU cores.
    """
    skip_init = transformers_no_init_weights()
    with torch.device(device), (skip_init() if skip_init is not None else nullcontext()):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if skip_init is None:
        return model
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    generator = torch.Generator(device=device).manual_seed(seed)
    std = float(getattr(config, "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # tied weights appear once
            if parameter.dim() >= 2:
                parameter.normal_(0.0, std, generator=generator)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.fill_(1.0)
    return model


# --- measuring ----------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory since `reset`: torch's peak allocation on a GPU; the process's peak resident set on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TraceTiming:
    """A trace timed whole, or on `timed_cells` of its `cells` and extrapolated by work."""

    tokens: int
    cells: int
    timed_cells: int
    prepare_seconds: float  # clean run and corrupted run
    timed_seconds: float
    seconds: float  # the whole trace (measured, or extrapolated)
    max_score: float = 0.0

    @property
    def extrapolated(self) -> bool:
        return self.timed_cells < self.cells

    @property
    def cells_per_second(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else float("nan")


def time_trace(
    loaded: LoadedModel, cells_per_token: int | None, samples: int = 10, kinds=KINDS, first_steps: int | None = None,
    token_stride: int = 1,
) -> TraceTiming:
    """Time the fast engine on the 10-token prompt: every cell, a strided subset of each token's cells
    (`cells_per_token`, of every `token_stride`-th token), or the plan's first `first_steps` steps (the largest
    chunks: the peak memory of the whole)."""
    settings = TraceSettings(kinds=tuple(kinds), samples=samples, window=10, noise=TRACE_NOISE)
    device = loaded.device
    synchronize(device)
    clock = time.perf_counter()
    problem = prepare_trace(loaded, TRACE_PROMPT, TRACE_SUBJECT, settings)
    tracer = FastTracer(loaded, problem)
    tracer.corrupted_run()
    plan = tracer.steps()
    synchronize(device)
    prepare_seconds = time.perf_counter() - clock
    layers = loaded.layout.num_layers
    total_cells = problem.num_tokens * len(settings.kinds) * layers
    if first_steps is not None:
        steps = [step for step in plan if step.fill is None][:first_steps]
        timed_cells = sum(len(step.cells) for step in steps)
    elif cells_per_token is None:
        steps, timed_cells = plan, total_cells
    else:
        windows = {kind: settings.window_for(kind) for kind in settings.kinds}
        steps, timed_cells = [], 0
        for token in range(problem.num_tokens - 1, problem.subject_range[0] - 1, -token_stride):  # the last token always
            computed = [cell for cell in build_cells(settings.kinds, windows, token, layers) if cell.start < layers]
            stride = max(1, len(computed) // cells_per_token)
            chosen = computed[stride // 2 :: stride][:cells_per_token]  # centred strides: from shallow to deep starts
            query = problem.num_tokens - token
            work = float(sum(layers - cell.start for cell in chosen) * query * samples)
            steps.append(Step(token=token, cells=chosen, work=work))
            timed_cells += len(chosen)
    clock = time.perf_counter()
    best = 0.0
    with loaded.lock:
        for step in steps:
            scores = tracer.run_step(step)
            best = max([best, *scores.values()])
    synchronize(device)
    timed = time.perf_counter() - clock
    work_timed = sum(step.work for step in steps) or 1.0
    whole = prepare_seconds + (timed if timed_cells == total_cells else timed * tracer.work_total / work_timed)
    return TraceTiming(problem.num_tokens, total_cells, timed_cells, prepare_seconds, timed, whole, best)


def dev_requests(count: int) -> list:
    """The first `count` dev-set records' edit requests."""
    return [record.request() for record in load_records(str(DEVSET))[:count]]


@dataclass
class StageFigure:
    """One row of the output table."""

    stage: str
    seconds: float
    rate: str
    detail: str
    peak_bytes: int
    extra: dict = field(default_factory=dict)


def time_targets(loaded: LoadedModel, requests: list, steps: int) -> tuple[float, float]:
    """(seconds, request-steps per second) of `steps` Adam steps of the target optimisation of `requests` in one batch.

    The context prefixes are fixed texts of the editor's number and length: a random model's own would be noise, and
    generating them token by token reads every weight ~50 times (most of a minute for GPT-2 XL on a CPU).
    """
    memit = Memit.for_model(loaded.layout).replace(steps=steps, loss_stop=0.0)
    settings = memit.settings
    prefixes = FIXED_PREFIXES
    synchronize(loaded.device)
    clock = time.perf_counter()
    compute_targets(loaded, requests, settings, prefixes)
    synchronize(loaded.device)
    seconds = time.perf_counter() - clock
    return seconds, len(requests) * steps / seconds


def time_covariance(loaded: LoadedModel, layers: list[int], tokens: int) -> tuple[float, float]:
    """(seconds, tokens per second) of one covariance pass over `tokens` Wikipedia tokens for `layers` (nothing cached)."""
    corpus = load_corpus(WIKIPEDIA)
    synchronize(loaded.device)
    clock = time.perf_counter()
    state = collect_second_moments(loaded, corpus, layers, tokens)
    synchronize(loaded.device)
    seconds = time.perf_counter() - clock
    return seconds, state.tokens / seconds


def run_edits(loaded: LoadedModel, count: int, cov_tokens: int, steps: int | None = None) -> tuple[float, dict, float]:
    """`count` dev-set edits in one MEMIT batch, end to end (covariance over `cov_tokens`, computed fresh).

    Returns (seconds, timings by part, mean relative update norm); the weights are left as they were.
    """
    requests = dev_requests(count)
    memit = Memit.for_model(loaded.layout, cov_tokens=cov_tokens, steps=steps)
    settings = memit.settings
    synchronize(loaded.device)
    clock = time.perf_counter()
    covariances = layer_covariances(loaded, list(settings.layers), cov_tokens, use_cache=False)
    synchronize(loaded.device)
    covariance_seconds = time.perf_counter() - clock
    batch = memit.compute(loaded, requests, covariances=covariances)
    synchronize(loaded.device)
    seconds = time.perf_counter() - clock
    timings = {"covariance": covariance_seconds, **{k: v for k, v in batch.timings.items() if k != "covariance"}}
    relative = sum(d.relative_update for d in batch.layer_diagnostics) / max(len(batch.layer_diagnostics), 1)
    return seconds, timings, relative


def load_text() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB"


def print_table(title: str, rows: list[StageFigure]) -> None:
    print(f"\n{title}")
    print(f"{'stage':<34}{'seconds':>10}  {'rate':<26}{'peak memory':>13}  detail")
    for row in rows:
        print(f"{row.stage:<34}{row.seconds:>10.1f}  {row.rate:<26}{gib(row.peak_bytes):>13}  {row.detail}")


# --- the benchmark ------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", required=True, choices=list(SHAPES))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on a CPU, bfloat16 on a GPU) | float32 | bfloat16 | float16")
    parser.add_argument("--quick", action="store_true", help="fewer timed cells, steps and tokens (gpt2-xl: minutes on a CPU)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the shape's family (a dry run of every stage)")
    parser.add_argument("--cells-per-token", type=int, default=None, help="trace cells timed per token (default: all on a GPU)")
    parser.add_argument("--trace-steps", type=int, default=None,
                        help="time the trace's first N batched steps instead (its largest chunks: the whole trace's peak memory)")
    parser.add_argument("--whole-trace", action="store_true", help="also run every cell of the trace (slow on a CPU)")
    parser.add_argument("--edits", type=int, default=0, help="also run this many dev-set edits in one batch, end to end")
    parser.add_argument("--edit-steps", type=int, default=None,
                        help="target optimization steps of --edits (default: the editor's 25; fewer need the same memory)")
    parser.add_argument("--cov-tokens", type=int, default=None, help="covariance budget of --edits (default: the editor's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    return parser.parse_args(argv)


def run(arguments: argparse.Namespace) -> list[StageFigure]:
    """Build the shape and measure every stage; returns the table's rows."""
    device = resolve_device(arguments.device)
    dtype = resolve_dtype(arguments.dtype, device)
    if arguments.edits < 0 or any(value is not None and value < 1 for value in (
        arguments.cov_tokens, arguments.edit_steps, arguments.trace_steps, arguments.cells_per_token
    )):
        raise InputError("--edits must be >= 0; --cov-tokens, --edit-steps, --trace-steps and --cells-per-token positive.")
    if arguments.edits > len(load_records(str(DEVSET))):
        raise InputError(f"--edits: the dev set has {len(load_records(str(DEVSET)))} records.")
    quick = arguments.quick
    peak = PeakMemory(device)
    rows: list[StageFigure] = []
    tokenizer = embedded_tokenizer()
    clock = time.perf_counter()
    loaded = build_shape(arguments.shape, device, dtype, tokenizer, tiny=arguments.tiny)
    synchronize(device)
    build_seconds = time.perf_counter() - clock
    layout = loaded.layout
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    rows.append(StageFigure("build (random weights)", build_seconds, f"{loaded.num_parameters / 1e9:.2f} B params",
                            f"{layout.num_layers} layers, d {layout.hidden_size}, m {layout.mlp_size}, "
                            f"vocab {layout.vocab_size}, weights {gib(weights)}", peak.peak()))
    print(f"{loaded.name} on {device} in {str(dtype).removeprefix('torch.')}: {loaded.num_parameters:,} parameters, "
          f"built in {build_seconds:.1f} s; {torch.get_num_threads()} torch threads; load average {load_text()}", flush=True)

    cells = arguments.cells_per_token
    if cells is None and device.type != "cuda":
        cells = 1 if quick else 8
    peak.reset()
    trace = time_trace(loaded, cells, first_steps=arguments.trace_steps, token_stride=2 if quick else 1)
    timed = f"the first {arguments.trace_steps} step(s), " if arguments.trace_steps else ""
    how = (f"{timed}{trace.timed_cells} of {trace.cells} cells timed ({trace.timed_seconds:.1f} s), extrapolated by work"
           if trace.extrapolated else f"all {trace.cells} cells")
    rows.append(StageFigure("trace: 10 tokens x 3 kinds", trace.seconds, f"{trace.cells_per_second:.1f} cells/s",
                            f"{how}; clean + corrupted runs {trace.prepare_seconds:.1f} s", peak.peak(),
                            {"timed_cells": trace.timed_cells, "cells": trace.cells}))
    print(f"  trace: {trace.seconds:.1f} s ({how})", flush=True)

    requests = dev_requests(1 if quick else 4)
    steps = 2 if quick else 3
    peak.reset()
    seconds, rate = time_targets(loaded, requests, steps)
    rows.append(StageFigure(f"targets: {len(requests)} request(s) x {steps} steps", seconds, f"{rate:.2f} request-steps/s",
                            f"one batch, cached engine, l_R = {max(default_layers(layout))}", peak.peak()))
    print(f"  targets: {seconds:.1f} s", flush=True)

    layers = list(default_layers(layout))
    tokens = 256 if quick else 4096
    peak.reset()
    seconds, rate = time_covariance(loaded, layers, tokens)
    full = EditSettings().cov_tokens
    rows.append(StageFigure(f"covariance: {tokens:,} tokens", seconds, f"{rate:,.0f} tokens/s",
                            f"layers {layers[0]}-{layers[-1]}; {full:,} tokens would take ~{full / rate:,.0f} s", peak.peak()))
    print(f"  covariance: {seconds:.1f} s", flush=True)

    if arguments.whole_trace and trace.extrapolated:
        peak.reset()
        whole = time_trace(loaded, None)
        rows.append(StageFigure("whole trace, every cell", whole.seconds, f"{whole.cells_per_second:.1f} cells/s",
                                f"{whole.cells} cells", peak.peak()))
        print(f"  whole trace: {whole.seconds:.1f} s", flush=True)
    if arguments.edits:
        cov_tokens = arguments.cov_tokens or full
        peak.reset()
        seconds, timings, relative = run_edits(loaded, arguments.edits, cov_tokens, arguments.edit_steps)
        parts = ", ".join(f"{name} {value:.0f} s" for name, value in timings.items())
        steps_text = f"{arguments.edit_steps} target steps" if arguments.edit_steps else "up to 25 target steps"
        rows.append(StageFigure(f"{arguments.edits} edits in one batch", seconds, f"{arguments.edits / seconds * 60:.2f} edits/min",
                                f"{parts}; {steps_text}; covariance over {cov_tokens:,} tokens", peak.peak()))
    return rows


def main(argv: list[str]) -> int:
    if not argv:  # `python -m bench` runs every benchmark without arguments: this one needs a shape
        print(f"bench shapes needs --shape ({', '.join(SHAPES)}); skipped. Example: python -m bench shapes --shape gpt2-xl --quick")
        return 0
    arguments = parse(argv)
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    started = time.perf_counter()
    try:
        rows = run(arguments)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = resolve_device(arguments.device)
    dtype = str(resolve_dtype(arguments.dtype, device)).removeprefix("torch.")
    print_table(f"bench shapes: {arguments.shape}{' (tiny)' if arguments.tiny else ''} on {device}, {dtype}", rows)
    total = time.perf_counter() - started
    print(f"total {total:.0f} s; machine load average at the end {load_text()} "
          "(CPU timings on a shared machine are noisy); peak memory is cumulative on a CPU (resident set)")
    if arguments.out:
        Path(arguments.out).write_text(json.dumps({
            "shape": arguments.shape, "tiny": arguments.tiny, "quick": arguments.quick, "device": str(device), "dtype": dtype,
            "threads": torch.get_num_threads(), "rows": [asdict(row) for row in rows], "seconds": total, "load_end": load_text(),
        }, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
