"""MEMIT (SPEC section 3): write many facts at once into the MLPs of a range of layers R.

`compute_memit` returns an `EditBatch` (deltas + diagnostics) and leaves the model's weights exactly as
it found them: the layer loop needs each layer's update in place while it computes the next layer's
keys, so the touched matrices are saved first and put back (bit for bit) on every exit.

Whatever the model's dtype: keys and target vectors are float32, C is float64, and each layer's update
is solved in float64 on that layer's own device (a GPU's, or each device of a device_map="auto" model),
kept as float32 and rounded into the weight's dtype once (`editor.edits.weights.add_delta`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from core.errors import LocusError
from core.facts import model_key
from core.loading import LoadedModel
from core.memory import out_of_memory_as_error
from core.progress import Progress, safe_point, stage
from editor.edits.batch import EditBatch, LayerDiagnostics
from editor.edits.deltas import LayerDelta
from editor.edits.requests import EditRequest, validate_requests
from editor.edits.weights import add_delta, hold_weights, projection_weight, release_weights
from editor.methods.hparams import SEQUENTIAL_METHODS, MemitHyperParams, default_hparams
from editor.methods.keys import request_keys
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import TargetResult, compute_targets
from editor.methods.updates import (
    NullSpace,
    alphaedit_factors,
    memit_factors,
    null_space,
    projected_key_share,
)
from editor.statistics.covariance import CovarianceSet, layer_covariances


def architecture_warnings(loaded: LoadedModel) -> list[str]:
    """Warnings about where MEMIT's assumptions hold only approximately for this model."""
    if loaded.layout.mlp_output_norm:
        return [
            f"This model normalizes each MLP's output ({loaded.layout.mlp_output_norm}) before adding it to the "
            "residual stream, so MEMIT's linear update only approximates the target vectors here; check the edit's effect."
        ]
    return []


def prepare(
    loaded: LoadedModel, requests, hparams: MemitHyperParams | None, ledger=None
) -> tuple[list[EditRequest], MemitHyperParams]:
    """Validated requests and settings (InputError before anything runs)."""
    hparams = (hparams or default_hparams(loaded.layout)).check(loaded.layout)
    requests = validate_requests(requests, loaded.tokenizer, hparams.max_prompt_tokens)
    if ledger is not None:
        ledger.check_model(loaded)
    return requests, hparams


def compute_memit(
    loaded: LoadedModel,
    requests: list[EditRequest] | list[dict],
    hparams: MemitHyperParams | None = None,
    progress: Progress | None = None,
    *,
    ledger=None,
    covariances: CovarianceSet | None = None,
    targets: TargetResult | None = None,
    engine: str = "cached",
) -> EditBatch:
    """Deltas for all `requests` at hparams.layers, computed on top of `ledger`'s edits (if any)."""
    started = time.perf_counter()
    requests, hparams = prepare(loaded, requests, hparams, ledger)
    timings: dict[str, float] = {}
    with loaded.lock, out_of_memory_guard(loaded, len(requests)):
        clock = time.perf_counter()
        if covariances is None:
            covariances = layer_covariances(
                loaded, list(hparams.layers), hparams.cov_tokens, hparams.corpus, stage(progress, 0.0, 0.3)
            )
        timings["covariance"] = time.perf_counter() - clock
        prefixes = context_prefixes(loaded, hparams)  # from the unedited model
        context = ledger.applied(loaded) if ledger is not None else nullcontext()
        with context:
            clock = time.perf_counter()
            if targets is None:
                targets = compute_targets(loaded, requests, hparams, prefixes, engine=engine, progress=stage(progress, 0.3, 0.85))
            timings["targets"] = time.perf_counter() - clock
            if not torch.isfinite(targets.targets).all():
                raise LocusError("The target vectors contain NaN or Inf; nothing was changed. Try other targets or fewer steps.")
            clock = time.perf_counter()
            # AlphaEdit's and ENCORE's sequential term: K_p K_p^T of every earlier edit in the ledger, per layer
            previous = ledger.key_grams(hparams.layers) if (ledger is not None and hparams.method in SEQUENTIAL_METHODS) else {}
            deltas, layer_diagnostics, keys, final_residual = layer_updates(
                loaded, requests, hparams, prefixes, covariances, targets, previous, stage(progress, 0.85, 1.0)
            )
            timings["layers"] = time.perf_counter() - clock
    if progress is not None:
        progress(1.0, f"computed {len(requests)} edit(s)")
    return EditBatch(
        requests=requests,
        method=hparams.method,
        layers=list(hparams.layers),
        deltas=deltas,
        model=model_key(loaded),
        hparams=hparams.to_dict(),
        request_diagnostics=targets.diagnostics,
        layer_diagnostics=layer_diagnostics,
        warnings=architecture_warnings(loaded) + covariances.warnings() + weak_update_warnings(layer_diagnostics, final_residual, hparams)
        + nullspace_warnings(layer_diagnostics, hparams),
        final_residual_norm=final_residual,
        keys=keys,
        seconds=time.perf_counter() - started,
        timings=timings,
    )


def layer_updates(
    loaded: LoadedModel,
    requests: list[EditRequest],
    hparams: MemitHyperParams,
    prefixes: list[str],
    covariances: CovarianceSet,
    targets: TargetResult,
    previous_grams: dict[int, torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> tuple[dict[int, LayerDelta], list[LayerDiagnostics], dict[int, torch.Tensor], float]:
    """SPEC 3 step 3: for each layer in R (increasing), spread the remaining residual and update W_l.

    The updates stay applied while later layers' keys are computed, and are undone before returning.
    Returns the deltas (compact: each the product of two thin factors), per-layer diagnostics, the keys
    (n, m) per layer, and the final mean residual ||z - h|| at l_R. AlphaEdit adds `previous_grams`
    (K_p K_p^T of earlier edits, (m, m) per layer) to its solve; so does ENCORE, with its norm constraint.
    """
    layers = list(hparams.layers)
    saved = hold_weights(loaded, layers)  # held: a safe point may take the updates off and put them back
    deltas: dict[int, LayerDelta] = {}
    diagnostics: list[LayerDiagnostics] = []
    all_keys: dict[int, torch.Tensor] = {}
    z = targets.targets.double()
    try:
        for index, layer in enumerate(layers):
            if progress is not None:
                progress(index / (len(layers) + 1), f"updating layer {layer} ({index + 1}/{len(layers)})")
            safe_point(progress)  # the earlier layers' updates are held: a pause takes them off and back
            keyset = request_keys(loaded, requests, prefixes, [layer], targets.layer, hparams.key_batch_rows)
            weight = projection_weight(loaded, layer)
            device = weight.device  # the solve runs where the layer lives
            keys = keyset.keys[layer].to(device).double()
            residual = (z.to(device) - keyset.hidden.to(device).double()) / (len(layers) - index)
            covariance = covariances.covariances[layer].to(device)
            earlier = (previous_grams or {}).get(layer)
            earlier = earlier.to(device) if earlier is not None else None
            space: NullSpace | None = None
            if hparams.method == "alphaedit":
                space = null_space(covariance, hparams.nullspace_threshold)
                factors = alphaedit_factors(residual, keys, space.projection, earlier, hparams.alphaedit_l2)
            elif hparams.method == "encore":
                factors = memit_factors(residual, keys, covariance, hparams.mom2_weight, earlier, hparams.norm_lambda)
            else:
                factors = memit_factors(residual, keys, covariance, hparams.mom2_weight)
            update = LayerDelta.from_factors(*factors)
            delta = update.dense()  # exactly what a ledger adds later
            if not torch.isfinite(delta).all():
                raise LocusError(
                    f"The update for layer {layer} contains NaN or Inf (the covariance or keys are degenerate); "
                    "no weight was changed."
                )
            weight_norm = float(weight.double().norm())
            add_delta(weight, delta)
            deltas[layer] = update
            all_keys[layer] = keyset.keys[layer].float().cpu()
            diag = covariances.diagnostics.get(layer)
            diagnostics.append(
                LayerDiagnostics(
                    layer=layer,
                    update_norm=float(delta.norm()),
                    weight_norm=weight_norm,
                    relative_update=float(delta.norm()) / max(weight_norm, 1e-12),
                    residual_norm=float((z.to(device) - keyset.hidden.to(device).double()).norm(dim=-1).mean()),
                    residual_share=float(residual.norm(dim=-1).mean()),
                    key_norm=float(keys.norm(dim=-1).mean()),
                    cov_largest_eigenvalue=diag.largest_eigenvalue if diag else None,
                    cov_condition_number=diag.condition_number if diag else None,
                    nullspace_size=space.size if space else None,
                    nullspace_energy=space.energy_share if space else None,
                    nullspace_key_share=projected_key_share(keys, space.projection) if space else None,
                )
            )
        final = request_keys(loaded, requests, prefixes, [], targets.layer, hparams.key_batch_rows)
        final_residual = float((z - final.hidden.double()).norm(dim=-1).mean())
    finally:
        release_weights(loaded, saved)
    if progress is not None:
        progress(1.0, "layers updated")
    return deltas, diagnostics, all_keys, final_residual


def weak_update_warnings(layers: list[LayerDiagnostics], final_residual: float, hparams: MemitHyperParams) -> list[str]:
    """A warning when the layers wrote less than half of the change z - h into the weights (lambda too large)."""
    if not layers or hparams.method == "rome" or layers[0].residual_norm <= 0:
        return []
    written = 1.0 - final_residual / layers[0].residual_norm
    if written >= 0.5:
        return []
    remedy = (f"a smaller l2 (now {hparams.alphaedit_l2:g}) or a larger null-space threshold (now {hparams.nullspace_threshold:g})"
              if hparams.method == "alphaedit" else f"a smaller lambda (now {hparams.mom2_weight:g})"
              + (f" or a smaller norm constraint (now {hparams.norm_lambda:g})" if hparams.method == "encore" else ""))
    return [
        f"The weight updates wrote only {max(written, 0.0):.0%} of the change the edit needs (mean ||z - h|| went from "
        f"{layers[0].residual_norm:.1f} to {final_residual:.1f}); the edit may not take. Try {remedy} or more layers."
    ]


NULLSPACE_LEAK = 0.05  # a "null" space holding more of the text keys' energy than this protects little


def nullspace_warnings(layers: list[LayerDiagnostics], hparams: MemitHyperParams) -> list[str]:
    """A warning when AlphaEdit's null space holds much of ordinary text's key energy (its threshold is scale-dependent)."""
    leaky = [layer for layer in layers if (layer.nullspace_energy or 0.0) > NULLSPACE_LEAK]
    if not leaky:
        return []
    where = ", ".join(f"layer {layer.layer} ({layer.nullspace_energy:.0%})" for layer in leaky)
    return [
        f"AlphaEdit's null space is not null here: at {where} it holds that share of ordinary text's key energy "
        f"(eigenvalues of C below {hparams.nullspace_threshold:g}), so the update also changes what the model does on "
        "such text, and earlier knowledge is less protected than the method assumes. A smaller null-space threshold "
        "protects more but writes less; `python -m editor stats --layers "
        f"{min(layer.layer for layer in layers)}-{max(layer.layer for layer in layers)} --nullspace 0.005,0.01,0.02` "
        "shows the trade-off per layer."
    ]


def out_of_memory_guard(loaded: LoadedModel, count: int):
    """Within the block, an out-of-memory error becomes a LocusError (weights are restored by the code it interrupts)."""
    return out_of_memory_as_error(
        f"editing {count} fact(s)", loaded.device,
        "Edit fewer facts at once (or lower target_batch_requests / key_batch_rows); no weight was changed.",
    )
