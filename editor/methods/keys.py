"""MEMIT keys: inputs of the MLP output projection at the subject's last token, averaged over prefixes.

Keys are upcast to float32 whatever the model's dtype. Rows per forward pass come from `core.memory`
(at most `batch_rows` on a CPU); an out-of-memory error halves them and retries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.hooks import capture_inputs, capture_outputs, sequence_view
from core.loading import LoadedModel
from core.memory import ChunkSize
from editor.edits.requests import EditRequest
from editor.passes.forward import pad_id, pad_right, row_batches_within_memory, rows_per_batch, run_until
from editor.passes.rows import PromptRow, key_rows


@dataclass
class KeySet:
    """Keys per layer, (n, m) float32, mean over prefixes; `hidden`: (n, d) block output of the plain prompt."""

    keys: dict[int, torch.Tensor]
    hidden: torch.Tensor | None
    hidden_layer: int | None


@torch.inference_mode()
def collect_keys(
    loaded: LoadedModel,
    rows: list[PromptRow],
    count: int,
    layers: list[int],
    hidden_layer: int | None = None,
    batch_rows: int = 256,
) -> KeySet:
    """Keys at `layers` for `count` requests from their rows (plus block `hidden_layer`'s output on prefix 0)."""
    layout, model = loaded.layout, loaded.model
    last_needed = max(list(layers) + ([hidden_layer] if hidden_layer is not None else []))
    sums = {layer: torch.zeros(count, layout.mlp_size, dtype=torch.float32) for layer in layers}
    counts = torch.zeros(count, dtype=torch.float32)
    hidden = torch.zeros(count, layout.hidden_size, dtype=torch.float32) if hidden_layer is not None else None
    names = {layer: layout.mlp_output_projection(layer) for layer in layers}
    fill = pad_id(loaded.tokenizer)
    block = [layout.block(hidden_layer)] if hidden_layer is not None else []

    def batch_keys(batch: list[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Keys (rows, m) per layer and block outputs (rows, d) at each row's subject, float32 on the CPU."""
        chosen = [rows[i] for i in batch]
        ids, mask = pad_right([list(row.ids) for row in chosen], fill, loaded.device)
        with capture_inputs(model, list(names.values())) as inputs, capture_outputs(model, block) as outputs:
            run_until(loaded, last_needed, input_ids=ids, attention_mask=mask, use_cache=False)
        positions = [row.subject_last for row in chosen]
        found = {layer: _at(sequence_view(inputs[name], ids.shape[0], ids.shape[1]), positions) for layer, name in names.items()}
        return found, (_at(outputs[block[0]], positions) if block else None)

    longest = max(len(row.ids) for row in rows)
    extra = len(layers) * longest * layout.mlp_size * 4
    chunk = ChunkSize(
        rows_per_batch(loaded, longest, batch_rows, len(rows), extra), 1, f"collecting the keys of {count} request(s)",
        "rows", loaded.device, "Edit fewer facts at once.",
    )
    for batch, (found, outputs) in row_batches_within_memory([len(row.ids) for row in rows], chunk, batch_keys):
        chosen = [rows[i] for i in batch]
        owners = torch.tensor([row.request for row in chosen])
        for layer in layers:
            sums[layer].index_add_(0, owners, found[layer])
        counts.index_add_(0, owners, torch.ones(len(chosen)))
        if hidden is not None:
            plain = [i for i, row in enumerate(chosen) if row.prefix == 0]
            hidden[owners[plain]] = outputs[plain]
    keys = {layer: sums[layer] / counts.clamp(min=1).unsqueeze(-1) for layer in layers}
    return KeySet(keys, hidden, hidden_layer)


def _at(states: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """states (rows, T, w) at one position per row -> (rows, w) float32 on the CPU (indices on the states' device)."""
    rows = torch.arange(len(positions), device=states.device)
    return states[rows, torch.tensor(positions, device=states.device)].float().cpu()


def request_keys(
    loaded: LoadedModel,
    requests: list[EditRequest],
    prefixes: list[str],
    layers: list[int],
    hidden_layer: int | None = None,
    batch_rows: int = 256,
) -> KeySet:
    """Keys (mean over `prefixes`) of `requests` at `layers`, and block `hidden_layer`'s output at the subject."""
    rows = key_rows(loaded.tokenizer, requests, prefixes)
    return collect_keys(loaded, rows, len(requests), layers, hidden_layer, batch_rows)
