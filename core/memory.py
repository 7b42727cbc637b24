"""Memory planning: how many units (tokens, rows, requests, cells) one batched call may take, and halving on OOM.

A plan comes from the device's free memory and the model's shape: on a GPU, `torch.cuda.mem_get_info` plus
what torch's caching allocator holds unused; on a CPU, the available RAM (`MemAvailable` of /proc/meminfo).
On a GPU the free memory decides (up to a ceiling the caller knows, e.g. all the work there is). On a CPU a
plan never exceeds the caller's default, which was chosen for speed (larger batches run no faster there),
and shrinks only where RAM is short. Every plan is at least a floor.

Estimates are rough upper bounds; the safety net is `ChunkSize`: an out-of-memory error halves the size
and the caller retries the failed part, down to the floor, where it becomes a `LocusError` whose message
says what ran out and what to try. Callers retry only work that changed nothing yet, so weights, hooks
and running sums are as before every retry.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from core.errors import LocusError

log = logging.getLogger(__name__)

GPU_SHARE = 0.6  # share of a GPU's free memory one batched call may plan for
CPU_SHARE = 0.5  # share of the available RAM (MemAvailable already leaves out what others hold)


# --- what is free ------------------------------------------------------------------------------

def available_ram() -> int:
    """Bytes of RAM the OS can give without swapping: MemAvailable, else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 8 * 2**30  # unknown: plan as for a small machine


def free_memory(device: torch.device | str) -> int:
    """Bytes free for new tensors on `device` (a GPU: the driver's free memory plus torch's unused cache)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    return available_ram()


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch.OutOfMemoryError, MemoryError and the CPU allocator's "can't allocate memory"."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory(device: torch.device | str) -> None:
    """Give torch's cached GPU blocks back after an out-of-memory error (nothing to do on a CPU)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# --- the model's shape -------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What memory estimates need: layers, widths d and m, heads, key/value width, vocabulary, bytes per element."""

    layers: int
    hidden: int
    mlp: int
    heads: int
    kv_width: int  # width of one token's keys (= values) per layer: kv heads x head dim
    vocab: int
    element: int  # bytes per element of the model's dtype

    @classmethod
    def of(cls, loaded) -> ModelShape:
        """The shape of a LoadedModel (its layout, config and dtype)."""
        layout, config = loaded.layout, loaded.model.config
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 16
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or layout.hidden_size // heads
        return cls(
            layers=layout.num_layers,
            hidden=layout.hidden_size,
            mlp=layout.mlp_size,
            heads=int(heads),
            kv_width=int(kv_heads * head_dim),
            vocab=layout.vocab_size,
            element=torch.finfo(loaded.dtype).bits // 8,
        )

    def forward_token_bytes(self, kv_length: int) -> int:
        """Peak activations of one token in one block without gradients (residual, MLP, attention scores)."""
        return (8 * self.hidden + 4 * self.mlp + 4 * self.heads * kv_length) * self.element

    def training_token_bytes(self, layers: int, kv_length: int) -> int:
        """Activations one token keeps for the backward pass through `layers` blocks."""
        per_layer = (10 * self.hidden + 5 * self.mlp + 2 * self.heads * kv_length) * self.element
        return layers * per_layer + self.forward_token_bytes(kv_length)

    def cache_token_bytes(self) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.layers * self.kv_width * self.element


# --- plans -------------------------------------------------------------------------------------

def plan(
    device: torch.device | str,
    unit_bytes: float,
    *,
    default: int,
    floor: int = 1,
    ceiling: int | None = None,
    reserved: float = 0.0,
) -> int:
    """Units per batched call: what fits the device's share of free memory (less `reserved` bytes).

    On a CPU at most `default` (and at least `floor` where the default allows); on a GPU at least `floor`
    and at most `ceiling` (when given).
    """
    device = torch.device(device)
    share = GPU_SHARE if device.type == "cuda" else CPU_SHARE
    budget = max(share * free_memory(device) - reserved, 0.0)
    fits = int(budget // max(unit_bytes, 1.0))
    if device.type == "cuda":
        return max(floor, fits if ceiling is None else min(fits, ceiling))
    return min(default, max(floor, fits))


# --- halving on out-of-memory errors -----------------------------------------------------------

class ChunkSize:
    """A batch size that halves on each out-of-memory error, down to `floor`, where it raises a LocusError.

    Use: `try: work(chunk.size) except Exception as error: chunk.halve(error)` (re-raises anything that
    is not an out-of-memory error), then retry the failed part with the new `size`.
    """

    def __init__(self, size: int, floor: int, what: str, unit: str, device: torch.device | str, advice: str = ""):
        self.floor = max(1, int(floor))
        self.size = max(self.floor, int(size))
        self.what, self.unit, self.advice = what, unit, advice
        self.device = torch.device(device)
        self.halvings = 0

    def halve(self, error: BaseException, smallest: str | None = None) -> None:
        """Halve after an out-of-memory `error`; any other error, or one at the floor, is raised.

        `smallest` (e.g. "one text of 900 tokens") says the failed part cannot be split any further.
        """
        if not is_out_of_memory(error):
            raise error
        if self.size <= self.floor or smallest is not None:
            tried = smallest or f"{self.size} {self.unit} per batch"
            raise LocusError(out_of_memory_message(self.what, self.device, tried, self.advice)) from error
        self.size = max(self.floor, self.size // 2)
        self.halvings += 1
        log.warning("out of memory while %s on %s: retrying with %d %s per batch", self.what, self.device, self.size, self.unit)
        release_memory(self.device)


def out_of_memory_message(what: str, device: torch.device | str, smallest: str = "", advice: str = "") -> str:
    """The plain message of an out-of-memory failure (nothing was changed)."""
    tried = f" even with {smallest}" if smallest else ""
    text = f"Out of memory on {device} while {what}{tried}; the model's weights and hooks are as they were."
    return f"{text} {advice}".strip() if advice else text + " Free memory on the device (close other programs or models)."


@contextmanager
def out_of_memory_as_error(what: str, device: torch.device | str, advice: str = "") -> Iterator[None]:
    """Within the block, an out-of-memory error becomes a LocusError with a plain message."""
    try:
        yield
    except LocusError:
        raise
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        release_memory(device)
        raise LocusError(out_of_memory_message(what, device, advice=advice)) from error
