"""NAS, Norm-Anchor Scaling (Liu, Zhu, Miao and Fujisawa, "Norm Anchors Make Model Edits Last", arXiv 2602.02543):
each solved value vector is rescaled to the original model's reference norm before it is written.

In a locate-and-edit method the value vector of request i is v*_i = v0_i + delta_i: v0_i the MLP output of
layer l_R at the subject's last token of the plain prompt (on the model as it is now, earlier edits applied)
and delta_i the optimised change of block l_R's output (SPEC 3 step 2), taken as a change of the MLP output.
Sequential edits feed back into it (edited weights give larger v0 and so larger v*, which give larger updates),
and NAS breaks that loop by anchoring ||v*|| to a norm A measured once on the original model:

    A = the mean of ||v*|| over a reference set of requests, its largest (1 - q) share left out,
    v*_i <- v0_i                      if ||v*_i|| > s A   (such an outlier is not written: z_i = h_i)
    v*_i <- A v*_i / ||v*_i||         otherwise
    z_i  =  h_i - v0_i + v*_i         (the target the solve writes; h_i = block l_R's output)

Defaults follow the paper's main configuration (NAS/ of github.com/SasyaTitech/NAS, commit 5acab48, whose
NAS_main.py is AlphaEdit's solve with this rescaling, and hparams/NAS/*.json): on top of AlphaEdit with
null-space threshold 2e-2 and l2 = 10; A from 1,000 reference requests (seed 0), q = 0.95, s = 2; the
reference targets optimised with the method's own target settings on bare prompts (no context prefixes,
the paper's "bare" mode). The paper draws the reference requests from MultiCounterFact; Locus draws them
from its packaged CounterFact set (assets/lifelong_counterfact.json) or `anchor_records`. A is computed before
the ledger's edits are applied (`MemitFamily.original_statistics`) and cached per model (its target layer's
original weights included), setting and reference set, in <cache>/nas_anchors/, so it never depends on a
ledger; the per-ledger state is AlphaEdit's (K_p K_p^T from the batches' keys), so undo and export/import
stay exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from core.embedded import cache_root
from core.errors import InputError
from core.hooks import capture_outputs, sequence_view
from core.loading import LoadedModel
from core.paths import ASSETS
from core.progress import Progress
from editor.edits.requests import EditRequest, validate_requests
from editor.edits.weights import projection_weight, tensor_digest
from editor.methods.alphaedit import AlphaEdit, AlphaEditSettings
from editor.methods.settings import NAMES_A_FILE, bounded, finite_at_least
from editor.methods.targets import TargetResult, compute_targets, request_name
from editor.passes.forward import pad_id, pad_right, run_until
from editor.passes.rows import key_rows
from editor.statistics.covariance import statistics_key

REFERENCE_RECORDS = ASSETS / "lifelong_counterfact.json"  # CounterFact records (SPEC 4 format)
TARGET_FIELDS = ("lr", "steps", "loss_stop", "early_stop_steps", "kl_factor", "kl_prompt", "weight_decay", "clamp_norm",
                 "max_prompt_tokens")  # the settings a reference target depends on


@dataclass(frozen=True)
class NasSettings(AlphaEditSettings):
    """NAS's settings: AlphaEdit's (the paper's values) and the norm anchor's."""

    nullspace_threshold: float = 2e-2  # hparams/NAS/*.json
    l2: float = 10.0
    # reference requests behind A. The paper uses 1,000 (nas_restart); each costs one target optimisation, about
    # 2 hours in all on a 2-core CPU (once per model and R, then cached), so the default is 200: A is a mean of
    # norms, and a fifth of the requests moves it by about 1/sqrt(200) of their spread. --set anchor_samples=1000
    # gives the paper's.
    anchor_samples: int = bounded(200, 1, 2000)
    anchor_quantile: float = bounded(0.95, 0.0, 1.0)  # A: the mean of the norms up to this quantile (largest 5% out)
    anchor_seed: int = bounded(0, 0, 2**31 - 1)  # which reference requests are drawn
    skip_factor: float = bounded(2.0, 0.0, 1e6)  # a value vector longer than this x A is not written (v* = v0)
    # CounterFact-format JSON of reference requests ("": assets/lifelong_counterfact.json)
    anchor_records: str = dataclasses.field(default="", metadata={NAMES_A_FILE: True})

    def check(self, layout=None) -> NasSettings:
        super().check(layout)
        if self.anchor_samples < 1:
            raise InputError(f"NAS needs at least one reference request, got anchor_samples={self.anchor_samples}.")
        if not 0 < self.anchor_quantile <= 1:
            raise InputError(f"NAS's anchor_quantile must be in (0, 1], got {self.anchor_quantile}.")
        finite_at_least(self.skip_factor, 0, "NAS's skip_factor", strict=True)
        if self.anchor_records and not Path(self.anchor_records).expanduser().is_file():
            raise InputError(f"NAS's anchor_records {self.anchor_records!r} is not a file.")
        return self


# --- the value vectors --------------------------------------------------------------------------


@torch.no_grad()
def mlp_outputs(loaded: LoadedModel, requests: list[EditRequest], layer: int, batch_rows: int = 256) -> torch.Tensor:
    """v0: the MLP output of block `layer` at each request's last subject token of the plain prompt, (n, d) float64."""
    rows = key_rows(loaded.tokenizer, requests, [""])
    name = loaded.layout.mlp(layer)
    found = torch.zeros(len(requests), loaded.layout.hidden_size, dtype=torch.float64)
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        ids, mask = pad_right([list(row.ids) for row in chunk], pad_id(loaded.tokenizer), loaded.device)
        with capture_outputs(loaded.model, [name]) as outputs:
            run_until(loaded, layer, input_ids=ids, attention_mask=mask, use_cache=False)
        states = sequence_view(outputs[name], ids.shape[0], ids.shape[1])
        for index, row in enumerate(chunk):
            found[row.request] = states[index, row.subject_last].double().cpu()
    return found


def value_vectors(targets: TargetResult, v0: torch.Tensor) -> torch.Tensor:
    """v* = v0 + delta (n, d) float64, delta = z - h the optimised change of block l_R's output."""
    return v0.double() + (targets.targets.double() - targets.hidden.double())


def trimmed_mean(norms: torch.Tensor, quantile: float) -> float:
    """The mean of `norms` without its largest floor((1 - quantile) n) values (the paper's outlier drop)."""
    ordered = norms.double().sort().values
    dropped = int((1.0 - quantile) * len(ordered) + 1e-9)
    kept = ordered[: len(ordered) - dropped] if dropped else ordered
    return float(kept.mean())


def anchored_targets(targets: TargetResult, v0: torch.Tensor, anchor: float, skip_factor: float) -> tuple[TargetResult, list[int]]:
    """z_i = h_i - v0_i + v*_i with v*_i rescaled to norm `anchor` (or v0_i where ||v*_i|| > skip_factor x anchor).

    Returns the new targets (float32, as targets are kept) and the requests left unedited.
    """
    if anchor <= 0:
        return targets, []
    v0 = v0.double()
    values = value_vectors(targets, v0)
    norms = values.norm(dim=-1)
    skipped = norms > skip_factor * anchor
    scaled = values * (anchor / norms.clamp_min(1e-30)).unsqueeze(-1)
    chosen = torch.where(skipped.unsqueeze(-1), v0, scaled)
    hidden = targets.hidden.double()
    z = (hidden - v0 + chosen).float()
    diagnostics = [dataclasses.replace(d, delta_norm=float((z[i].double() - hidden[i]).norm()))
                   for i, d in enumerate(targets.diagnostics)]
    return TargetResult(targets.layer, z, targets.hidden, diagnostics), skipped.nonzero().flatten().tolist()


# --- the anchor ---------------------------------------------------------------------------------


def reference_requests(path: Path, count: int, seed: int, tokenizer, max_tokens: int) -> list[EditRequest]:
    """`count` requests drawn (seeded) from the CounterFact records in `path`; records that do not validate are skipped."""
    data = json.loads(path.read_text())
    records = data["records"] if isinstance(data, dict) else data
    pool = []
    for record in records:
        rewrite = record.get("requested_rewrite") if isinstance(record, dict) else None
        rewrite = rewrite[0] if isinstance(rewrite, list) and rewrite else rewrite
        if not isinstance(rewrite, dict):
            continue
        target = rewrite.get("target_new")
        target = target.get("str") if isinstance(target, dict) else target
        try:
            pool += validate_requests([EditRequest(rewrite.get("subject", ""), rewrite.get("prompt", ""), target or "")],
                                      tokenizer, max_tokens)
        except InputError:
            continue
    if not pool:
        raise InputError(f"{path.name} holds no usable CounterFact request for NAS's norm anchor.")
    return pool if count >= len(pool) else random.Random(seed).sample(pool, count)


_ANCHORS: dict[str, float] = {}
_ANCHORS_LOCK = threading.Lock()


def anchor_path(loaded: LoadedModel, settings: NasSettings, records: Path) -> Path:
    """Where the anchor of this model, layer, setting and reference set is cached."""
    layer = settings.target_layer
    identity = {
        "layer": layer,
        "weights": tensor_digest(projection_weight(loaded, layer)),
        "records": hashlib.sha256(records.read_bytes()).hexdigest(),
        "samples": settings.anchor_samples, "seed": settings.anchor_seed, "quantile": settings.anchor_quantile,
        **{name: getattr(settings, name) for name in TARGET_FIELDS},
        **({"first_step": settings.first_step} if settings.first_step else {}),  # anchors made before it keep their key
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "nas_anchors" / statistics_key(loaded) / f"anchor-L{layer}-{digest}.json"


def anchor_norm(loaded: LoadedModel, settings: NasSettings, progress: Progress | None = None, use_cache: bool = True) -> float:
    """A: the trimmed mean of ||v*|| over the reference requests on `loaded` as it is (call it on the original weights)."""
    records = Path(settings.anchor_records).expanduser() if settings.anchor_records else REFERENCE_RECORDS
    use_cache = use_cache and not loaded.edits_applied  # an edited model's norms are no anchor of the model
    path = anchor_path(loaded, settings, records)
    key = str(path)
    if use_cache:
        with _ANCHORS_LOCK:
            if key in _ANCHORS:
                return _ANCHORS[key]
        if path.is_file():
            value = float(json.loads(path.read_text())["anchor"])
            with _ANCHORS_LOCK:
                _ANCHORS[key] = value
            return value
    layer = settings.target_layer
    requests = reference_requests(records, settings.anchor_samples, settings.anchor_seed, loaded.tokenizer,
                                  settings.max_prompt_tokens)
    bare = settings.replace(prefix_starts=())  # the paper's reference targets: plain prompts, no context prefixes
    with loaded.lock:
        targets = compute_targets(loaded, requests, bare, [""], layer=layer, progress=progress)
        norms = value_vectors(targets, mlp_outputs(loaded, requests, layer, settings.key_batch_rows)).norm(dim=-1)
    value = trimmed_mean(norms, settings.anchor_quantile)
    if use_cache:
        _write_json(path, {"anchor": value, "raw_mean": float(norms.mean()), "samples": len(requests), "layer": layer,
                           "quantile": settings.anchor_quantile, "records": str(records.name)})
        with _ANCHORS_LOCK:
            _ANCHORS[key] = value
    return value


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


# --- the method ---------------------------------------------------------------------------------


class Nas(AlphaEdit):
    """AlphaEdit with every value vector v* = v0 + delta rescaled to the original model's anchor norm A."""

    name = "nas"
    title = "NAS"
    label = "NAS (AlphaEdit with value vectors held at the original model's norm)"
    Settings = NasSettings

    def original_statistics(self, loaded: LoadedModel, progress: Progress | None = None) -> float:
        """The anchor norm A (cached)."""
        return anchor_norm(loaded, self.settings, progress)

    def adjust_targets(self, loaded: LoadedModel, requests: list[EditRequest], prefixes: list[str], targets: TargetResult,
                       statistics: object | None) -> tuple[TargetResult, list[str]]:
        anchor = float(statistics) if statistics is not None else 0.0
        v0 = mlp_outputs(loaded, requests, targets.layer, self.settings.key_batch_rows)
        adjusted, skipped = anchored_targets(targets, v0, anchor, self.settings.skip_factor)
        if not skipped:
            return adjusted, []
        names = ", ".join(request_name(requests[i]) for i in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        return adjusted, [
            f"NAS left {len(skipped)} request(s) unwritten ({names}): their value vector was longer than "
            f"{self.settings.skip_factor:g} x the anchor norm {anchor:.3g}, and the paper's rule keeps v* = v0 for such an "
            "outlier. More target steps or a larger skip_factor (--set skip_factor=...) change that."
        ]

    def describe(self) -> str:
        return f"{super().describe()}, anchor from {self.settings.anchor_samples} requests"
