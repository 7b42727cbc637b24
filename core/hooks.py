"""Reading and patching module outputs with forward hooks that are always removed.

Modules return either a tensor (a Llama decoder layer in transformers 5) or a tuple whose first
item is the hidden state (an attention module). `output_tensor` / `replace_output_tensor` handle
both, so no caller ever writes `output[0]` (which silently takes the first batch row of a tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

OutputEdit = Callable[[torch.Tensor], torch.Tensor]


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (the tensor itself, or the first item of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output).__name__}")


def replace_output_tensor(output: Any, tensor: torch.Tensor) -> Any:
    """`output` with its hidden-state tensor replaced by `tensor`, keeping the same structure."""
    if isinstance(output, torch.Tensor):
        return tensor
    return type(output)((tensor, *output[1:])) if isinstance(output, tuple) else [tensor, *output[1:]]


def sequence_view(tensor: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """`tensor` as (batch, length, width): OPT's MLP works on tokens flattened to (batch*length, width)."""
    if tensor.dim() == 2 and tensor.shape[0] == batch * length:
        return tensor.view(batch, length, tensor.shape[-1])
    return tensor


def input_tensor(args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor:
    """The first tensor input of a module call: positional, else the `hidden_states`/`input` kwarg."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "input", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise TypeError("cannot find the input tensor of a module call")


@contextmanager
def forward_hooks(model: nn.Module, hooks: Mapping[str, Callable[..., Any]], *, with_kwargs: bool = False) -> Iterator[None]:
    """Register `hooks` {module name: hook(module, args, [kwargs,] output)}; removed on any exit."""
    handles = []
    try:
        for name, hook in hooks.items():
            module = model.get_submodule(name)
            handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def forward_pre_hooks(model: nn.Module, hooks: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """Register pre-hooks {module name: hook(module, args)} that may change a module's input in place; removed on any exit."""
    handles = []
    try:
        for name, hook in hooks.items():
            handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_outputs(model: nn.Module, names: list[str], *, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the hidden-state output of each named module during the forward passes in the block."""
    recorded: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args, output):
            tensor = output_tensor(output)
            recorded[name] = tensor.detach() if detach else tensor

        return hook

    with forward_hooks(model, {name: make_hook(name) for name in names}):
        yield recorded


@contextmanager
def capture_inputs(model: nn.Module, names: list[str], *, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the first input tensor of each named module (e.g. the keys of an MLP output projection)."""
    recorded: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args, kwargs, output):
            tensor = input_tensor(args, kwargs)
            recorded[name] = tensor.detach() if detach else tensor

        return hook

    with forward_hooks(model, {name: make_hook(name) for name in names}, with_kwargs=True):
        yield recorded


@contextmanager
def edit_outputs(model: nn.Module, edits: Mapping[str, OutputEdit]) -> Iterator[None]:
    """Replace each named module's hidden-state output by `edit(output)` during the block."""

    def make_hook(edit: OutputEdit):
        def hook(module, args, output):
            return replace_output_tensor(output, edit(output_tensor(output)))

        return hook

    with forward_hooks(model, {name: make_hook(edit) for name, edit in edits.items()}):
        yield


def hook_count(model: nn.Module) -> int:
    """Number of forward (pre-)hooks still registered anywhere in `model` (0 when clean)."""
    return sum(
        len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()
    )
