"""MEMIT (SPEC section 3): write many facts at once into the MLPs of a range of layers R; and its family.

`MemitFamily.compute` is MEMIT's algorithm with one step left to each method: `layer_factors`, the solve
that turns one layer's residuals and keys into that layer's update (MEMIT's, AlphaEdit's, ENCORE's). It
returns an `EditBatch` (deltas + diagnostics) and leaves the model's weights exactly as it found them:
the layer loop needs each layer's update in place while it computes the next layer's keys, so the
touched matrices are saved first and put back (bit for bit) on every exit.

Whatever the model's dtype: keys and target vectors are float32, C is float64, and each layer's update
is solved in float64 on that layer's own device (a GPU's, or each device of a device_map="auto" model),
kept as float32 and rounded into the weight's dtype once (`editor.edits.weights.add_delta`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar

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
from editor.methods.base import EditMethod
from editor.methods.keys import request_keys
from editor.methods.prefixes import context_prefixes
from editor.methods.settings import EditSettings, finite_at_least
from editor.methods.targets import TargetResult, compute_targets
from editor.methods.updates import memit_factors
from editor.statistics.covariance import CovarianceSet, layer_covariances


def architecture_warnings(loaded: LoadedModel) -> list[str]:
    """Warnings about where MEMIT's assumptions hold only approximately for this model."""
    if loaded.layout.mlp_output_norm:
        return [
            f"This model normalizes each MLP's output ({loaded.layout.mlp_output_norm}) before adding it to the "
            "residual stream, so MEMIT's linear update only approximates the target vectors here; check the edit's effect."
        ]
    return []


def prepare(loaded: LoadedModel, requests, settings: EditSettings, ledger=None) -> list[EditRequest]:
    """Validated requests for `settings` on this model (InputError before anything runs)."""
    settings.check(loaded.layout)
    requests = validate_requests(requests, loaded.tokenizer, settings.max_prompt_tokens)
    if ledger is not None:
        ledger.check_model(loaded)
    return requests


@dataclass(frozen=True)
class LayerProblem:
    """What one layer's solve is given: residuals D^T (n, d), keys K^T (n, m), C (m, m), earlier K_p K_p^T or None; float64."""

    layer: int
    residual: torch.Tensor
    keys: torch.Tensor
    covariance: torch.Tensor
    earlier_gram: torch.Tensor | None


class MemitFamily(EditMethod):
    """MEMIT's algorithm (targets at l_R, keys per layer, the residual spread over R); subclasses give the solve.

    Hooks a subclass may override: `layer_factors` (the solve, required); `original_statistics` (what the
    method measures on the original weights, before the ledger's edits are applied, e.g. NAS's anchor norm;
    None by default) and `adjust_targets` (the target vectors z changed once they are computed on the edited
    model, before the layer solve, given that statistic; unchanged by default).
    """

    reuses_targets = True

    def layer_factors(self, problem: LayerProblem) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
        """This layer's update as thin factors (left (d, r), right (r, m)), and extra LayerDiagnostics fields."""
        raise NotImplementedError

    def original_statistics(self, loaded: LoadedModel, progress: Progress | None = None) -> object | None:
        """What the method needs from the original (unedited) weights; called before the ledger's edits are applied."""
        return None

    def adjust_targets(
        self, loaded: LoadedModel, requests: list[EditRequest], prefixes: list[str], targets: TargetResult, statistics: object | None
    ) -> tuple[TargetResult, list[str]]:
        """The target vectors the solve should write (on the model with the ledger's edits), and warnings about them."""
        return targets, []

    def compute(
        self,
        loaded: LoadedModel,
        requests: list[EditRequest] | list[dict],
        ledger=None,
        covariances: CovarianceSet | None = None,
        progress: Progress | None = None,
        *,
        targets: TargetResult | None = None,
        engine: str = "cached",
    ) -> EditBatch:
        """Deltas for all `requests` at the settings' layers, computed on top of `ledger`'s edits (if any)."""
        started = time.perf_counter()
        settings = self.settings
        ledger = ledger if ledger is not None and len(ledger) else None
        requests = prepare(loaded, requests, settings, ledger)
        timings: dict[str, float] = {}
        with loaded.lock, out_of_memory_guard(loaded, len(requests)):
            clock = time.perf_counter()
            if covariances is None:
                covariances = layer_covariances(
                    loaded, list(settings.layers), settings.cov_tokens, settings.corpus, stage(progress, 0.0, 0.3)
                )
            timings["covariance"] = time.perf_counter() - clock
            statistics = self.original_statistics(loaded, stage(progress, 0.25, 0.3))  # from the unedited model, like C
            prefixes = context_prefixes(loaded, settings)  # from the unedited model
            context = ledger.applied(loaded) if ledger is not None else nullcontext()
            with context:
                clock = time.perf_counter()
                if targets is None:
                    targets = compute_targets(loaded, requests, settings, prefixes, engine=engine, progress=stage(progress, 0.3, 0.85))
                timings["targets"] = time.perf_counter() - clock
                if not torch.isfinite(targets.targets).all():
                    raise LocusError("The target vectors contain NaN or Inf; nothing was changed. Try other targets or fewer steps.")
                targets, target_warnings = self.adjust_targets(loaded, requests, prefixes, targets, statistics)
                clock = time.perf_counter()
                # the sequential term of AlphaEdit and ENCORE: K_p K_p^T of every earlier edit in the ledger, per layer
                previous = ledger.key_grams(settings.layers) if (ledger is not None and self.uses_earlier_keys) else {}
                deltas, layer_diagnostics, keys, final_residual = self.layer_updates(
                    loaded, requests, prefixes, covariances, targets, previous, stage(progress, 0.85, 1.0)
                )
                timings["layers"] = time.perf_counter() - clock
        if progress is not None:
            progress(1.0, f"computed {len(requests)} edit(s)")
        return EditBatch(
            requests=requests,
            method=self.name,
            layers=list(settings.layers),
            deltas=deltas,
            model=model_key(loaded),
            settings=self.to_dict(),
            request_diagnostics=targets.diagnostics,
            layer_diagnostics=layer_diagnostics,
            warnings=architecture_warnings(loaded) + covariances.warnings()
            + weak_update_warnings(layer_diagnostics, final_residual, self.weak_update_remedy())
            + self.extra_warnings(layer_diagnostics) + target_warnings,
            final_residual_norm=final_residual,
            keys=keys,
            seconds=time.perf_counter() - started,
            timings=timings,
        )

    def layer_updates(
        self,
        loaded: LoadedModel,
        requests: list[EditRequest],
        prefixes: list[str],
        covariances: CovarianceSet,
        targets: TargetResult,
        previous_grams: dict[int, torch.Tensor] | None = None,
        progress: Progress | None = None,
    ) -> tuple[dict[int, LayerDelta], list[LayerDiagnostics], dict[int, torch.Tensor], float]:
        """SPEC 3 step 3: for each layer in R (increasing), spread the remaining residual and update W_l.

        The updates stay applied while later layers' keys are computed, and are undone before returning.
        Returns the deltas (compact: each the product of two thin factors), per-layer diagnostics, the keys
        (n, m) per layer, and the final mean residual ||z - h|| at l_R. `previous_grams` (K_p K_p^T of earlier
        edits, (m, m) per layer) reach the solve of the methods that keep earlier keys.
        """
        settings = self.settings
        layers = list(settings.layers)
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
                keyset = request_keys(loaded, requests, prefixes, [layer], targets.layer, settings.key_batch_rows)
                weight = projection_weight(loaded, layer)
                device = weight.device  # the solve runs where the layer lives
                keys = keyset.keys[layer].to(device).double()
                residual = (z.to(device) - keyset.hidden.to(device).double()) / (len(layers) - index)
                earlier = (previous_grams or {}).get(layer)
                problem = LayerProblem(layer, residual, keys, covariances.covariances[layer].to(device),
                                       earlier.to(device) if earlier is not None else None)
                factors, extra = self.layer_factors(problem)
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
                        **extra,
                    )
                )
            final = request_keys(loaded, requests, prefixes, [], targets.layer, settings.key_batch_rows)
            final_residual = float((z - final.hidden.double()).norm(dim=-1).mean())
        finally:
            release_weights(loaded, saved)
        if progress is not None:
            progress(1.0, "layers updated")
        return deltas, diagnostics, all_keys, final_residual


@dataclass(frozen=True)
class MemitSettings(EditSettings):
    """MEMIT's settings: the shared ones and lambda, the weight of C in the solve."""

    mom2_weight: float = 15000.0  # lambda in Delta = D K^T (lambda C + K K^T)^-1

    # lambda: the published values for GPT-J and GPT-2 XL; for the llama family the value a sweep measured on
    # SmolLM2-135M (84 held-out dev-set records in one batch, unedited NS 90.7: ES 97.6 / PS 87.7 / NS 86.0 at
    # 1,500; ES 97.6 / PS 89.5 / NS 87.1 at 500, within one record of it; ES 51.2 / PS 41.7 / NS 88.7 at the
    # published 15,000, whose updates write only a fifth of the change into the weights). Larger Llama models
    # may want a larger lambda: sweep with `python -m editor sweep --lambda ...`.
    FAMILY_DEFAULTS: ClassVar[dict[str, dict]] = {
        "llama": dict(mom2_weight=1500.0),
        "gptj": dict(mom2_weight=15000.0),
        "gpt2": dict(mom2_weight=20000.0),
    }

    def check(self, layout=None) -> MemitSettings:
        super().check(layout)
        finite_at_least(self.mom2_weight, 0, "lambda")
        return self


class Memit(MemitFamily):
    """MEMIT: Delta = D K^T (lambda C + K K^T)^-1 at each layer of R (Meng et al., ICLR 2023)."""

    name = "memit"
    title = "MEMIT"
    label = "MEMIT (many facts, layers R)"
    Settings = MemitSettings

    def layer_factors(self, problem: LayerProblem) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
        return memit_factors(problem.residual, problem.keys, problem.covariance, self.settings.mom2_weight), {}

    def describe(self) -> str:
        return f"lambda {self.settings.mom2_weight:g}"

    def weak_update_remedy(self) -> str:
        return f"a smaller lambda (now {self.settings.mom2_weight:g}) or more layers"


def weak_update_warnings(layers: list[LayerDiagnostics], final_residual: float, remedy: str) -> list[str]:
    """A warning when the layers wrote less than half of the change z - h into the weights (lambda too large)."""
    if not layers or layers[0].residual_norm <= 0:
        return []
    written = 1.0 - final_residual / layers[0].residual_norm
    if written >= 0.5:
        return []
    return [
        f"The weight updates wrote only {max(written, 0.0):.0%} of the change the edit needs (mean ||z - h|| went from "
        f"{layers[0].residual_norm:.1f} to {final_residual:.1f}); the edit may not take. Try {remedy}."
    ]


def out_of_memory_guard(loaded: LoadedModel, count: int):
    """Within the block, an out-of-memory error becomes a LocusError (weights are restored by the code it interrupts)."""
    return out_of_memory_as_error(
        f"editing {count} fact(s)", loaded.device,
        "Edit fewer facts at once (or lower target_batch_requests / key_batch_rows); no weight was changed.",
    )
