"""Running decoder blocks one by one with the model's own arguments (masks, rotary embeddings, positions).

`stubbed_blocks` replaces every block's forward by a stub that records its call; one cheap forward of
the model (embeddings, masks, no block work) then yields a `BlockCall` per block, which runs that
block on any hidden state with a `PrefixKeyValues` cache that prepends given keys/values. The fast
trace engine and the editor's target optimization use it to start a forward pass in the middle.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache


class PrefixKeyValues:
    """Given to a block as its cache: `update` puts the given prefix keys/values in front of the block's own."""

    def __init__(self) -> None:
        self.layer = -1
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def set(self, layer: int, keys: torch.Tensor | None, values: torch.Tensor | None) -> None:
        """The prefix for block `layer` (None: no prefix, the block sees its own positions only)."""
        self.layer, self.keys, self.values = layer, keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """(rows, heads, q, hd) new states -> (rows, heads, t + q, hd) with the prefix in front."""
        if layer_idx != self.layer:
            raise RuntimeError(f"prefix cache asked for layer {layer_idx} while block {self.layer} runs")
        if self.keys is None:
            return key_states, value_states
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@dataclass
class BlockCall:
    """The arguments one decoder block received; the hidden state and the cache get replaced."""

    args: tuple
    kwargs: dict
    hidden_in_args: bool
    cache_position: int | str | None = None  # index in args, kwarg name, or None

    def call(self, block: torch.nn.Module, hidden: torch.Tensor, cache: PrefixKeyValues):
        args, kwargs = list(self.args), dict(self.kwargs)
        if self.hidden_in_args:
            args[0] = hidden
        else:
            kwargs["hidden_states"] = hidden
        if isinstance(self.cache_position, int):
            args[self.cache_position] = cache
        elif isinstance(self.cache_position, str):
            kwargs[self.cache_position] = cache
        return block(*args, **kwargs)


def _block_call(args: tuple, kwargs: dict) -> BlockCall:
    hidden_in_args = bool(args) and isinstance(args[0], torch.Tensor)
    cache_position: int | str | None = None
    for index, value in enumerate(args):
        if isinstance(value, Cache):
            cache_position = index
    for name, value in kwargs.items():
        if isinstance(value, Cache):
            cache_position = name
    return BlockCall(tuple(args), dict(kwargs), hidden_in_args, cache_position)


@contextmanager
def stubbed_blocks(blocks: torch.nn.ModuleList, returns_tuple: bool) -> Iterator[list[BlockCall | None]]:
    """Replace every block's forward by a stub that records its call and passes the hidden state on."""
    calls: list[BlockCall | None] = [None] * len(blocks)
    saved = []

    def make_stub(index: int):
        def stub(*args, **kwargs):
            calls[index] = _block_call(args, kwargs)
            hidden = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs["hidden_states"]
            return (hidden,) if returns_tuple else hidden

        return stub

    try:
        for index, block in enumerate(blocks):
            saved.append((block, "forward" in block.__dict__, block.__dict__.get("forward")))
            block.forward = make_stub(index)
        yield calls
    finally:
        for block, had_own, original in saved:
            if had_own:
                block.forward = original
            else:
                block.__dict__.pop("forward", None)


def cache_argument(model: torch.nn.Module) -> str:
    """Name of the forward's cache argument: `cache` (transformers >= 5.2x) or `past_key_values`."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def new_dynamic_cache(model: torch.nn.Module) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)
    except (TypeError, ValueError):
        return DynamicCache()
