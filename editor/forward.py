"""Running the model on padded rows of token ids, stopping after the last block a caller needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from core.hooks import forward_hooks
from core.loading import LoadedModel


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed blocks have run."""


@contextmanager
def stop_after(loaded: LoadedModel, layer: int) -> Iterator[None]:
    """During the block, every forward pass ends right after decoder block `layer` (catch with `run_until`)."""

    def hook(module, args, output):
        raise StopForward

    with forward_hooks(loaded.model, {loaded.layout.block(layer): hook}):
        yield


def run_until(loaded: LoadedModel, layer: int | None, **inputs) -> object | None:
    """Call the model on `inputs`, stopping after block `layer` (None: run it all). Returns the output or None."""
    if layer is None:
        return loaded.model(**inputs)
    with stop_after(loaded, layer):
        try:
            return loaded.model(**inputs)
        except StopForward:
            return None


def pad_right(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on the right: ids (B, T) and attention mask (B, T), both long."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id (its EOS id when it has none; padded positions are masked anyway)."""
    for attribute in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int):
            return value
    return 0


def row_batches(lengths: list[int], max_rows: int, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Indices of rows grouped into batches of similar length (sorted), each within the row/token limits."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    batch: list[int] = []
    for index in order:
        width = max([lengths[i] for i in batch] + [lengths[index]])
        if batch and (len(batch) >= max_rows or (max_tokens is not None and width * (len(batch) + 1) > max_tokens)):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch
