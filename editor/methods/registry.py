"""The editing methods Locus knows, by name: one line per method (its module and class).

Torch-free, so the command lines list the names at once; `method_class` imports a method when it is used.
To add a method: write editor/methods/<name>.py with its settings dataclass and its EditMethod class, and
add one line below (docs/METHODS.md shows a worked example).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from core.errors import InputError

if TYPE_CHECKING:  # type hints only: this module stays torch-free
    from core.layout import ModelLayout
    from editor.methods.base import EditMethod

METHODS: dict[str, str] = {
    "memit": "editor.methods.memit:Memit",
    "rome": "editor.methods.rome:Rome",
    "alphaedit": "editor.methods.alphaedit:AlphaEdit",
    "encore": "editor.methods.encore:Encore",
    "nas": "editor.methods.nas:Nas",
    "rlsedit": "editor.methods.rlsedit:RlsEdit",
    "ultraedit": "editor.methods.ultraedit:UltraEdit",
}
METHOD_NAMES = tuple(METHODS)


def method_class(name: str) -> type[EditMethod]:
    """The EditMethod class registered as `name` (InputError for an unknown name)."""
    if name not in METHODS:
        raise InputError(f"Unknown editing method {name!r}: choose {', '.join(METHOD_NAMES)}.")
    module, _, attribute = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def method_classes() -> list[type[EditMethod]]:
    """Every registered method's class, in registry order."""
    return [method_class(name) for name in METHOD_NAMES]


def method_for(layout: ModelLayout, name: str, **settings: Any) -> EditMethod:
    """Method `name` with the family's defaults for `layout` and `settings` (None = default), checked."""
    return method_class(name).for_model(layout, **settings)


def method_from_dict(data: dict) -> EditMethod:
    """The method a `to_dict()` (or an edit batch's recorded settings) describes."""
    cls = method_class(str(data.get("method", "memit")))
    return cls(cls.Settings.from_dict(data))
