"""A long job's pause on the shared model: what its safe point does so that other visitors' short jobs can run.

At a safe point (ui/runner.py) the model holds nothing of the long job but weight changes made through
`editor.edits.weights.hold_weights` (its session's ledger, an edit's layer updates). The pause takes
those off (the original weights back, bit for bit, no ledger counted as applied), keeps the random
number generators' states and gives the guests the thread's usual autograd modes; afterwards it puts
the same bits, states and modes back, so the long job goes on as if nothing had run in between.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy
import torch

from core.hooks import hook_count
from core.loading import LoadedModel
from editor.edits.ledger import edits_suspended


@dataclass(frozen=True)
class RandomState:
    """The states of Python's, numpy's and torch's global random number generators (CUDA's when in use)."""

    python: object
    numpy: object
    torch: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def save(cls) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(random.getstate(), numpy.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        numpy.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass(frozen=True)
class ModelPause:
    """Pauses of one job on `loaded`; `hooks` is the count of hooks the model had when the job started."""

    loaded: LoadedModel
    hooks: int

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelPause:
        return cls(loaded, hook_count(loaded.model))

    def __call__(self) -> contextlib.AbstractContextManager[None] | None:
        """The pause's context, or None when the model is not clean here (a hook of the job is still registered)."""
        if hook_count(self.loaded.model) != self.hooks:
            return None
        return self._paused()

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        state = RandomState.save()
        try:
            with edits_suspended(self.loaded), torch.inference_mode(False), torch.enable_grad():
                yield
        finally:
            state.restore()
