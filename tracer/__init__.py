"""Locus tracer: reads a model (loading, architecture layouts, hooks, tokens, causal traces)."""

from tracer.errors import InputError, LocusError, ModelLoadError
from tracer.layout import KINDS, ModelLayout, resolve_layout
from tracer.loading import LoadedModel, from_parts, load_model

__all__ = [
    "KINDS",
    "InputError",
    "LoadedModel",
    "LocusError",
    "ModelLayout",
    "ModelLoadError",
    "from_parts",
    "load_model",
    "resolve_layout",
]
