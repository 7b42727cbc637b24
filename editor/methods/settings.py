"""What the editing methods share in their settings (SPEC section 3): R, C, the target optimisation, prefixes.

Each method has its own settings dataclass (MemitSettings, AlphaEditSettings, ...), a subclass of
EditSettings with only its own fields added; this module stays torch-free, so the CLIs' --help is instant.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from core.errors import InputError

if TYPE_CHECKING:  # type hints only: this module stays torch-free
    from core.layout import ModelLayout

PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")
NAMES_A_FILE = "names a file"  # field metadata: the setting is a path on the machine that runs Locus (CLI and API only)
BOUNDS = "bounds"  # field metadata: (low, high), the range check() allows (and the app's input)
LATER = "later"  # field metadata: added after results were recorded; to_dict() leaves it out at its default, so
# those results' cache keys and kept runs still match (from_dict reads a missing one as the default)


def bounded(default: Any, low: float, high: float) -> Any:
    """A dataclass field whose value must lie in [low, high] (checked by EditSettings.check, shown by the app)."""
    return dataclasses.field(default=default, metadata={BOUNDS: (low, high)})


@dataclass(frozen=True)
class EditSettings:
    """Settings every method of the MEMIT family shares; defaults are SPEC section 3's."""

    layers: tuple[int, ...] = (2, 3, 4, 5, 6)  # R: the MLPs that are edited (l_R = the last one)
    cov_tokens: int = 50_000  # corpus tokens behind C = E[k k^T] (measured: see COVARIANCE_BUDGET below)
    corpus: str = dataclasses.field(default="wikipedia", metadata={NAMES_A_FILE: True})  # "wikipedia" or a .txt / .jsonl file
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
    first_step: float = dataclasses.field(default=0.0, metadata={BOUNDS: (0.0, 1.0), LATER: True})  # 0: Adam from
    # delta = 0 (SPEC); > 0: the first step puts delta at this fraction of the clamp radius along the negative
    # gradient, and Adam starts from there (a lever for fewer steps)
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

    # {family: {field: value}}: a method's measured or published defaults per model family (e.g. lambda)
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    @property
    def target_layer(self) -> int:
        """l_R, the layer whose output the target vectors z describe."""
        return max(self.layers)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def own_field_names(cls) -> tuple[str, ...]:
        """The settings this class adds to EditSettings, and the shared ones whose default it changes (ENCORE's
        early_stop_steps): what `python -m editor methods` lists and the app's Edit tab asks for."""
        shared, defaults, base = EditSettings.field_names(), cls(), EditSettings()
        added = [name for name in cls.field_names() if name not in shared]
        changed = [name for name in shared if getattr(defaults, name) != getattr(base, name)]
        return tuple(added + changed)

    @classmethod
    def names_a_file(cls, name: str) -> bool:
        """True for a setting that is a path on this machine (a web visitor never sets it)."""
        return bool({f.name: f for f in dataclasses.fields(cls)}[name].metadata.get(NAMES_A_FILE))

    @classmethod
    def bounds_of(cls, name: str) -> tuple[float, float] | None:
        """The [low, high] a setting declares (None: its check() alone says what it allows)."""
        return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get(BOUNDS)

    def replace(self, **changes: Any) -> EditSettings:
        """A copy with `changes`; InputError naming a setting this method does not have."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise InputError(f"{type(self).__name__} has no setting {', '.join(map(repr, unknown))}; "
                             f"its settings are {', '.join(self.field_names())}.")
        if "layers" in changes and changes["layers"] is not None:
            changes["layers"] = tuple(sorted(int(layer) for layer in changes["layers"]))
        if "prefix_starts" in changes and changes["prefix_starts"] is not None:
            changes["prefix_starts"] = tuple(changes["prefix_starts"])
        return dataclasses.replace(self, **changes)

    def check(self, layout: ModelLayout | None = None) -> EditSettings:
        """This object, or an InputError naming the first unusable setting."""
        if not self.layers:
            raise InputError("No layers to edit: give at least one layer (e.g. 2-6).")
        if len(set(self.layers)) != len(self.layers) or list(self.layers) != sorted(self.layers):
            raise InputError(f"Layers must be distinct and increasing, got {list(self.layers)}.")
        if layout is not None and not all(0 <= layer < layout.num_layers for layer in self.layers):
            raise InputError(f"Layers {list(self.layers)} are outside the model's 0..{layout.num_layers - 1}.")
        if self.cov_tokens < 1:
            raise InputError(f"The covariance token budget must be positive, got {self.cov_tokens}.")
        if self.steps < 1 or not 0 < self.lr < math.inf:
            raise InputError("The target optimization needs at least one step and a positive learning rate.")
        if "{}" not in self.kl_prompt:
            raise InputError(f"The essence (KL) prompt {self.kl_prompt!r} needs a '{{}}' for the subject.")
        if self.prefix_sampling not in ("greedy", "sample"):
            raise InputError(f"prefix_sampling must be 'greedy' or 'sample', got {self.prefix_sampling!r}.")
        if self.early_stop_steps < 0:
            raise InputError(f"The early-stop steps must be >= 0, got {self.early_stop_steps}.")
        for field in dataclasses.fields(self):
            low, high = field.metadata.get(BOUNDS, (-math.inf, math.inf))
            value = getattr(self, field.name)
            if not (isinstance(value, (int, float)) and low <= value <= high):
                if BOUNDS in field.metadata:
                    raise InputError(f"{type(self).__name__}'s {field.name} must be between {low:g} and {high:g}, got {value!r}.")
        return self

    def to_dict(self, complete: bool = False) -> dict:
        """The settings as JSON values; a LATER field at its default is left out unless `complete`."""
        data = asdict(self)
        for field in dataclasses.fields(self):
            if field.metadata.get(LATER) and data[field.name] == field.default and not complete:
                del data[field.name]
        data["layers"] = list(self.layers)
        data["prefix_starts"] = list(self.prefix_starts)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EditSettings:
        """The settings in `data` that this class has (others, e.g. another method's, are ignored)."""
        known = set(cls.field_names())
        values = {key: value for key, value in data.items() if key in known}
        for key in ("layers", "prefix_starts"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def parse_value(cls, name: str, text: str) -> Any:
        """'--set NAME=VALUE' text as the type of setting `name` (InputError when it is not one)."""
        if name not in cls.field_names():
            raise InputError(f"{cls.__name__} has no setting {name!r}; its settings are {', '.join(cls.field_names())}.")
        kind = typing.get_type_hints(cls)[name]
        try:
            if kind is bool:
                return text.strip().lower() in ("1", "true", "yes")
            if kind in (int, float):
                value = kind(text)
                if not math.isfinite(value):
                    raise ValueError(text)
                return value
            if kind == tuple[int, ...]:
                return tuple(int(part) for part in text.split(",") if part.strip())
            if kind == tuple[str, ...]:
                return tuple(part.strip() for part in text.split(",") if part.strip())
        except ValueError:
            raise InputError(f"Setting {name!r} takes a {getattr(kind, '__name__', kind)}, got {text!r}.") from None
        return text


def finite_at_least(value: float, low: float, name: str, strict: bool = False) -> None:
    """InputError unless `value` is a finite number >= low (> low when strict)."""
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise InputError(f"{name} must be a finite number {'above' if strict else 'at least'} {low:g}, got {value}.")


# COVARIANCE_BUDGET: `python -m editor sweep --data assets/devset_smollm2-135m-instruct.json
# --tokens 5000,10000,25000,50000,100000,200000` (all 124 dev-set records in one batch, R = 2-6,
# lambda 1,500; unedited NS 91.1, neighbourhood accuracy 35.8) gave ES 96.8-98.4 and PS 86.4-89.4 at
# every budget; NS 87.3 / 86.5 / 87.3 / 88.3 / 88.5 / 89.4 and neighbourhood accuracy 28.4 / 36.3 /
# 35.3 / 36.7 / 35.6 / 35.8 from 5,000 to 200,000 tokens. 50,000 is the smallest budget with NS and
# neighbourhood accuracy at the 200,000-token level (within one record), at half the corpus pass of
# 100,000.
#
# R per family is a window of 5 layers starting at a relative depth taken from a measured or published
# R (llama family: the tracer's recommendation R = 2-6 of 30 layers on the embedded SmolLM2-135M;
# GPT-J: 3-8 of 28; GPT-2 XL: 13-17 of 48).
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


def settings_for(settings_class: type[EditSettings], layout: ModelLayout, **overrides: Any) -> EditSettings:
    """`settings_class`'s defaults for a model's family and R, with `overrides` applied (None values are ignored)."""
    values: dict[str, Any] = dict(settings_class.FAMILY_DEFAULTS.get(layout.family, {}))
    values["layers"] = default_layers(layout)
    values.update({key: value for key, value in overrides.items() if value is not None})
    settings = settings_class().replace(**values)
    if max(settings.layers) >= layout.num_layers:
        settings = settings.replace(layers=default_layers(layout, width=len(settings.layers)))
    return settings.check(layout)
