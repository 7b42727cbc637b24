"""Instant preview of a trace by attribution patching (approximate, labelled so).

A first-order estimate of every cell from one corrupted forward and backward pass: restoring
module output a at token t changes the score by about (a_clean - a_corrupted) . d score / d a,
summed over the window's layers and the noise samples. Cheap (< 1 s for the embedded model on a
CPU), but only an estimate: the exact trace replaces it.
"""

from __future__ import annotations

import time

import torch

from core.hooks import capture_outputs, forward_hooks, output_tensor, replace_output_tensor, sequence_view
from core.layout import KINDS
from core.loading import LoadedModel
from tracer.problem import (
    TraceProblem,
    TraceResult,
    TraceSettings,
    answer_probability,
    empty_result,
    prepare_trace,
)

PREVIEW_SAMPLES = 3  # noise samples of the preview (the first ones of the trace's noise)


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
    """(corrupted score, {kind: (T, L) first-order effect of restoring one layer's output at one token})."""
    model, layout = loaded.model, loaded.layout
    samples = max(1, min(samples, problem.samples))
    noise = problem.noise[:samples]
    length = problem.num_tokens
    sites = {kind: [layout.site(kind, layer) for layer in range(layout.num_layers)] for kind in problem.settings.kinds}
    names = sorted({name for kind in sites for name in sites[kind]} | {layout.block(layout.num_layers - 1)})
    begin, end = problem.subject_range

    def corrupt(module, args, output):
        states = output_tensor(output).detach().clone()
        states[:, begin:end] += noise.to(states.device)
        return replace_output_tensor(output, states.requires_grad_(True))

    base = getattr(model, "base_model", model)
    with torch.inference_mode(False), torch.enable_grad():
        with forward_hooks(model, {layout.token_embedding: corrupt}), capture_outputs(model, names, detach=False) as outputs:
            base(problem.input_ids.repeat(samples, 1))
        final = outputs[layout.block(layout.num_layers - 1)]
        final = output_tensor(final) if not isinstance(final, torch.Tensor) else final
        score = answer_probability(layout.final_logits(model, sequence_view(final, samples, length)[:, -1]), problem.answer_id).mean()
        tensors = [outputs[name] for name in names]
        gradients = torch.autograd.grad(score, tensors, allow_unused=True)
    by_name = dict(zip(names, zip(tensors, gradients)))
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
    return float(score.detach()), effects


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
            estimate = (low + windowed_sum(effects[kind], settings.window_for(kind))).clamp(0.0, 1.0)
            result.scores[kind] = estimate.tolist()
    result.elapsed = time.perf_counter() - started
    return result
