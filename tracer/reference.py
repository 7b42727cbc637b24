"""The straightforward algorithm of the published ROME code (`trace_with_patch`): the reference.

One forward pass of samples + 1 rows per cell: row 0 clean, the corrupted rows 1.. (noise on their
subject embeddings, or the subject's tokens swapped), restoration copies row 0's value. A head
cell copies row 0's slice of that head in the input of the attention output projection. Tests and
the benchmark compare the fast engine (`tracer.fast_trace`) against it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from core.hooks import forward_hooks, forward_pre_hooks, output_tensor, sequence_view
from core.kinds import HEADS
from core.loading import LoadedModel
from core.memory import out_of_memory_as_error
from tracer.problem import TraceProblem, window_layers


@torch.inference_mode()
def reference_score(
    loaded: LoadedModel,
    problem: TraceProblem,
    patches: Sequence[tuple[int, str]],
    heads: Sequence[tuple[int, int]] = (),
) -> float:
    """Mean restored score of the answer with `patches` [(token, module name)] and `heads` [(layer, head)] restored.

    Heads are restored at `problem.head_positions()`. One forward of S+1 rows.
    """
    model, layout = loaded.model, loaded.layout
    rows = problem.samples + 1
    length = problem.num_tokens
    input_ids = torch.cat([problem.input_ids, problem.corruption.input_ids])
    tokens_by_module: dict[str, list[int]] = {}
    for token, name in patches:
        tokens_by_module.setdefault(name, []).append(token)
    heads_by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        heads_by_layer.setdefault(layer, []).append(head)

    def corrupt(module, args, output):
        problem.corrupt_(output_tensor(output)[1:])
        return output

    def make_patch(tokens: list[int]):
        def patch(module, args, output):
            states = sequence_view(output_tensor(output), rows, length)
            for token in tokens:
                states[1:, token] = states[0, token]
            return output

        return patch

    def make_head_patch(chosen: list[int]):
        positions = list(problem.head_positions())

        def patch(module, args):
            states = sequence_view(args[0], rows, length)
            for head in chosen:
                columns = layout.head_slice(head)
                states[1:, positions, columns] = states[0, positions, columns]

        return patch

    hooks = {layout.token_embedding: corrupt}
    hooks.update({name: make_patch(tokens) for name, tokens in tokens_by_module.items()})
    pre_hooks = {layout.attention_output_projection(layer): make_head_patch(chosen) for layer, chosen in heads_by_layer.items()}
    with forward_hooks(model, hooks), forward_pre_hooks(model, pre_hooks), out_of_memory_as_error("running the reference engine", loaded.device):
        logits = model(input_ids).logits
    if problem.settings.metric == "prob":  # exactly the published expression (mean of the probability vectors)
        return float(torch.softmax(logits[1:, -1, :].float(), dim=1).mean(dim=0)[problem.answer_id])
    return float(problem.metric_values(logits[1:, -1, :]).mean())


def reference_cell(loaded: LoadedModel, problem: TraceProblem, kind: str, token: int, layer: int) -> float:
    """Reference restored score of one cell (kind, token, layer) with the settings' window.

    For kind "heads", `token` is the head (restored at the settings' head positions, one layer).
    """
    layout = loaded.layout
    if kind == HEADS:
        return reference_score(loaded, problem, [], heads=[(layer, token)])
    window = problem.settings.window_for(kind)
    layers = window_layers(layer, window, layout.num_layers)
    return reference_score(loaded, problem, [(token, layout.site(kind, restored)) for restored in layers])


def reference_rows(loaded: LoadedModel, problem: TraceProblem) -> Iterator[tuple[str, int, list[float]]]:
    """(kind, row, scores over layers) for every row (a token, or a head for kind "heads"), every cell computed."""
    layers = loaded.layout.num_layers
    for token in range(problem.num_tokens):
        for kind in problem.settings.site_kinds:
            with loaded.lock:
                scores = [reference_cell(loaded, problem, kind, token, layer) for layer in range(layers)]
            yield kind, token, scores
    if HEADS in problem.settings.kinds:
        for head in range(loaded.layout.num_heads):
            with loaded.lock:
                scores = [reference_cell(loaded, problem, HEADS, head, layer) for layer in range(layers)]
            yield HEADS, head, scores
