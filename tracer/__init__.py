"""Locus tracer: reads a model (loading, architecture layouts, hooks, tokens, causal traces).

Names are imported lazily so that `python -m tracer --help` and light commands start fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "KINDS": "tracer.kinds",
    "ModelLayout": "tracer.layout",
    "resolve_layout": "tracer.layout",
    "LoadedModel": "tracer.loading",
    "from_parts": "tracer.loading",
    "load_model": "tracer.loading",
    "InputError": "tracer.errors",
    "LocusError": "tracer.errors",
    "ModelLoadError": "tracer.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tracer' has no attribute {name!r}")
