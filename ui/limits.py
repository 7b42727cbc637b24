"""Bounds on everything a visitor (or an API caller) sends, checked before any work or allocation.

Every handler turns its raw component values into checked values here first: a number outside its
range, a text too long, too many requests or a file too large is refused at once with a plain
message (core.errors.InputError), before a job is queued. The server's own limits (`--max-requests`,
`--max-prompt-tokens`, `--max-upload-mb`, `--max-session-edits-mb`) live in `Limits`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from core.errors import InputError

MAX_TEXT_CHARS = 2_000  # any one text field (a prompt, a subject, a cell of the requests table)
MAX_LAYER_TEXT = 200
SAMPLES = (1, 50)
TOP_K = (1, 20)
GENERATED_TOKENS = (1, 60)
STEPS = (1, 100)
WIDTH = (1, 12)
SEED = (0, 2**32 - 1)
LEARNING_RATE = (1e-6, 10.0)
KL_WEIGHT = (0.0, 100.0)
CLAMP = (1e-3, 10.0)
LAMBDA = (0.0, 1e9)
COVARIANCE_TOKENS = (1, 10**9)
LAYER = (0, 9_999)  # a layer index before the model (and its depth) is known (editor.layers.MAX_LAYER)
# A method's own settings (ui.editing.method_choices): bounds by the setting's name; any other number of a new
# method is bounded only loosely here, its settings' check() refusing what it cannot use before any job.
SETTING_BOUNDS = {
    "mom2_weight": LAMBDA,
    "nullspace_threshold": (0.0, 1e9),
    "l2": (0.0, 1e9),
    "norm_lambda": (0.0, 1e9),
    "early_stop_steps": (0, STEPS[1]),
}
SETTING_NUMBER = (-1e12, 1e12)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of this server."""

    max_requests: int = 500  # edit requests in one batch (and CounterFact records per import)
    max_prompt_tokens: int = 1_024  # tokens of a prompt to predict from or generate after
    max_upload_bytes: int = 64 * 2**20  # any uploaded file
    max_records_bytes: int = 8 * 2**20  # an uploaded CounterFact JSON file
    max_session_edit_bytes: int = 256 * 2**20  # one visitor's ledger (about 3,400 edits of the embedded model at 5 layers)

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_prompt_tokens", "max_upload_bytes", "max_records_bytes", "max_session_edit_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

    def check_prompt_tokens(self, tokenizer: Any, prompt: str) -> None:
        """Refuse a prompt longer than `max_prompt_tokens` (characters are checked first: no huge tokenization)."""
        text(prompt, "The prompt", limit=self.max_prompt_tokens * 16)
        if tokenizer is None:
            return
        count = len(tokenizer(prompt)["input_ids"])
        if count > self.max_prompt_tokens:
            raise InputError(f"The prompt is {count:,} tokens long; this server takes at most {self.max_prompt_tokens:,}.")

    def check_edit_room(self, held: int, adding: int) -> None:
        """Refuse a batch that would take one visitor's edits past `max_session_edit_bytes` (held + adding bytes)."""
        if held + adding > self.max_session_edit_bytes:
            raise InputError(
                f"Your edits hold {held / 2**20:,.1f} MiB on this server and this batch would add up to "
                f"{adding / 2**20:,.1f} MiB, past the limit of {self.max_session_edit_bytes / 2**20:,.0f} MiB per visitor. "
                "Undo or reset some batches (export them first to keep a copy), or edit fewer facts at once."
            )

    def check_upload(self, path: str | None, what: str, limit: int | None = None) -> str:
        """The uploaded file's path, refused when missing or larger than the limit (by its size on disk)."""
        if not path:
            raise InputError(f"Choose {what} to upload.")
        try:
            size = os.path.getsize(path)
        except OSError:
            raise InputError(f"The uploaded {what} could not be read; upload it again.") from None
        limit = min(limit or self.max_upload_bytes, self.max_upload_bytes)
        if size > limit:
            raise InputError(f"The {what} is {size / 2**20:.1f} MB; this server takes at most {limit / 2**20:.0f} MB.")
        return path


def text(value: Any, name: str, limit: int = MAX_TEXT_CHARS, required: bool = False) -> str:
    """A text field's value (None -> ""), refused when longer than `limit` characters or empty when required."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, got {type(value).__name__}.")
    if len(value) > limit:
        raise InputError(f"{name} is {len(value):,} characters long; at most {limit:,} are accepted.")
    if required and not value.strip():
        raise InputError(f"{name} is empty.")
    return value


def whole(value: Any, name: str, bounds: tuple[int, int]) -> int:
    """A whole number within `bounds` (inclusive), from a slider, a number box or an API caller."""
    low, high = bounds
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number from {low} to {high}, got {value!r}.") from None
    if not math.isfinite(number) or number != int(number):
        raise InputError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    if not low <= number <= high:
        raise InputError(f"{name} must be from {low:,} to {high:,}, got {int(number):,}.")
    return int(number)


def real(value: Any, name: str, bounds: tuple[float, float], *, optional: bool = False) -> float | None:
    """A finite number within `bounds` (inclusive); None or "" stays None when `optional`."""
    if optional and (value is None or value == ""):
        return None
    low, high = bounds
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise InputError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
    return number


def choice(value: Any, name: str, allowed) -> str:
    """One of `allowed`."""
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}.")
    return value
