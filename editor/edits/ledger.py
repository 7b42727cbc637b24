"""The edit ledger: an ordered list of edit batches that one user (one browser session) has made.

The shared model in memory always holds its original weights. A ledger's edits exist on it only inside
`with ledger.applied(loaded):`, which holds `loaded.lock`, adds the batches' deltas in order and puts the
original matrices back (bit for bit) on every exit, so sessions never see each other's edits. Undo is
removing a batch from the list; the weights are recomputed from the originals, never by subtraction.
Ledgers are saved as one safetensors file (deltas + keys) whose metadata holds the JSON description.

Memory stays bounded as edits pile up: each batch keeps its deltas as thin factors (editor.edits.deltas) and
its keys, r (d + m) + m float32 numbers per edit and edited layer (73 KB per edit for SmolLM2-135M
with 5 layers), and the ledger caches one edited copy of each touched matrix (d m per layer, whatever
the number of edits), so entering `applied` copies matrices instead of re-adding every batch. The
cache is rebuilt from the original weights (batch by batch, in order) after an undo, so the bits are
the same as if the undone batch had never been added. `edits_suspended(loaded)` takes whatever edits are
applied off the weights for a while (another session's job runs in the middle of this one's) and puts
the same bits back. AlphaEdit's per-ledger state (K_p K_p^T of the
earlier edits) is computed from the batches' keys, so undo, reset and export/import keep it exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.errors import InputError
from core.facts import model_key
from core.layout import ModelLayout
from core.loading import LoadedModel
from editor.edits.batch import EditBatch
from editor.edits.deltas import LayerDelta
from editor.edits.weights import (
    add_delta,
    held_frames,
    hold_weights,
    release_weights,
    restore,
    snapshot,
    tensor_digest,
    weights_hash,
)

LEDGER_FORMAT = 2  # 2: deltas as factors (".left"/".right") or dense (".delta"); 1: dense only
READABLE_FORMATS = (1, 2)
METADATA_KEY = "locus_ledger"


def edits_applied(loaded: LoadedModel) -> bool:
    """True while some ledger's edits are on `loaded`'s weights (inside `EditLedger.applied`)."""
    return loaded.edits_applied


@contextmanager
def edits_suspended(loaded: LoadedModel) -> Iterator[LoadedModel]:
    """Within the block, `loaded` holds its original weights and no ledger counts as applied; on exit every held
    change (applied ledgers, an edit's layer updates) is back, the same bits, as is the applied depth.

    For running another session's work in the middle of this one's (the app's safe points): inside, that
    work enters its own `applied(...)` as on an idle model. Holds `loaded.lock`.
    """
    with loaded.lock:
        frames, depth = held_frames(loaded), getattr(loaded, "_locus_applied_depth", 0)
        originals: dict[int, torch.Tensor] = {}
        for frame in frames:  # the outermost hold of a layer saved its original weights
            for layer, tensor in frame.items():
                originals.setdefault(layer, tensor)
        current = snapshot(loaded, originals)
        restore(loaded, originals)
        loaded._locus_held_weights, loaded._locus_applied_depth = [], 0
        try:
            yield loaded
        finally:
            restore(loaded, current)
            loaded._locus_held_weights, loaded._locus_applied_depth = frames, depth


def batch_bytes_bound(layout: ModelLayout, layers: Sequence[int], requests: int) -> int:
    """At most the bytes a batch of `requests` edits at `layers` adds to a ledger: float32 thin factors (d + m)
    and keys (m) per request and layer, plus a cached edited copy (d x m) of each matrix, counted in full."""
    per_layer = requests * (layout.hidden_size + 2 * layout.mlp_size) + layout.hidden_size * layout.mlp_size
    return 4 * len(layers) * per_layer


class EditLedger:
    """Ordered edit batches for one model; see the module docstring for how they reach the weights."""

    def __init__(self, model: str | None = None, base_hashes: dict[int, str] | None = None):
        self.model = model
        self.batches: list[EditBatch] = []
        self.base_hashes: dict[int, str] = dict(base_hashes or {})  # layer -> digest of the original W_l
        self._edited: tuple[tuple[str, ...], dict[int, torch.Tensor]] | None = None  # (batch ids, edited W_l)

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> EditLedger:
        return cls(model_key(loaded))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[EditBatch]:
        return iter(self.batches)

    @property
    def layers(self) -> list[int]:
        return sorted({layer for batch in self.batches for layer in batch.deltas})

    @property
    def requests(self):
        return [request for batch in self.batches for request in batch.requests]

    # --- changing the list ------------------------------------------------------------------
    def add(self, batch: EditBatch, loaded: LoadedModel | None = None) -> EditBatch:
        """Append `batch` (it must come from the same model)."""
        if self.model is None:
            self.model = batch.model
        if batch.model != self.model:
            raise InputError(
                f"This edit was computed on model {batch.model!r}, but the ledger belongs to {self.model!r}."
            )
        if any(existing.batch_id == batch.batch_id for existing in self.batches):
            raise InputError(f"Edit batch {batch.batch_id} is already in the ledger.")
        if loaded is not None:
            self._record_base(loaded, batch.deltas)
        self.batches.append(batch)
        return batch

    def undo(self, batch_id: str | None = None) -> EditBatch:
        """Remove batch `batch_id` (default: the last one) and return it."""
        if not self.batches:
            raise InputError("There is no edit to undo.")
        if batch_id is None:
            return self.batches.pop()
        for index, batch in enumerate(self.batches):
            if batch.batch_id == batch_id:
                return self.batches.pop(index)
        raise InputError(f"No edit batch {batch_id!r} in this ledger (it has {', '.join(b.batch_id for b in self.batches) or 'none'}).")

    def reset(self) -> None:
        """Forget every edit."""
        self.batches.clear()
        self._edited = None

    def with_batch(self, batch: EditBatch) -> EditLedger:
        """A new ledger: this one's batches plus `batch` (this ledger is not changed)."""
        copy = EditLedger(self.model, self.base_hashes)
        copy.batches = list(self.batches)
        copy._edited = self._edited  # never changed in place, so sharing it is safe
        copy.add(batch)
        return copy

    def nbytes(self) -> dict[str, int]:
        """Bytes held: the batches' compact deltas and keys, and the cached edited matrices."""
        cache = sum(t.numel() * t.element_size() for t in self._edited[1].values()) if self._edited else 0
        return {"batches": sum(batch.nbytes for batch in self.batches), "cache": cache}

    def held_bytes(self) -> int:
        """All the bytes `nbytes` counts."""
        return sum(self.nbytes().values())

    # --- the weights ------------------------------------------------------------------------
    def check_model(self, loaded: LoadedModel) -> None:
        """InputError unless `loaded` is the model this ledger was made for (name, sizes and original weights)."""
        key = model_key(loaded)
        if self.model is not None and self.model != key:
            raise InputError(
                f"This ledger was made for model {self.model!r}, but the loaded model is {key!r}; "
                "edits only make sense on the model they were computed for."
            )
        layout = loaded.layout
        for batch in self.batches:
            for layer in batch.deltas:
                shape = tuple(batch.deltas.shape(layer))
                if not 0 <= layer < layout.num_layers or shape != (layout.hidden_size, layout.mlp_size):
                    raise InputError(
                        f"This ledger's edit {batch.batch_id} does not fit the loaded model (layer {layer}, "
                        f"delta {shape} vs W {(layout.hidden_size, layout.mlp_size)})."
                    )
        if self.base_hashes and not self._in_use(loaded):
            for layer, expected in self.base_hashes.items():
                actual = tensor_digest(loaded.layout.output_projection_weight(loaded.model, layer))
                if actual != expected:
                    raise InputError(
                        f"This ledger was made for different weights of {self.model!r} (layer {layer} differs from "
                        "the weights it was computed on). Load it on the same model it was saved from."
                    )

    def _in_use(self, loaded: LoadedModel) -> bool:
        return edits_applied(loaded)

    def _record_base(self, loaded: LoadedModel, deltas: dict[int, torch.Tensor]) -> None:
        if self._in_use(loaded):
            return  # the weights on the model are edited right now; keep what we know
        for layer in deltas:
            if layer not in self.base_hashes:
                self.base_hashes[layer] = tensor_digest(loaded.layout.output_projection_weight(loaded.model, layer))

    @contextmanager
    def applied(self, loaded: LoadedModel) -> Iterator[LoadedModel]:
        """Within the block, `loaded` carries this ledger's edits (lock held); the original weights come back on exit."""
        with loaded.lock:
            if not self.batches:
                yield loaded
                return
            self.check_model(loaded)
            layers = self.layers
            for layer in layers:
                if layer not in self.base_hashes and not self._in_use(loaded):
                    self.base_hashes[layer] = tensor_digest(loaded.layout.output_projection_weight(loaded.model, layer))
            saved = hold_weights(loaded, layers)
            depth = getattr(loaded, "_locus_applied_depth", 0)
            loaded._locus_applied_depth = depth + 1
            try:
                if depth:  # another ledger's edits are on the weights: add ours on top of them
                    for batch in self.batches:
                        for layer, delta in batch.deltas.items():
                            add_delta(loaded.layout.output_projection_weight(loaded.model, layer), delta)
                else:
                    with torch.no_grad():
                        for layer, weight in self._edited_weights(saved).items():
                            loaded.layout.output_projection_weight(loaded.model, layer).copy_(weight)
                yield loaded
            finally:
                release_weights(loaded, saved)
                loaded._locus_applied_depth = depth

    def _edited_weights(self, originals: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """W_l + the batches' deltas, added in order (the cache, extended when batches were only appended)."""
        ids = tuple(batch.batch_id for batch in self.batches)
        start, edited = 0, {}
        if self._edited is not None and ids[: len(self._edited[0])] == self._edited[0]:
            start, edited = len(self._edited[0]), self._edited[1]
            if start == len(ids):
                return edited
        edited = {layer: tensor.clone() for layer, tensor in edited.items()}  # the old cache may be shared
        for batch in self.batches[start:]:
            for layer, delta in batch.deltas.items():
                if layer not in edited:
                    edited[layer] = originals[layer].clone()
                add_delta(edited[layer], delta)
        self._edited = (ids, edited)
        return edited

    def weights_hash(self, loaded: LoadedModel) -> str:
        """sha256 of the touched matrices as they are on the model now (compare before/after an undo)."""
        return weights_hash(loaded, self.layers)

    def previous_keys(self, layers) -> dict[int, torch.Tensor]:
        """Keys (n, m) of every earlier batch per layer (AlphaEdit's sequential-editing term)."""
        found: dict[int, list[torch.Tensor]] = {}
        for batch in self.batches:
            for layer, keys in batch.keys.items():
                if layer in layers:
                    found.setdefault(layer, []).append(keys)
        return {layer: torch.cat(parts) for layer, parts in found.items()}

    def key_grams(self, layers) -> dict[int, torch.Tensor]:
        """K_p K_p^T (m, m) float64 of every earlier edit's keys per layer: AlphaEdit's sequential term."""
        return {layer: keys.double().T @ keys.double() for layer, keys in self.previous_keys(layers).items()}

    # --- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": LEDGER_FORMAT,
            "model": self.model,
            "base_hashes": {str(layer): digest for layer, digest in self.base_hashes.items()},
            "batches": [batch.to_dict() for batch in self.batches],
        }

    def save(self, path: str | Path) -> Path:
        """Write the ledger as one safetensors file (tensors + JSON metadata), atomically."""
        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(self.batches):
            for layer in batch.deltas:
                for part, tensor in batch.deltas.stored(layer).tensors().items():
                    tensors[f"batch{index}.layer{layer}.{part}"] = tensor.contiguous()
            for layer, keys in batch.keys.items():
                tensors[f"batch{index}.layer{layer}.keys"] = keys.contiguous()
        if not tensors:
            tensors["empty"] = torch.zeros(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata={METADATA_KEY: json.dumps(self.to_dict())})
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path

    @classmethod
    def load(cls, path: str | Path, loaded: LoadedModel | None = None) -> EditLedger:
        """Read a ledger file; with `loaded`, refuse one made for another model."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = (handle.metadata() or {}).get(METADATA_KEY)
                if metadata is None:
                    raise InputError(f"{path.name} is not a Locus edit ledger (no '{METADATA_KEY}' metadata).")
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except InputError:
            raise
        except Exception as error:  # safetensors raises its own error type for a damaged file
            raise InputError(f"Cannot read the ledger {path.name}: it is not a readable safetensors file ({error}).") from None
        data = json.loads(metadata)
        if data.get("format") not in READABLE_FORMATS:
            raise InputError(f"{path.name} has ledger format {data.get('format')}, this Locus reads "
                             f"{', '.join(map(str, READABLE_FORMATS))}.")
        ledger = cls(data.get("model"), {int(layer): digest for layer, digest in data.get("base_hashes", {}).items()})
        for index, batch_data in enumerate(data["batches"]):
            deltas = {}
            for layer in batch_data["layers"]:
                parts = {part: tensors[f"batch{index}.layer{layer}.{part}"] for part in ("delta", "left", "right")
                         if f"batch{index}.layer{layer}.{part}" in tensors}
                if parts:
                    deltas[int(layer)] = LayerDelta.from_tensors(parts)
            keys = {int(layer): tensors[f"batch{index}.layer{layer}.keys"] for layer in batch_data["layers"]
                    if f"batch{index}.layer{layer}.keys" in tensors}
            ledger.batches.append(EditBatch.from_dict(batch_data, deltas, keys))
        if loaded is not None:
            ledger.check_model(loaded)
        return ledger
