"""Choosing MEMIT's critical range R (SPEC section 2) from one trace or from averaged traces.

The curve is the MLP indirect effect at the last subject token over layers; the recommendation is
the window of `width` contiguous layers whose summed curve is largest. Layers whose MLP keys have
an outlier direction (SPEC section 5: layer 2 of SmolLM2) are flagged through `flagged_layers`:
the editor's covariance statistics know C, so they pass `flag_outliers(top eigenvalue per layer)`
(or their own messages). A trace alone cannot see C, so nothing is guessed here.

A recommendation whose curve peaks below `WEAK_FRACTION` of high - low (the total effect) says so in
its warnings (SPEC 6): such a curve says little about where to edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy

from core.errors import InputError
from core.loading import LoadedModel
from tracer.average import AverageResult, packaged_average
from tracer.problem import TOKEN_CLASSES, TraceResult

LAST_SUBJECT = TOKEN_CLASSES[2]
OUTLIER_RATIO = 20.0  # a layer is flagged when its top key eigenvalue exceeds this many times the median
WEAK_FRACTION = 0.10  # SPEC 6: a curve whose maximum is below this share of high - low is a weak signal


@dataclass
class LayerRecommendation:
    """The recommended layers R with the data that explains the choice."""

    layers: list[int]
    width: int
    curve: list[float]  # MLP indirect effect at the last subject token, per layer
    lower: list[float] | None  # 95% interval (averages only)
    upper: list[float] | None
    window_sums: list[float]  # summed curve of the window starting at each layer
    start: int
    score: float
    source: str  # "trace" or "average"
    explanation: str
    flagged_layers: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    metric: str = "prob"  # what the curve's effects are measured in (tracer.modes.METRICS)

    @property
    def interval(self) -> tuple[list[float], list[float]] | None:
        """(lower, upper) 95% interval of the curve, or None for a single trace."""
        return None if self.lower is None or self.upper is None else (self.lower, self.upper)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["flagged_layers"] = {str(k): v for k, v in self.flagged_layers.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> LayerRecommendation:
        data = dict(data)
        data["flagged_layers"] = {int(k): v for k, v in data.get("flagged_layers", {}).items()}
        return cls(**data)


def window_sums(curve: numpy.ndarray, width: int) -> numpy.ndarray:
    """Sum of `curve` (L,) over each window of `width` layers: (L - width + 1,)."""
    return numpy.convolve(curve, numpy.ones(width), mode="valid")


def best_window(curve: numpy.ndarray, width: int) -> tuple[int, float]:
    """(start, summed effect) of the window with the largest sum (the earliest one on ties)."""
    sums = window_sums(curve, width)
    start = int(numpy.argmax(sums))
    return start, float(sums[start])


def weak_signal_warning(curve: numpy.ndarray, total_effect: float, fraction: float = WEAK_FRACTION) -> str | None:
    """The warning for a curve whose maximum is below `fraction` of the total effect high - low (None when strong)."""
    peak = float(numpy.max(curve))
    if not numpy.isfinite(total_effect) or total_effect <= 0:
        return (
            f"Weak signal: the corruption does not lower the answer's score (high - low = {total_effect:.3g}), so there is "
            f"no effect to locate and this R is arbitrary; measure R by editing instead."
        )
    if peak >= fraction * total_effect:
        return None
    return (
        f"Weak signal: the MLP effect at the last subject token peaks at {peak:.3g}, below {fraction:.0%} of the total "
        f"effect high - low = {total_effect:.3g}, so this curve says little about where to edit; average more facts or "
        f"measure R by editing."
    )


def _curve_from(source) -> tuple[numpy.ndarray, numpy.ndarray | None, numpy.ndarray | None, str, list[str], float]:
    notes: list[str] = []
    if isinstance(source, TraceResult):
        if "mlp" not in source.scores:
            raise InputError("This trace has no MLP scores: trace the mlp kind to get a layer recommendation.")
        effects = source.indirect_effect("mlp")
        last_subject = source.subject_range[1] - 1
        curve = effects[last_subject]
        if not numpy.isfinite(curve).all():
            raise InputError("The MLP row of the last subject token is not finished yet.")
        token, layer = numpy.unravel_index(numpy.nanargmax(effects), effects.shape)
        if token != last_subject:
            notes.append(
                f"The strongest MLP effect of this trace is at token {source.tokens[token]!r} (layer {layer}), "
                f"not at the last subject token; MEMIT edits at the last subject token, so R follows that row."
            )
        return curve, None, None, "trace", notes, float(source.total_effect)
    if isinstance(source, AverageResult):
        if "mlp" not in source.effects:
            raise InputError("These averages have no MLP effects: average the mlp kind to get a layer recommendation.")
        mean, lower, upper = source.curve("mlp", LAST_SUBJECT)
        if not numpy.isfinite(mean).all():
            raise InputError("The averages have no last-subject-token samples yet.")
        return mean, lower, upper, "average", notes, float(source.total_effect)
    raise InputError("A layer recommendation needs a trace or averaged traces.")


def recommend_layers(source, width: int = 5, flagged_layers: Mapping[int, str] | None = None) -> LayerRecommendation:
    """R = the `width` contiguous layers with the largest summed MLP effect at the last subject token."""
    curve, lower, upper, kind, notes, total_effect = _curve_from(source)
    layers = len(curve)
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= layers:
        raise InputError(f"The width of R must be a whole number from 1 to {layers}, got {width!r}.")
    sums = window_sums(curve, width)
    start, score = best_window(curve, width)
    chosen = list(range(start, start + width))
    flagged = {int(layer): text for layer, text in (flagged_layers or {}).items()}
    warnings = [f"Layer {layer} is in R: {flagged[layer]}" for layer in chosen if layer in flagged]
    weak = weak_signal_warning(curve, total_effect)
    if weak is not None:
        warnings.insert(0, weak)
    peak = int(numpy.argmax(curve))
    where = "averaged over facts, with 95% intervals" if kind == "average" else "in this one trace (no interval: average over facts for one)"
    explanation = (
        f"R = layers {start}-{start + width - 1}: of all windows of {width} adjacent layers, these have the largest "
        f"summed MLP effect at the last subject token ({score:.3f}, {where}). "
        f"The single strongest layer is {peak} ({curve[peak]:.3f}). "
        f"MEMIT will spread the edit over these layers' MLPs."
    )
    if notes:
        explanation += " " + " ".join(notes)
    if warnings:
        explanation += " Warning: " + " ".join(warnings)
    return LayerRecommendation(
        layers=chosen,
        width=width,
        curve=[float(v) for v in curve],
        lower=None if lower is None else [float(v) for v in lower],
        upper=None if upper is None else [float(v) for v in upper],
        window_sums=[float(v) for v in sums],
        start=start,
        score=score,
        source=kind,
        explanation=explanation,
        flagged_layers=flagged,
        warnings=warnings,
        metric=source.settings.metric,
    )


# --- outlier layers of the MLP keys (fed by the editor's covariance statistics) ------------------------------------------------------------

def flag_outliers(eigenvalues: list[float], ratio: float = OUTLIER_RATIO) -> dict[int, str]:
    """{layer: message} for layers whose top key eigenvalue (of C, per layer) exceeds `ratio` x the median."""
    median = float(numpy.median(eigenvalues))
    flagged = {}
    for layer, value in enumerate(eigenvalues):
        if median > 0 and value > ratio * median:
            flagged[layer] = (
                f"its MLP keys have an outlier direction (largest eigenvalue of the key second moment "
                f"{value:.3g}, {value / median:.0f}x the median layer); edits there can be unstable"
            )
    return flagged


# --- the packaged averages (embedded model) -----------------------------------------------------------------------

def packaged_recommendation(
    loaded: LoadedModel, width: int = 5, flagged_layers: Mapping[int, str] | None = None
) -> LayerRecommendation | None:
    """R from the averages shipped in assets/ (embedded model), instantly; None when there are none."""
    average = packaged_average(loaded)
    return None if average is None else recommend_layers(average, width, flagged_layers)
