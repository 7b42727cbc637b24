"""Instant preview of a trace by attribution patching (approximate, labelled so).

A first-order estimate of every cell from one corrupted forward and backward pass: restoring
module output a at token t changes the score by about (a_clean - a_corrupted) . d score / d a,
summed over the window's layers and the corrupted samples. Every corruption (noise, replace,
resample) and every metric (prob, logit-diff, logprob) is estimated the same way, and so are single
heads (the gradient at the head's slice of the attention output projection's input). Cheap (< 1 s
for the embedded model on a CPU), but only an estimate: the exact trace replaces it.
"""

from __future__ import annotations

import time

import torch

from core.hooks import (
    capture_inputs,
    capture_outputs,
    forward_hooks,
    output_tensor,
    replace_output_tensor,
    sequence_view,
)
from core.kinds import HEADS, KINDS
from core.loading import LoadedModel
from tracer.problem import TraceProblem, TraceResult, TraceSettings, empty_result, prepare_trace

PREVIEW_SAMPLES = 3  # corrupted samples of the preview (the first ones of the trace's)


def windowed_sum(effects: torch.Tensor, window: int) -> torch.Tensor:
    """Sum of per-layer effects (T, L) over each cell's window of layers: (T, L)."""
    layers = effects.shape[1]
    padded = torch.nn.functional.pad(effects.cumsum(dim=1), (1, 0))
    index = torch.arange(layers)
    first = (index - window // 2).clamp(min=0)
    end = (index + window - window // 2).clamp(max=layers)
    return padded[:, end] - padded[:, first]


def attribution_effects(
    loaded: LoadedModel, problem: TraceProblem, samples: int = PREVIEW_SAMPLES
) -> tuple[float, dict[str, torch.Tensor]]:
    """(corrupted score, {kind: (T, L) first-order effect of restoring one layer's output at one token}).

    With heads traced, {"heads": (heads, L)} is the effect of restoring one head of one layer at the
    settings' head positions.
    """
    model, layout = loaded.model, loaded.layout
    corruption = problem.corruption.first(samples)
    samples = corruption.samples
    length = problem.num_tokens
    site_kinds = problem.settings.site_kinds
    sites = {kind: [layout.site(kind, layer) for layer in range(layout.num_layers)] for kind in site_kinds}
    names = sorted({name for kind in sites for name in sites[kind]} | {layout.block(layout.num_layers - 1)})
    projections = [layout.attention_output_projection(layer) for layer in range(layout.num_layers)] if problem.clean_head_inputs else []
    begin = problem.subject_range[0]

    def corrupt(module, args, output):
        states = output_tensor(output).detach().clone()
        corruption.apply_(states)
        return replace_output_tensor(output, states.requires_grad_(True))

    base = getattr(model, "base_model", model)
    with torch.inference_mode(False), torch.enable_grad():
        with forward_hooks(model, {layout.token_embedding: corrupt}), capture_outputs(model, names, detach=False) as outputs, \
                capture_inputs(model, projections, detach=False) as head_inputs:
            base(corruption.input_ids)
        final = outputs[layout.block(layout.num_layers - 1)]
        final = output_tensor(final) if not isinstance(final, torch.Tensor) else final
        score = problem.metric_values(layout.final_logits(model, sequence_view(final, samples, length)[:, -1])).mean()
        tensors = [outputs[name] for name in names] + [head_inputs[name] for name in projections]
        gradients = torch.autograd.grad(score, tensors, allow_unused=True)
    by_name = dict(zip(names + projections, zip(tensors, gradients)))
    effects = {}
    for kind, kind_sites in sites.items():
        rows = []
        for name in kind_sites:
            corrupted, gradient = by_name[name]
            if gradient is None:
                rows.append(torch.zeros(length))
                continue
            corrupted = sequence_view(corrupted.detach(), samples, length)
            gradient = sequence_view(gradient, samples, length)
            clean = problem.clean_states[name]
            rows.append(((clean - corrupted) * gradient).sum(dim=(0, 2)).float().cpu())
        effects[kind] = torch.stack(rows, dim=1)
        # Before the subject the corrupted run equals the clean one (causal attention): the effect is exactly 0,
        # whatever rounding the clean (1 row) and corrupted (S rows) passes' different matmul shapes leave.
        effects[kind][:begin] = 0.0
    if projections:
        effects[HEADS] = head_attribution(layout, problem, [by_name[name] for name in projections], samples)
    return float(score.detach()), effects


def head_attribution(layout, problem: TraceProblem, pairs: list[tuple[torch.Tensor, torch.Tensor | None]], samples: int) -> torch.Tensor:
    """(heads, L) first-order effects of restoring each head's slice at the head positions (from the subject on)."""
    length = problem.num_tokens
    positions = [position for position in problem.head_positions() if position >= problem.subject_range[0]]
    columns = torch.zeros(layout.num_heads, layout.num_layers)
    for layer, (corrupted, gradient) in enumerate(pairs):
        if gradient is None:
            continue
        corrupted = sequence_view(corrupted.detach(), samples, length)[:, positions]
        gradient = sequence_view(gradient, samples, length)[:, positions]
        clean = problem.clean_head_inputs[layer][:, positions]
        products = ((clean - corrupted) * gradient).sum(dim=(0, 1)).float().cpu()  # (heads * head_dim,)
        columns[:, layer] = products.view(layout.num_heads, layout.head_dim).sum(dim=1)
    return columns


def bounded(estimate: torch.Tensor, metric: str) -> torch.Tensor:
    """Estimates kept in the metric's range: a probability in [0, 1], a log probability <= 0."""
    if metric == "prob":
        return estimate.clamp(0.0, 1.0)
    if metric == "logprob":
        return estimate.clamp(max=0.0)
    return estimate


def preview_trace(loaded: LoadedModel, prompt: str, subject: str, settings: TraceSettings | None = None) -> TraceResult:
    """An approximate TraceResult (approximate=True) in well under a second for small models."""
    settings = settings or TraceSettings()
    started = time.perf_counter()
    with loaded.lock:
        problem = prepare_trace(loaded, prompt, subject, settings)
        low, effects = attribution_effects(loaded, problem)
    result = empty_result(loaded, problem, low, approximate=True, engine="attribution patching")
    for kind in KINDS:
        if kind in effects:
            result.scores[kind] = bounded(low + windowed_sum(effects[kind], settings.window_for(kind)), settings.metric).tolist()
    if HEADS in effects:
        result.head_scores = bounded(low + effects[HEADS], settings.metric).tolist()
    result.elapsed = time.perf_counter() - started
    return result
