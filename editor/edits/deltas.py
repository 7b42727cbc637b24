"""Weight changes kept compactly: a (d, m) delta as the product of two thin factors (rank <= the batch's requests).

A MEMIT, AlphaEdit or ROME update of n requests is D^T A with D^T (d, n) and A (n, m), so it needs
n (d + m) numbers instead of d m; the full matrix is only formed when it is added to the weights.
`LayerDelta.dense()` is the one way a delta becomes a matrix (float64 product rounded to float32),
so the delta applied while a batch is computed and the one a ledger applies later are the same bits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerDelta:
    """A (d, m) weight change: `left` (d, r) @ `right` (r, m), or `left` itself (d, m) when `right` is None."""

    left: torch.Tensor
    right: torch.Tensor | None = None

    @classmethod
    def from_factors(cls, left: torch.Tensor, right: torch.Tensor) -> LayerDelta:
        """From left (d, r) and right (r, m), stored as float32 factors, or dense when that is smaller."""
        left, right = left.detach().float().cpu().contiguous(), right.detach().float().cpu().contiguous()
        rows, rank = left.shape
        columns = right.shape[1]
        if rank * (rows + columns) >= rows * columns:
            return cls(_product(left, right))
        return cls(left, right)

    @classmethod
    def of(cls, delta: torch.Tensor | LayerDelta) -> LayerDelta:
        """`delta` as a LayerDelta (a dense tensor is kept as it is, in float32)."""
        if isinstance(delta, LayerDelta):
            return delta
        return cls(delta.detach().float().cpu().contiguous())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1]) if self.right is not None else tuple(self.left.shape)

    @property
    def rank(self) -> int | None:
        """The number of factor columns (None for a dense delta)."""
        return None if self.right is None else int(self.left.shape[1])

    @property
    def nbytes(self) -> int:
        return self.left.numel() * self.left.element_size() + (0 if self.right is None else self.right.numel() * self.right.element_size())

    def dense(self) -> torch.Tensor:
        """The (d, m) float32 matrix (the same bits every time on a machine)."""
        return self.left if self.right is None else _product(self.left, self.right)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors for a file: {"left", "right"} or {"delta"}."""
        return {"delta": self.left} if self.right is None else {"left": self.left, "right": self.right}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LayerDelta:
        if "delta" in tensors:
            return cls(tensors["delta"])
        return cls(tensors["left"], tensors["right"])


def _product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return (left.double() @ right.double()).float().contiguous()


class DeltaMap(Mapping):
    """{layer: (d, m) float32 tensor}, read like a dict of dense deltas while each is stored as a LayerDelta."""

    def __init__(self, deltas: Mapping | None = None):
        self._stored: dict[int, LayerDelta] = {int(layer): LayerDelta.of(delta) for layer, delta in (deltas or {}).items()}

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self._stored[layer].dense()

    def __iter__(self) -> Iterator[int]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def stored(self, layer: int) -> LayerDelta:
        """The compact form of one layer's delta."""
        return self._stored[layer]

    def shape(self, layer: int) -> tuple[int, int]:
        return self._stored[layer].shape

    @property
    def nbytes(self) -> int:
        return sum(delta.nbytes for delta in self._stored.values())
