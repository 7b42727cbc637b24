"""The straightforward algorithm of the published ROME code (`trace_with_patch`): the reference.

One forward pass of samples + 1 rows per cell: row 0 clean, noise on rows 1.., restoration copies
row 0's value. Tests and the benchmark compare the fast engine (`tracer.fast_trace`) against it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from core.hooks import forward_hooks, output_tensor, sequence_view
from core.loading import LoadedModel
from core.memory import out_of_memory_as_error
from tracer.noise import add_noise_
from tracer.problem import TraceProblem, window_layers


@torch.inference_mode()
def reference_score(loaded: LoadedModel, problem: TraceProblem, patches: Sequence[tuple[int, str]]) -> float:
    """Mean restored probability of the answer with `patches` [(token, module name)]: one forward of S+1 rows."""
    model, layout = loaded.model, loaded.layout
    rows = problem.samples + 1
    length = problem.num_tokens
    input_ids = problem.input_ids.repeat(rows, 1)
    tokens_by_module: dict[str, list[int]] = {}
    for token, name in patches:
        tokens_by_module.setdefault(name, []).append(token)

    def corrupt(module, args, output):
        add_noise_(output_tensor(output)[1:], problem.noise, problem.subject_range)
        return output

    def make_patch(tokens: list[int]):
        def patch(module, args, output):
            states = sequence_view(output_tensor(output), rows, length)
            for token in tokens:
                states[1:, token] = states[0, token]
            return output

        return patch

    hooks = {layout.token_embedding: corrupt}
    hooks.update({name: make_patch(tokens) for name, tokens in tokens_by_module.items()})
    with forward_hooks(model, hooks), out_of_memory_as_error("running the reference engine", loaded.device):
        logits = model(input_ids).logits
    return float(torch.softmax(logits[1:, -1, :].float(), dim=1).mean(dim=0)[problem.answer_id])


def reference_cell(loaded: LoadedModel, problem: TraceProblem, kind: str, token: int, layer: int) -> float:
    """Reference restored probability of one cell (kind, token, layer) with the settings' window."""
    layout = loaded.layout
    window = problem.settings.window_for(kind)
    layers = window_layers(layer, window, layout.num_layers)
    return reference_score(loaded, problem, [(token, layout.site(kind, restored)) for restored in layers])


def reference_rows(loaded: LoadedModel, problem: TraceProblem) -> Iterator[tuple[str, int, list[float]]]:
    """(kind, token, scores over layers) for every row, by the straightforward algorithm (every cell computed)."""
    for token in range(problem.num_tokens):
        for kind in problem.settings.kinds:
            with loaded.lock:
                scores = [reference_cell(loaded, problem, kind, token, layer) for layer in range(loaded.layout.num_layers)]
            yield kind, token, scores


