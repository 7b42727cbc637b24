"""Running the model on padded rows of token ids, stopping after the last block a caller needs.

`row_batches_within_memory` runs a computation on batches of rows sized by `core.memory` and halves a
batch that runs out of memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from core.hooks import forward_hooks
from core.loading import LoadedModel
from core.memory import ChunkSize, ModelShape, plan

T = TypeVar("T")


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


def rows_per_batch(loaded: LoadedModel, longest: int, default: int, count: int, row_extra_bytes: int = 0) -> int:
    """Rows of up to `longest` tokens per forward pass without gradients: at most `default` on a CPU, what fits on a GPU."""
    shape = ModelShape.of(loaded)
    unit = longest * shape.forward_token_bytes(longest) + row_extra_bytes
    return plan(loaded.device, unit, default=default, ceiling=max(count, 1))


def row_batches_within_memory(
    lengths: list[int], chunk: ChunkSize, compute: Callable[[list[int]], T]
) -> Iterator[tuple[list[int], T]]:
    """(batch, compute(batch)) for batches of similar-length rows of at most `chunk.size` rows.

    An out-of-memory error in `compute` halves `chunk` and retries the batch's rows in smaller batches;
    `compute` must change nothing (the caller applies each result), so a failed batch leaves no trace.
    """
    pending = list(row_batches(lengths, chunk.size))
    while pending:
        batch = pending.pop(0)
        try:
            result = compute(batch)
        except Exception as error:  # ChunkSize.halve re-raises anything but an out-of-memory error
            chunk.halve(error, smallest="one row" if len(batch) == 1 else None)
            pending[:0] = [batch[start : start + chunk.size] for start in range(0, len(batch), chunk.size)]
            continue
        yield batch, result
