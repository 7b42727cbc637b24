"""Reading, changing and restoring the edited matrices W_l (exactly, bit for bit).

A change that stays on the model for a while (a ledger's edits, an edit's layer updates) is made between
`hold_weights` and `release_weights`: the saved originals are registered on the model, so that
`editor.edits.ledger.edits_suspended` can take every held change off and put it back, bit for bit.
"""

from __future__ import annotations

import hashlib

import torch

from core.loading import LoadedModel


def projection_weight(loaded: LoadedModel, layer: int) -> torch.Tensor:
    """W of the MLP output projection at `layer` as a (d, m) view (GPT-2's Conv1D transposed back)."""
    return loaded.layout.output_projection_weight(loaded.model, layer)


def add_delta(weight: torch.Tensor, delta: torch.Tensor) -> None:
    """weight (d, m) += delta in place, the same way every time (so re-applying a delta gives the same bits)."""
    with torch.no_grad():
        if weight.dtype == delta.dtype:
            weight.add_(delta.to(weight.device))
        else:
            weight.copy_((weight.float() + delta.to(weight.device).float()).to(weight.dtype))


def snapshot(loaded: LoadedModel, layers) -> dict[int, torch.Tensor]:
    """Copies of W_l for `layers`, to put back with `restore`."""
    return {layer: projection_weight(loaded, layer).detach().clone() for layer in layers}


def restore(loaded: LoadedModel, saved: dict[int, torch.Tensor]) -> None:
    """Put the saved W_l back (bit for bit)."""
    with torch.no_grad():
        for layer, tensor in saved.items():
            projection_weight(loaded, layer).copy_(tensor)


def hold_weights(loaded: LoadedModel, layers) -> dict[int, torch.Tensor]:
    """`snapshot` of W_l before changing them for a while, registered on `loaded` until `release_weights`."""
    saved = snapshot(loaded, layers)
    held_frames(loaded).append(saved)
    return saved


def release_weights(loaded: LoadedModel, saved: dict[int, torch.Tensor]) -> None:
    """Put the held W_l back (bit for bit) and forget the hold."""
    restore(loaded, saved)
    frames = held_frames(loaded)
    for index in range(len(frames) - 1, -1, -1):
        if frames[index] is saved:
            del frames[index]
            break


def held_frames(loaded: LoadedModel) -> list[dict[int, torch.Tensor]]:
    """The open holds on `loaded`, outermost first (each: the W_l it saved)."""
    frames = getattr(loaded, "_locus_held_weights", None)
    if frames is None:
        frames = loaded._locus_held_weights = []
    return frames


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (dtype and shape included)."""
    data = tensor.detach().contiguous().cpu()
    raw = data.view(torch.uint8) if data.dtype != torch.bool else data.to(torch.uint8)
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def weights_hash(loaded: LoadedModel, layers) -> str:
    """One sha256 over W_l of `layers` (the matrices an edit touches)."""
    digest = hashlib.sha256()
    for layer in sorted(set(layers)):
        digest.update(f"{layer}:".encode())
        digest.update(tensor_digest(projection_weight(loaded, layer)).encode())
    return digest.hexdigest()
