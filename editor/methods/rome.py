"""ROME (SPEC section 3): one layer, one request, a rank-one update; several requests are applied in turn."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from core.errors import LocusError
from core.facts import model_key
from core.loading import LoadedModel
from core.progress import Progress, stage
from editor.edits.batch import EditBatch, LayerDiagnostics
from editor.edits.deltas import LayerDelta
from editor.edits.requests import EditRequest
from editor.edits.weights import add_delta, hold_weights, projection_weight, release_weights
from editor.methods.base import EditMethod
from editor.methods.keys import request_keys
from editor.methods.memit import architecture_warnings, out_of_memory_guard, prepare
from editor.methods.prefixes import context_prefixes
from editor.methods.settings import EditSettings
from editor.methods.targets import compute_targets
from editor.methods.updates import rome_factors
from editor.statistics.covariance import CovarianceSet, layer_covariances


@dataclass(frozen=True)
class RomeSettings(EditSettings):
    """ROME's settings: the shared ones (R's last layer is the one edited)."""


class Rome(EditMethod):
    """Rank-one Delta = (v - W k)(C^-1 k)^T / ((C^-1 k)^T k) per request at one layer (Meng et al., NeurIPS 2022)."""

    name = "rome"
    title = "ROME"
    label = "ROME (the last layer of R; facts one after another)"
    Settings = RomeSettings
    edits_one_layer = True

    def compute(
        self,
        loaded: LoadedModel,
        requests: list[EditRequest] | list[dict],
        ledger=None,
        covariances: CovarianceSet | None = None,
        progress: Progress | None = None,
    ) -> EditBatch:
        """The requests' rank-one updates at the last layer of R, one after another (weights left unchanged).

        v - W k is the optimized change delta of the layer's output at the subject's last token (step 2 of
        SPEC 3 with that layer as the target layer), k the key averaged over the prefixes. Each request is
        computed with the previous requests' updates in place; the batch holds their sum.
        """
        started = time.perf_counter()
        ledger = ledger if ledger is not None and len(ledger) else None
        layer = self.settings.target_layer
        settings = self.settings.replace(layers=(layer,))
        requests = prepare(loaded, requests, settings, ledger)
        with loaded.lock, out_of_memory_guard(loaded, len(requests)):
            if covariances is None:
                covariances = layer_covariances(loaded, [layer], settings.cov_tokens, settings.corpus, stage(progress, 0.0, 0.3))
            covariance = covariances.covariances[layer]
            prefixes = context_prefixes(loaded, settings)
            diagnostics, lefts, rights, keys = [], [], [], []
            context = ledger.applied(loaded) if ledger is not None else nullcontext()
            with context:
                saved = hold_weights(loaded, [layer])  # held: a safe point may take the updates off and put them back
                weight_norm = float(projection_weight(loaded, layer).double().norm())
                try:
                    for index, request in enumerate(requests):
                        report = stage(progress, 0.3 + 0.7 * index / len(requests), 0.3 + 0.7 * (index + 1) / len(requests))
                        target = compute_targets(loaded, [request], settings, prefixes, layer=layer, progress=report)
                        diagnostics.extend(target.diagnostics)
                        weight = projection_weight(loaded, layer)
                        device = weight.device  # the float64 solve runs where the layer lives
                        key = request_keys(loaded, [request], prefixes, [layer]).keys[layer][0].to(device)
                        change = (target.targets[0] - target.hidden[0]).to(device).double()
                        left, right = rome_factors(change, key.double(), covariance.to(device))
                        delta = left @ right
                        if not torch.isfinite(delta).all():
                            raise LocusError(f"The ROME update for {request.subject!r} contains NaN or Inf; no weight was changed.")
                        add_delta(weight, delta.to(dtype=torch.float32))
                        lefts.append(left.cpu())
                        rights.append(right.cpu())
                        keys.append(key.float().cpu())
                finally:
                    release_weights(loaded, saved)
        total = LayerDelta.from_factors(torch.cat(lefts, dim=1), torch.cat(rights, dim=0))
        update_norm = float(total.dense().double().norm())
        diag = covariances.diagnostics.get(layer)
        layer_diag = LayerDiagnostics(
            layer=layer,
            update_norm=update_norm,
            weight_norm=weight_norm,
            relative_update=update_norm / max(weight_norm, 1e-12),
            residual_norm=sum(d.delta_norm for d in diagnostics) / len(diagnostics),
            residual_share=sum(d.delta_norm for d in diagnostics) / len(diagnostics),
            key_norm=0.0,
            cov_largest_eigenvalue=diag.largest_eigenvalue if diag else None,
            cov_condition_number=diag.condition_number if diag else None,
        )
        if progress is not None:
            progress(1.0, f"computed {len(requests)} ROME edit(s)")
        return EditBatch(
            requests=requests,
            method=self.name,
            layers=[layer],
            deltas={layer: total},
            keys={layer: torch.stack(keys)},
            model=model_key(loaded),
            settings=type(self)(settings).to_dict(),
            request_diagnostics=diagnostics,
            layer_diagnostics=[layer_diag],
            warnings=architecture_warnings(loaded) + covariances.warnings(),
            seconds=time.perf_counter() - started,
        )
