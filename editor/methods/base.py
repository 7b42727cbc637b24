"""The editing-method interface: a method is an object with a name, a label, its own settings and `compute`.

Every caller (the CLIs, the app, evaluation, studies, `locus.edit`) holds an `EditMethod` and calls
`method.compute(loaded, requests, ledger=..., covariances=..., progress=...)`; what differs between
methods is answered by the method itself (its settings, `uses_earlier_keys`, `edits_one_layer`, ...),
never by comparing its name. Methods are registered in editor/methods/registry.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from editor.methods.settings import EditSettings, settings_for

if TYPE_CHECKING:  # type hints only: the registry and the CLIs read methods without importing torch
    from core.layout import ModelLayout
    from core.loading import LoadedModel
    from core.progress import Progress
    from editor.edits.batch import EditBatch, LayerDiagnostics
    from editor.edits.ledger import EditLedger
    from editor.edits.requests import EditRequest
    from editor.statistics.covariance import CovarianceSet


class EditMethod(ABC):
    """An editing method configured with its settings; `compute` gives an EditBatch and leaves the weights as they were."""

    name: ClassVar[str]  # as typed on the command line: "memit"
    title: ClassVar[str]  # as written in tables and plots: "MEMIT"
    label: ClassVar[str]  # one line for menus: "MEMIT (many facts, layers R)"
    Settings: ClassVar[type[EditSettings]]
    uses_earlier_keys: ClassVar[bool] = False  # its solve keeps the ledger's earlier edits' keys (K_p K_p^T)
    edits_one_layer: ClassVar[bool] = False  # it edits only the last layer of R (ROME)
    reuses_targets: ClassVar[bool] = False  # compute() takes precomputed target vectors (sweeps, R by editing)
    unused_settings: ClassVar[tuple[str, ...]] = ()  # shared settings it ignores (a resumed run may differ in them)
    uses_covariance: ClassVar[bool] = True  # its solve needs C = E[k k^T] over the corpus (callers compute it first)

    def __init__(self, settings: EditSettings | None = None) -> None:
        settings = settings if settings is not None else self.Settings()
        if not isinstance(settings, self.Settings):
            raise TypeError(f"{self.name} takes {self.Settings.__name__}, not {type(settings).__name__}")
        self.settings = settings.check()

    @classmethod
    def for_model(cls, layout: ModelLayout, **overrides: Any) -> EditMethod:
        """This method with the family's defaults for `layout`, `overrides` applied (None = default), checked."""
        settings = settings_for(cls.Settings, layout, **overrides)
        if cls.edits_one_layer:
            settings = settings.replace(layers=(settings.target_layer,))
        return cls(settings.check(layout))

    def replace(self, **changes: Any) -> EditMethod:
        """The same method with some settings changed."""
        return type(self)(self.settings.replace(**changes))

    @property
    def layers(self) -> tuple[int, ...]:
        return self.settings.layers

    @abstractmethod
    def compute(
        self,
        loaded: LoadedModel,
        requests: list[EditRequest],
        ledger: EditLedger | None = None,
        covariances: CovarianceSet | None = None,
        progress: Progress | None = None,
    ) -> EditBatch:
        """Weight deltas for `requests` on top of `ledger`'s edits (not applied); the weights are left as they were."""

    def describe(self) -> str:
        """This method's own settings in a few words, for tables: 'lambda 1500'."""
        return ""

    def weak_update_remedy(self) -> str:
        """What to change when the updates write too little of the edit (for the warning)."""
        return "more layers"

    def extra_warnings(self, layers: list[LayerDiagnostics]) -> list[str]:
        """Warnings of this method about a computed batch's layers (none by default)."""
        return []

    def to_dict(self) -> dict:
        return {"method": self.name, **self.settings.to_dict()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings == self.settings  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.settings))
