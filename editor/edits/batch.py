"""An edit batch: the weight deltas one MEMIT/ROME/AlphaEdit call computed, with its diagnostics."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field

import torch

from editor.edits.deltas import DeltaMap
from editor.edits.requests import EditRequest


@dataclass
class RequestDiagnostics:
    """How the target of one request was found."""

    subject: str
    target_new: str
    losses: list[float] = field(default_factory=list)  # total loss at every evaluated step
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    steps: int = 0  # gradient steps taken
    converged: bool = False  # the loss went below hparams.loss_stop, or the early stop (MPES) ended it
    final_probability: float = 0.0  # mean over prefixes of exp(-mean NLL of the new object), at z
    delta_norm: float = 0.0
    hidden_norm: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RequestDiagnostics:
        return cls(**data)


@dataclass
class LayerDiagnostics:
    """What the update did at one layer."""

    layer: int
    update_norm: float  # ||Delta_l||_F
    weight_norm: float  # ||W_l||_F before the update
    relative_update: float  # update_norm / weight_norm
    residual_norm: float  # mean ||z_i - h_i|| at l_R before this layer's update
    residual_share: float  # mean ||D_i||: the part of the residual this layer was asked to write
    key_norm: float  # mean ||k_i||
    cov_largest_eigenvalue: float | None = None
    cov_condition_number: float | None = None
    nullspace_size: int | None = None  # AlphaEdit: directions of C's null space (of m)
    nullspace_energy: float | None = None  # AlphaEdit: share of the text keys' energy trace(C) in that "null" space
    nullspace_key_share: float | None = None  # AlphaEdit: mean ||P k|| / ||k|| of this batch's keys

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LayerDiagnostics:
        return cls(**data)


@dataclass
class EditBatch:
    """Deltas {layer: (d, m) tensor} to add to W_l, for `requests`, computed by `method` on model `model`.

    `deltas` reads as a dict of dense float32 tensors; each is stored compactly (editor.edits.deltas.LayerDelta).
    """

    requests: list[EditRequest]
    method: str
    layers: list[int]
    deltas: DeltaMap
    model: str  # core.facts.model_key of the model it was computed on
    settings: dict = field(default_factory=dict)  # the method and its settings (EditMethod.to_dict())
    request_diagnostics: list[RequestDiagnostics] = field(default_factory=list)
    layer_diagnostics: list[LayerDiagnostics] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    final_residual_norm: float | None = None  # mean ||z_i - h_i|| at l_R after all layers were updated
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # (n, m) per layer, kept for the methods' sequential term
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    def __post_init__(self) -> None:
        if not isinstance(self.deltas, DeltaMap):
            self.deltas = DeltaMap(self.deltas)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def nbytes(self) -> int:
        """Bytes of the batch's tensors (compact deltas and keys)."""
        return self.deltas.nbytes + sum(keys.numel() * keys.element_size() for keys in self.keys.values())

    def describe(self) -> str:
        """One line for lists: id, method, facts."""
        facts = "; ".join(f"{r.text} -> {r.target_new}" for r in self.requests[:3])
        more = f" (+{len(self.requests) - 3} more)" if len(self.requests) > 3 else ""
        return f"{self.batch_id} {self.method} layers {self.layers}: {facts}{more}"

    def to_dict(self) -> dict:
        """Everything but the tensors (JSON-safe)."""
        return {
            "batch_id": self.batch_id,
            "created": self.created,
            "method": self.method,
            "model": self.model,
            "layers": list(self.layers),
            "requests": [r.to_dict() for r in self.requests],
            "settings": self.settings,
            "request_diagnostics": [d.to_dict() for d in self.request_diagnostics],
            "layer_diagnostics": [d.to_dict() for d in self.layer_diagnostics],
            "warnings": list(self.warnings),
            "final_residual_norm": self.final_residual_norm,
            "seconds": self.seconds,
            "timings": self.timings,
        }

    @classmethod
    def from_dict(cls, data: dict, deltas: DeltaMap | dict, keys: dict[int, torch.Tensor] | None = None) -> EditBatch:
        return cls(
            requests=[EditRequest.from_dict(r) for r in data["requests"]],
            method=data["method"],
            layers=[int(layer) for layer in data["layers"]],
            deltas=deltas,
            model=data["model"],
            settings=data.get("settings", data.get("hparams", {})),  # "hparams" in files of earlier versions
            request_diagnostics=[RequestDiagnostics.from_dict(d) for d in data.get("request_diagnostics", [])],
            layer_diagnostics=[LayerDiagnostics.from_dict(d) for d in data.get("layer_diagnostics", [])],
            warnings=list(data.get("warnings", [])),
            final_residual_norm=data.get("final_residual_norm"),
            keys=keys or {},
            seconds=float(data.get("seconds", 0.0)),
            timings=data.get("timings", {}),
            batch_id=data["batch_id"],
            created=data.get("created", ""),
        )
