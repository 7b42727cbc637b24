"""Locus: find where a fact lives inside a language model, rewrite it there, and prove what changed.

    import locus
    lm = locus.load("embedded")                      # or a folder, a hub id, or (model, tokenizer)
    locus.predict(lm, "The Eiffel Tower is located in the city of")
    t = locus.trace(lm, "The Eiffel Tower is located in the city of", "Eiffel Tower", kinds=["mlp"], samples=3)
    t.figure("mlp")                                  # a plotly heatmap
    with locus.edit(lm, [locus.EditRequest("Eiffel Tower", "{} is located in the city of", "Rome")]):
        locus.predict(lm, "The Eiffel Tower is located in the city of")   # Rome
    # the weights are back, bit for bit

docs/API.md lists every name with an example.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "METHOD_NAMES", "Edit", "EditRequest", "InputError", "LocusError", "Prediction", "Trace", "average", "average_plot",
    "edit", "evaluate", "generate", "load", "methods", "predict", "recommend_layers", "recommendation_plot", "trace",
]
__version__ = "0.2.0"
ALIASES = {"recommend_layers": "recommend_layers_for"}


def __getattr__(name: str) -> Any:
    """The public names, from locus.api on first use (so the `locus` command starts without torch)."""
    if name not in __all__:
        raise AttributeError(f"module 'locus' has no attribute {name!r}")
    from locus import api  # lazy: torch and transformers (~3 s); `locus --help` must stay instant

    return getattr(api, ALIASES.get(name, name))


def __dir__() -> list[str]:
    return sorted(__all__)
