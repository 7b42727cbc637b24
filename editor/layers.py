"""Which layers to edit: "2-6" / "3,4,5" / "auto" (the tracer's recommendation from averaged traces)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from editor.progress import Progress
from tracer.errors import InputError
from tracer.loading import LoadedModel

AUTO_FACTS = 20  # facts averaged for `--layers auto` (the averages are cached, so later runs are instant)
AUTO_WIDTH = 5


def parse_layers(text: str, num_layers: int | None = None) -> tuple[int, ...]:
    """'2-6', '3,4,5' or '2-4,7' -> sorted distinct layers (checked against `num_layers` when given)."""
    layers: set[int] = set()
    for part in re.split(r"[,\s]+", (text or "").strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-|\.\.)(\d+)", part) or re.fullmatch(r"(\d+)", part)
        if not match:
            raise InputError(f"Layers {text!r} are not understood: write e.g. 2-6, 3,4,5 or auto.")
        numbers = [int(group) for group in match.groups() if group is not None]
        layers.update(range(min(numbers), max(numbers) + 1))
    if not layers:
        raise InputError("No layers given: write e.g. 2-6 or auto.")
    if num_layers is not None and max(layers) >= num_layers:
        raise InputError(f"Layer {max(layers)} does not exist: the model has layers 0..{num_layers - 1}.")
    return tuple(sorted(layers))


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
    try:
        from tracer.average import average_traces
        from tracer.recommend import recommend_layers
        from tracer.trace import TraceSettings
    except ImportError as error:  # the tracer's averaging is not part of this build
        raise InputError(f"--layers auto needs the tracer's averaged traces ({error.name} is missing); give layers, e.g. 2-6.") from None
    average = average_traces(loaded, facts, TraceSettings(kinds=("mlp",)), progress=progress)
    flagged = outlier_flags(loaded)
    recommendation = recommend_layers(average, width, flagged)
    return AutoLayers(tuple(recommendation.layers), recommendation.explanation, list(recommendation.warnings))


def outlier_flags(loaded: LoadedModel, tokens: int | None = None) -> dict[int, str]:
    """{layer: message} for layers whose cached key statistics have an outlier direction (nothing is computed)."""
    from editor.covariance import cached_diagnostics
    from editor.hparams import default_hparams

    try:
        from tracer.recommend import flag_outliers
    except ImportError:
        return {}
    budget = tokens or default_hparams(loaded.layout).cov_tokens
    try:
        found = cached_diagnostics(loaded, list(range(loaded.layout.num_layers)), budget)
    except InputError:
        return {}
    if len(found) < 3:
        return {}
    layers = sorted(found)
    flags = flag_outliers([found[layer].largest_eigenvalue for layer in layers])
    return {layers[index]: message for index, message in flags.items()}
