"""Which layers to edit: "2-6" / "3,4,5" / "auto" (the tracer's recommendation), as text and back, and outliers.

The editor owns these rules; the app and the CLIs call them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InputError
from core.loading import LoadedModel
from core.progress import Progress
from editor.methods.settings import EditSettings
from editor.statistics.covariance import cached_diagnostics
from tracer.average import average_traces
from tracer.problem import TraceSettings
from tracer.recommend import flag_outliers, recommend_layers

AUTO_FACTS = 20  # facts averaged for `--layers auto` (the averages are cached, so later runs are instant)
AUTO_WIDTH = 5
MAX_LAYER = 10_000  # no model has more blocks; bounds a range before the model (and its depth) is known
MAX_LAYERS_TEXT = 200  # characters of layer text read at all
_PART = re.compile(r"(\d+)(?:(?:-|\.\.)(\d+))?")  # numbers stay small: the text is bounded


def layer_spans(text: str, num_layers: int | None = None) -> list[tuple[int, int]]:
    """'2-6, 8' -> [(2, 6), (8, 8)], every bound checked before any range is built."""
    text = (text or "").strip()
    if len(text) > MAX_LAYERS_TEXT:
        raise InputError(f"The layer text is {len(text)} characters long; write a range like 2-6 (at most {MAX_LAYERS_TEXT}).")
    limit = MAX_LAYER if num_layers is None else num_layers
    spans = []
    for part in re.split(r"[,\s]+", re.sub(r"\s*(-|\.\.)\s*", r"\1", text)):
        if not part:
            continue
        match = _PART.fullmatch(part)
        if not match:
            raise InputError(f"Layers {text!r} are not understood: write e.g. 2-6, 3,4,5 or auto.")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        low, high = min(low, high), max(low, high)
        if high >= limit:
            where = f"the model has layers 0..{num_layers - 1}" if num_layers is not None else f"layers stop below {MAX_LAYER:,}"
            raise InputError(f"Layer {high} does not exist: {where}.")
        spans.append((low, high))
    if not spans:
        raise InputError("No layers given: choose R on the Choose R tab, or write e.g. 2-6 or auto.")
    return spans


def parse_layers(text: str, num_layers: int | None = None) -> tuple[int, ...]:
    """'2-6', '3,4,5' or '2-4,7' -> sorted distinct layers (checked against `num_layers` when given)."""
    layers: set[int] = set()
    for low, high in layer_spans(text, num_layers):
        layers.update(range(low, high + 1))
    return tuple(sorted(layers))


def layers_text(layers) -> str:
    """[2, 3, 4, 5, 6] -> "2-6"; other lists comma-separated ("" for none)."""
    layers = sorted(layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


@dataclass
class AutoLayers:
    """The recommended R and why."""

    layers: tuple[int, ...]
    explanation: str
    warnings: list[str]


def auto_layers(
    loaded: LoadedModel, width: int = AUTO_WIDTH, facts: int = AUTO_FACTS, progress: Progress | None = None
) -> AutoLayers:
    """R from the tracer: MLP traces averaged over `facts` known facts, best window of `width` layers."""
    average = average_traces(loaded, facts, TraceSettings(kinds=("mlp",)), progress=progress)
    recommendation = recommend_layers(average, width, outlier_flags(loaded))
    return AutoLayers(tuple(recommendation.layers), recommendation.explanation, list(recommendation.warnings))


def outlier_flags(loaded: LoadedModel, tokens: int | None = None, corpus: str | None = None) -> dict[int, str]:
    """{layer: message} for layers whose cached key statistics have an outlier direction (nothing is computed)."""
    defaults = EditSettings()
    try:
        found = cached_diagnostics(loaded, list(range(loaded.layout.num_layers)), tokens or defaults.cov_tokens, corpus or defaults.corpus)
    except InputError:  # the corpus is not installed: nothing can be cached for it
        return {}
    if len(found) < 3:  # a median needs a few layers
        return {}
    layers = sorted(found)
    flags = flag_outliers([found[layer].largest_eigenvalue for layer in layers])
    return {layers[index]: message for index, message in flags.items()}
