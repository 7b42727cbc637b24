"""MEMIT / ROME hyperparameters (SPEC section 3) with per-family defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from core.errors import InputError

if TYPE_CHECKING:  # type hints only: this module stays torch-free, so the editor's --help is instant
    from core.layout import ModelLayout

METHODS = ("memit", "rome", "alphaedit", "encore")
SEQUENTIAL_METHODS = ("alphaedit", "encore")  # their solve keeps earlier edits' keys (K_p K_p^T from the ledger)
PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")


@dataclass(frozen=True)
class MemitHyperParams:
    """Settings of one MEMIT (or ROME/AlphaEdit) edit; defaults are SPEC section 3's."""

    layers: tuple[int, ...] = (2, 3, 4, 5, 6)  # R: the MLPs that are edited (l_R = the last one)
    mom2_weight: float = 15000.0  # lambda in Delta = D K^T (lambda C + K K^T)^-1
    cov_tokens: int = 50_000  # corpus tokens behind C = E[k k^T] (measured: see COVARIANCE_BUDGET below)
    corpus: str = "wikipedia"  # "wikipedia" or a path to a .txt / .jsonl file
    # target vectors z (step 2)
    lr: float = 0.5
    steps: int = 25
    loss_stop: float = 0.05
    early_stop_steps: int = 0  # ENCORE's most-probable early stopping: stop once the new object has been the
    # top token at every target position of every prompt for this many steps (0: off, only loss_stop)
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"
    weight_decay: float = 0.5
    clamp_norm: float = 0.75
    # context prefixes (step 1): empty + one text of `prefix_tokens` tokens per start word, followed by ". "
    prefix_starts: tuple[str, ...] = PREFIX_STARTS
    prefix_tokens: int = 10
    prefix_sampling: str = "sample"  # "sample" (top-k 5, seeded: MEMIT's choice) or "greedy"
    seed: int = 0
    # engineering
    target_batch_requests: int = 256  # requests optimized together per chunk (bounds the prefix key/value memory)
    target_batch_tokens: int = 2048  # padded tokens per forward/backward pass in the target optimization
    key_batch_rows: int = 256  # rows per forward pass when collecting keys
    max_prompt_tokens: int = 96  # prompt + new object, per request
    method: str = "memit"  # "memit" | "rome" | "alphaedit" | "encore"
    nullspace_threshold: float = 1e-2  # AlphaEdit: eigenvalues of C below this span the preserved null space
    alphaedit_l2: float = 10.0  # AlphaEdit: ridge term added to the projected system
    norm_lambda: float = 20.0  # ENCORE: weight of ||Delta||_F^2 (the norm constraint) in the MEMIT solve
    extra: dict = field(default_factory=dict)

    @property
    def target_layer(self) -> int:
        """l_R, the layer whose output the target vectors z describe."""
        return max(self.layers)

    def replace(self, **changes) -> MemitHyperParams:
        if "layers" in changes and changes["layers"] is not None:
            changes["layers"] = tuple(sorted(int(layer) for layer in changes["layers"]))
        return dataclasses.replace(self, **changes)

    def check(self, layout: ModelLayout | None = None) -> MemitHyperParams:
        """This object, or an InputError naming the first unusable setting."""
        if not self.layers:
            raise InputError("No layers to edit: give at least one layer (e.g. 2-6).")
        if len(set(self.layers)) != len(self.layers) or list(self.layers) != sorted(self.layers):
            raise InputError(f"Layers must be distinct and increasing, got {list(self.layers)}.")
        if layout is not None and not all(0 <= layer < layout.num_layers for layer in self.layers):
            raise InputError(f"Layers {list(self.layers)} are outside the model's 0..{layout.num_layers - 1}.")
        if self.mom2_weight < 0:
            raise InputError(f"lambda must be >= 0, got {self.mom2_weight}.")
        if self.cov_tokens < 1:
            raise InputError(f"The covariance token budget must be positive, got {self.cov_tokens}.")
        if self.steps < 1 or self.lr <= 0:
            raise InputError("The target optimization needs at least one step and a positive learning rate.")
        if "{}" not in self.kl_prompt:
            raise InputError(f"The essence (KL) prompt {self.kl_prompt!r} needs a '{{}}' for the subject.")
        if self.prefix_sampling not in ("greedy", "sample"):
            raise InputError(f"prefix_sampling must be 'greedy' or 'sample', got {self.prefix_sampling!r}.")
        if self.early_stop_steps < 0 or not 0 <= self.norm_lambda < float("inf") or not 0 <= self.alphaedit_l2 < float("inf"):
            raise InputError("The early-stop steps, the norm constraint and AlphaEdit's l2 must be >= 0.")
        if not 0 < self.nullspace_threshold < float("inf"):
            raise InputError(f"The null-space threshold must be a positive number, got {self.nullspace_threshold}.")
        if self.method not in METHODS:
            raise InputError(f"Unknown method {self.method!r}: use {', '.join(METHODS)}.")
        return self

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        data["prefix_starts"] = list(self.prefix_starts)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> MemitHyperParams:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("layers", "prefix_starts"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# COVARIANCE_BUDGET: `python -m editor sweep --data assets/devset_smollm2-135m-instruct.json
# --tokens 5000,10000,25000,50000,100000,200000` (all 124 dev-set records in one batch, R = 2-6,
# lambda 1,500; unedited NS 91.1, neighbourhood accuracy 35.8) gave ES 96.8-98.4 and PS 86.4-89.4 at
# every budget; NS 87.3 / 86.5 / 87.3 / 88.3 / 88.5 / 89.4 and neighbourhood accuracy 28.4 / 36.3 /
# 35.3 / 36.7 / 35.6 / 35.8 from 5,000 to 200,000 tokens. 50,000 is the smallest budget with NS and
# neighbourhood accuracy at the 200,000-token level (within one record), at half the corpus pass of
# 100,000.
#
# Per-family settings: R is a window of 5 layers starting at a relative depth taken from a measured
# or published R (llama family: the tracer's recommendation R = 2-6 of 30 layers on the embedded
# SmolLM2-135M; GPT-J: 3-8 of 28; GPT-2 XL: 13-17 of 48). lambda: the published values for GPT-J
# and GPT-2 XL; for the llama family the value a sweep measured on SmolLM2-135M (84 held-out dev-set
# records in one batch, unedited NS 90.7: ES 97.6 / PS 87.7 / NS 86.0 at 1,500; ES 97.6 / PS 89.5 /
# NS 87.1 at 500, within one record of it; ES 51.2 / PS 41.7 / NS 88.7 at the published 15,000,
# whose updates write only a fifth of the change into the weights). Larger
# Llama models may want a larger lambda: sweep with `python -m editor sweep --lambda ...`.
FAMILY_DEFAULTS: dict[str, dict] = {
    "llama": dict(mom2_weight=1500.0),
    "gptj": dict(mom2_weight=15000.0),
    "gpt2": dict(mom2_weight=20000.0),
}
# ENCORE (Gupta et al. 2025) is MEMIT with earlier edits' keys kept, a norm constraint and
# most-probable early stopping; its published settings stop 2 steps after the new object is on top.
METHOD_DEFAULTS: dict[str, dict] = {"encore": dict(early_stop_steps=2)}
RELATIVE_START = {"llama": 2 / 30, "gptj": 3 / 28, "gpt2": 13 / 48}
DEFAULT_RELATIVE_START = 3 / 28
DEFAULT_WIDTH = 5


def default_layers(layout: ModelLayout, width: int = DEFAULT_WIDTH) -> tuple[int, ...]:
    """A window of `width` layers at the family's relative depth (see RELATIVE_START)."""
    count = layout.num_layers
    width = max(1, min(width, count))
    start = int(round(RELATIVE_START.get(layout.family, DEFAULT_RELATIVE_START) * count))
    start = max(0, min(start, count - width))
    return tuple(range(start, start + width))


def default_hparams(layout: ModelLayout, **overrides) -> MemitHyperParams:
    """The defaults for a model's family, with `overrides` applied (None values are ignored)."""
    values = dict(FAMILY_DEFAULTS.get(layout.family, {}))
    values.update(METHOD_DEFAULTS.get(overrides.get("method") or "", {}))
    if "layers" not in values:
        values["layers"] = default_layers(layout)
    values.update({key: value for key, value in overrides.items() if value is not None})
    params = MemitHyperParams().replace(**values)
    if max(params.layers) >= layout.num_layers:
        params = params.replace(layers=default_layers(layout, width=len(params.layers)))
    return params.check(layout)
