"""Forms: the component values of an event as one typed dataclass, every field checked (ui/limits.py).

A form is a frozen dataclass whose fields say how the value of their component is checked:

    @dataclass(frozen=True)
    class AverageForm(Form):
        count: int = whole("Facts to average", (2, 10_000), 20)
        kinds: tuple[str, ...] = choices("What to restore", KINDS, KINDS)
        samples: int = whole("Noise samples", limits.SAMPLES, 10)

Building one checks and converts every field (a slider's 20.0 becomes 20, a list a tuple; InputError naming
the first unusable value), so a handler `run_average(ctx, form: AverageForm, session, progress)` reads only
usable values, and a test builds the form the page would: `AverageForm(count=2, kinds=["mlp"], samples=1)`.
The defaults are the page's initial values. A form checks what needs neither the server's `Limits` nor the
loaded model; those checks stay in the handler, which has both.

`bind(ctx, handler, Form, components)` wires a handler to the page: it gives the event function and its
inputs. The function takes the components' values in the form's field order, then the handler's own
parameters after the form (the session, progress); its parameters are named after the fields, so the API
endpoint's parameters are too (gradio_client callers may pass them by name). A field whose components are a
mapping ({name: component}, nested as deep as needed) gets a mapping of their values, and its parameters are
named after the keys (joined by "_").
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ui import limits
from ui.errors import friendly

CHECK = "check"  # the metadata key of a field's check: value -> checked value


@dataclass(frozen=True)
class Form:
    """A frozen dataclass of one event's values; each field's check runs when it is built, then `checked()`."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check = item.metadata.get(CHECK)
            if check is not None:
                object.__setattr__(self, item.name, check(getattr(self, item.name)))
        self.checked()

    def checked(self) -> None:
        """Checks across fields (after each field's own), for subclasses; use `_set` to store a converted value."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in dataclasses.fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        """The page's initial value of field `name` (its dataclass default)."""
        item = cls.__dataclass_fields__[name]
        if item.default_factory is not dataclasses.MISSING:
            return item.default_factory()
        return None if item.default is dataclasses.MISSING else item.default


# --- fields ----------------------------------------------------------------------------------------------------------

def checked(check: Callable[[Any], Any], default: Any = None) -> Any:
    """A field whose value is `check(value)` (which raises InputError for an unusable one)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={CHECK: check})
    return dataclasses.field(default=default, metadata={CHECK: check})


def raw(default: Any = None) -> Any:
    """A field passed on as it is (checked by the handler with the server's limits, e.g. a table's rows)."""
    return checked(lambda value: value, default)


def text(label: str, default: str = "", limit: int = limits.MAX_TEXT_CHARS, required: bool = False) -> Any:
    return checked(lambda value: limits.text(value, label, limit=limit, required=required), default)


def whole(label: str, bounds: tuple[int, int], default: int | None = None) -> Any:
    return checked(lambda value: limits.whole(value, label, bounds), default)


def real(label: str, bounds: tuple[float, float], default: float | None = None, optional: bool = False) -> Any:
    return checked(lambda value: limits.real(value, label, bounds, optional=optional), default)


def choice(label: str, allowed: Iterable[Any], default: Any = None) -> Any:
    allowed = tuple(allowed)
    return checked(lambda value: limits.choice(value, label, allowed), default)


def choices(label: str, allowed: Iterable[Any], default: Iterable[Any] = ()) -> Any:
    """Several of `allowed` (a list, a tuple or one value) as a tuple."""
    allowed = tuple(allowed)

    def check(value: Any) -> tuple:
        values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        return tuple(limits.choice(item, label, allowed) for item in values)

    return checked(check, tuple(default))


# --- the event function ----------------------------------------------------------------------------------------------

def _flatten(value: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(value, Mapping):
        return [entry for key, inner in value.items() for entry in _flatten(inner, (*path, str(key)))]
    return [(path, value)]


def _nest(entries: list[tuple[tuple[str, ...], Any]]) -> dict:
    nested: dict = {}
    for path, value in entries:
        place = nested
        for key in path[:-1]:
            place = place.setdefault(key, {})
        place[path[-1]] = value
    return nested


def bind(ctx: Any, handler: Callable[..., Any], form: type[Form], components: Mapping[str, Any],
         extra: Mapping[str, Any] | None = None) -> tuple[Callable, list]:
    """(event function, inputs) for `handler(ctx, form, *rest)`: the inputs are the form's components in field order,
    then `rest`'s (ctx.session for a parameter named session, `extra[name]` for a parameter of that name, e.g. a
    page's gr.State).

    `components` maps every field of `form` to its component, or to a mapping of components (see the module doc).
    """
    names = form.field_names()
    if set(components) != set(names):
        raise TypeError(f"{form.__name__}'s fields are {', '.join(names)}; components were given for {', '.join(components)}")
    entries = [(path, component) for name in names for path, component in _flatten(components[name], (name,))]
    parameter_names = [path[0] if len(path) == 1 else "_".join(path[1:]) for path, _ in entries]
    if len(set(parameter_names)) != len(parameter_names) or not all(name.isidentifier() for name in parameter_names):
        raise TypeError(f"{form.__name__}'s components need distinct names that are identifiers: {parameter_names}")
    rest = list(inspect.signature(handler).parameters.values())[2:]  # after (ctx, form): session, progress, ...
    by_name = {**(extra or {}), "session": ctx.session}
    extra_inputs = [by_name[parameter.name] for parameter in rest if parameter.name in by_name]
    signature = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in parameter_names]
        + [parameter.replace(annotation=inspect.Parameter.empty,
                             default=None if parameter.default is inspect.Parameter.empty else parameter.default)
           for parameter in rest]
    )
    count = len(entries)

    def arguments(args: tuple, kwargs: dict) -> tuple[Form, list]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        return form(**_nest([(path, value) for (path, _), value in zip(entries, values[:count])])), values[count:]

    if inspect.isgeneratorfunction(handler):
        def event(*args, **kwargs):
            built, others = arguments(args, kwargs)
            yield from handler(ctx, built, *others)
    else:
        def event(*args, **kwargs):
            built, others = arguments(args, kwargs)
            return handler(ctx, built, *others)

    event.__signature__ = signature
    event.__name__ = handler.__name__  # Gradio names events after their function
    event.__qualname__ = handler.__qualname__
    event.__doc__ = handler.__doc__  # the API page's description
    return friendly(event), [component for _, component in entries] + extra_inputs
