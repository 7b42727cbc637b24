"""UltraEdit (Gu et al., "UltraEdit: Training-, Subject-, and Memory-Free Lifelong Editing in Language Models",
arXiv 2505.14679, TMLR 2026): a closed-form update from one forward and backward pass, no optimisation loop.

For a batch ("turn") of requests, the edited matrices are the MLP output projections W_l (d, m) of the layers R.
One forward and backward pass per group of `edits_per_pass` requests, on the model with the ledger's edits,
over prompt + new object (teacher-forced, no context prefixes, no subject position), with the loss the mean
next-token cross-entropy over the group's answer tokens. At every answer position (the positions whose logits
predict a token of the new object) and every layer l of R it records the key k (m,), the projection's input,
and g = dL/dy (d,), the gradient of the loss with respect to the projection's output y = W k. Then:

  lifelong normalisation: running per-dimension mean mu and standard deviation sigma of the features
      z = [k || g] (m + d), pooled over the layers of R (one normaliser for matrices of one shape, as the public
      code keeps it) and over every UltraEdit batch of the ledger plus this one (Chan's parallel update:
      mu <- mu + n/(N+n) delta, s2 <- s2 + n Var(z) + N n/(N+n) delta^2, N <- N + n, with Var the batch's
      population variance); sigma = sqrt(s2 / (N - 1 + eps)); z_hat = (z - mu) / (sigma + eps), eps = 2^-23;
  pseudo-values, one gradient step in normalised space: v = -eta ||k_hat||^2 g_hat (d,) per answer token;
  the update, a ridge regression of the batch's raw keys K (n, m) onto V (n, d):
      Delta_l = V^T K (K^T K + ridge I)^-1 = V^T (K K^T + ridge I)^-1 K,  W_l += Delta_l,
  every layer of R from the same pass (keys and gradients of the model before this batch).

Defaults are the paper's (config/editor/ultraedit.yaml and run.sh of github.com/XiaojieGu/UltraEdit, commit
0beb222): eta = 1e-6 (`step_size`, the code's "lr"), ridge = 1 (its identity), 10 requests per pass (its
dataset.batch_size), answer tokens ("token: ans"). The paper edits down_proj (Mistral-7B: layers 29-30,
Phi-4: 30-38), fc_out (GPT-J: 18-26) or gate_proj/up_proj (Llama-3, Qwen2.5); Locus edits the output
projection of the layers R, as every Locus method does. eta = 1e-6 was chosen for 7B-27B models: ||v|| grows
with eta ||k_hat||^2 ~ eta m and sqrt(d), and on the embedded SmolLM2-135M (m = 1536, d = 576) it writes too
little to change a prediction; docs/LIFELONG.md has the step sizes measured there (--step-size sets it).

The per-ledger state is derived from the ledger's batches, so undo, reset and export/import keep it exactly:
the key half of the statistics comes from each UltraEdit batch's stored keys (every answer token's key, per
layer), the gradient half from the batch's own summary (rows, mean and s2 of its gradients, float64), which
it carries in its settings under "normalizer" (the ledger file keeps it). Undoing a batch removes its
features from the statistics; computing it again on the same ledger gives the same bits.

Settings: UltraEditSettings subclasses EditSettings so that every caller passing the shared settings (the app's
Edit tab sends steps, lr, kl_factor and clamp_norm with every method; --set; the sequential runs' cov_tokens)
works; UltraEdit uses layers and max_prompt_tokens of them and ignores the target optimisation
(lr, steps, loss_stop, early_stop_steps, kl_*, weight_decay, clamp_norm, first_step, prefix_*, seed,
target_batch_*, key_batch_rows) and the covariance (cov_tokens, corpus): it has neither (`unused_settings`).
"""

from __future__ import annotations

import base64
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from core.errors import InputError, LocusError
from core.facts import model_key
from core.hooks import forward_hooks, input_tensor, output_tensor, replace_output_tensor, sequence_view
from core.loading import LoadedModel
from core.progress import Progress, stage
from editor.edits.batch import EditBatch, LayerDiagnostics, RequestDiagnostics
from editor.edits.deltas import LayerDelta
from editor.edits.requests import EditRequest
from editor.edits.weights import add_delta, projection_weight, restore, snapshot
from editor.methods.base import EditMethod
from editor.methods.memit import out_of_memory_guard, prepare
from editor.methods.settings import EditSettings, bounded, finite_at_least
from editor.passes.forward import pad_id, pad_right
from editor.passes.rows import PromptRow, target_rows
from editor.statistics.covariance import CovarianceSet

EPSILON = float(torch.finfo(torch.float32).eps)  # the public code's eps (its features are float32)
SUMMARY_KEY = "normalizer"  # where a batch's settings carry its gradient statistics


@dataclass(frozen=True)
class UltraEditSettings(EditSettings):
    """UltraEdit's settings: the step size, the ridge term and the requests per pass (see the module docstring)."""

    step_size: float = bounded(1e-6, 0.0, 1e3)  # eta: v = -eta ||k_hat||^2 g_hat (the paper's "lr")
    ridge: float = bounded(1.0, 0.0, 1e12)  # Delta = V^T K (K^T K + ridge I)^-1
    edits_per_pass: int = bounded(10, 1, 1024)  # requests per forward/backward pass; the loss is the mean over their answer tokens

    def check(self, layout=None) -> UltraEditSettings:
        super().check(layout)
        finite_at_least(self.step_size, 0, "UltraEdit's step size", strict=True)
        finite_at_least(self.ridge, 0, "UltraEdit's ridge term", strict=True)
        if self.edits_per_pass < 1:
            raise InputError(f"UltraEdit's edits_per_pass must be at least 1, got {self.edits_per_pass}.")
        return self


# --- lifelong normalisation -----------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureStatistics:
    """Running per-dimension statistics of feature rows: count N, mean (w,) and s2 = sum of squared deviations (w,)."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor) -> FeatureStatistics:
        """The statistics of rows (n, w), in float64."""
        rows = rows.double()
        mean = rows.mean(0)
        return cls(rows.shape[0], mean, ((rows - mean) ** 2).sum(0))

    @classmethod
    def empty(cls, width: int) -> FeatureStatistics:
        zeros = torch.zeros(width, dtype=torch.float64)
        return cls(0, zeros, zeros)

    def merged(self, other: FeatureStatistics) -> FeatureStatistics:
        """These statistics updated with a batch's (Chan's parallel update; the paper's lifelong normalisation)."""
        if other.count == 0:
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        return FeatureStatistics(total, mean, m2)

    def joined(self, other: FeatureStatistics) -> FeatureStatistics:
        """Side by side: the statistics of [these features || other's] over the same rows."""
        if self.count != other.count:
            raise LocusError(f"UltraEdit's feature statistics disagree on their rows ({self.count} vs {other.count}).")
        return FeatureStatistics(self.count, torch.cat([self.mean, other.mean]), torch.cat([self.m2, other.m2]))

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / (self.count - 1 + EPSILON)).sqrt()

    def normalize(self, rows: torch.Tensor) -> torch.Tensor:
        """(rows - mu) / (sigma + eps), float64."""
        return (rows.double() - self.mean.to(rows.device)) / (self.std.to(rows.device) + EPSILON)

    def to_dict(self) -> dict:
        """JSON-safe and exact (the float64 bytes in base64)."""
        return {"rows": self.count, "mean": _encode(self.mean), "m2": _encode(self.m2)}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureStatistics:
        return cls(int(data["rows"]), _decode(data["mean"]), _decode(data["m2"]))


def _encode(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.double().contiguous().cpu().numpy().astype("<f8").tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.float64).clone()


def key_statistics(keys: dict[int, torch.Tensor]) -> FeatureStatistics:
    """Statistics of the keys of all layers of a batch, pooled (rows of every layer)."""
    return FeatureStatistics.of(torch.cat([keys[layer] for layer in sorted(keys)]))


def ledger_statistics(ledger, keys_width: int, gradient_width: int) -> FeatureStatistics:
    """The lifelong normaliser's statistics of [k || g] over the ledger's UltraEdit batches, merged in their order."""
    total = FeatureStatistics.empty(keys_width + gradient_width)
    for batch in ledger.batches if ledger is not None else []:
        summary = batch.settings.get(SUMMARY_KEY) if isinstance(batch.settings, dict) else None
        if summary is None:
            continue  # another method's batch: not a feature of this normaliser
        if not batch.keys:
            raise LocusError(f"The ledger's UltraEdit batch {batch.batch_id} has no keys, so its normalisation "
                             "statistics cannot be derived; the ledger is incomplete.")
        total = total.merged(key_statistics(batch.keys).joined(FeatureStatistics.from_dict(summary)))
    return total


# --- the pass -------------------------------------------------------------------------------------


@dataclass
class AnswerFeatures:
    """Per layer the keys (n, m) and output gradients (n, d) at every answer token, float32; n = answer tokens."""

    keys: dict[int, torch.Tensor]
    gradients: dict[int, torch.Tensor]
    owners: torch.Tensor  # (n,) the request of each answer token
    nll: torch.Tensor  # (requests,) mean NLL of each request's new object, before the edit


def answer_rows(loaded: LoadedModel, requests: list[EditRequest]) -> list[PromptRow]:
    """Prompt + new object (teacher-forced), one row per request, no context prefix."""
    return [row for row in target_rows(loaded.tokenizer, requests, [""], "{}") if not row.is_kl]


def _run_rows(loaded: LoadedModel, rows: list[PromptRow], hooks: dict, with_kwargs: bool
              ) -> tuple[torch.Tensor, list[torch.Tensor], list[bool]]:
    """Padded ids, each row's target-token log-probabilities (tokens,), and whether the target leads at each position."""
    ids, mask = pad_right([list(row.ids) for row in rows], pad_id(loaded.tokenizer), loaded.device)
    with forward_hooks(loaded.model, hooks, with_kwargs=with_kwargs):
        logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    taken, leads = [], []
    for index, row in enumerate(rows):
        positions = torch.tensor(row.target_positions, device=logits.device)
        targets = torch.tensor(row.target_ids, device=logits.device)
        log_probs = torch.log_softmax(logits[index, positions].float(), dim=-1)
        taken.append(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
        leads.append(bool((log_probs.detach().argmax(-1) == targets).all()))
    return ids, taken, leads


def answer_features(loaded: LoadedModel, requests: list[EditRequest], layers: list[int], per_pass: int,
                    progress: Progress | None = None) -> AnswerFeatures:
    """Keys and loss gradients at the edited projections, one forward and backward pass per `per_pass` requests.

    The gradient with respect to each projection's output is read from a zero tensor added to that output,
    so every path from it to the loss (through the later layers' MLPs too) counts, and no weight needs a gradient.
    """
    layout = loaded.layout
    rows = answer_rows(loaded, requests)
    names = {layer: layout.mlp_output_projection(layer) for layer in layers}
    keys = {layer: [] for layer in layers}
    gradients = {layer: [] for layer in layers}
    owners, nll = [], torch.zeros(len(requests))
    inputs: dict[int, torch.Tensor] = {}
    leaves: dict[int, torch.Tensor] = {}

    def hook_for(layer: int):
        def hook(module, args, kwargs, output):
            inputs[layer] = input_tensor(args, kwargs).detach()
            tensor = output_tensor(output)
            leaves[layer] = torch.zeros_like(tensor, requires_grad=True)
            return replace_output_tensor(output, tensor + leaves[layer])
        return hook

    hooks = {names[layer]: hook_for(layer) for layer in layers}
    for start in range(0, len(rows), per_pass):
        group = rows[start : start + per_pass]
        with torch.enable_grad():
            ids, taken, _ = _run_rows(loaded, group, hooks, with_kwargs=True)
            loss = -torch.cat(taken).mean()  # the mean over the group's answer tokens
            loss.backward()
        batch, width = ids.shape
        where_rows = torch.tensor([i for i, row in enumerate(group) for _ in row.target_positions])
        where_positions = torch.tensor([p for row in group for p in row.target_positions])
        for layer in layers:
            key = sequence_view(inputs[layer], batch, width)
            grad = sequence_view(leaves[layer].grad, batch, width)
            keys[layer].append(key[where_rows.to(key.device), where_positions.to(key.device)].float().cpu())
            gradients[layer].append(grad[where_rows.to(grad.device), where_positions.to(grad.device)].float().cpu())
        for row, token_log_probs in zip(group, taken):
            nll[row.request] = -float(token_log_probs.detach().mean())
        owners += [row.request for row in group for _ in row.target_positions]
        if progress is not None:
            progress(min(start + per_pass, len(rows)) / len(rows), f"UltraEdit: gradients of {min(start + per_pass, len(rows))} of {len(rows)} request(s)")
    return AnswerFeatures({layer: torch.cat(parts) for layer, parts in keys.items()},
                          {layer: torch.cat(parts) for layer, parts in gradients.items()}, torch.tensor(owners), nll)


# --- the update -----------------------------------------------------------------------------------


def pseudo_values(keys: torch.Tensor, gradients: torch.Tensor, statistics: FeatureStatistics, step_size: float) -> torch.Tensor:
    """v = -eta ||k_hat||^2 g_hat per row (n, d), float64, for keys (n, m) and gradients (n, d)."""
    normalized = statistics.normalize(torch.cat([keys.double(), gradients.double()], dim=-1))
    keys_hat, gradients_hat = normalized.split([keys.shape[1], gradients.shape[1]], dim=-1)
    return -step_size * (keys_hat**2).sum(-1, keepdim=True) * gradients_hat


def ridge_factors(keys: torch.Tensor, values: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Delta = V^T K (K^T K + ridge I)^-1 (d, m) as thin factors V^T (K K^T + ridge I)^-1 (d, n) and K (n, m); float64."""
    keys, values = keys.double(), values.double()
    rows, width = keys.shape
    if rows <= width:
        system = keys @ keys.T + ridge * torch.eye(rows, dtype=torch.float64, device=keys.device)
        return torch.linalg.solve(system, values).T, keys
    system = keys.T @ keys + ridge * torch.eye(width, dtype=torch.float64, device=keys.device)
    return torch.linalg.solve(system, keys.T @ values).T, torch.eye(width, dtype=torch.float64, device=keys.device)


class UltraEdit(EditMethod):
    """Delta_l = V^T K (K^T K + I)^-1, V = -eta ||k_hat||^2 g_hat from one forward/backward pass (Gu et al. 2025)."""

    name = "ultraedit"
    title = "UltraEdit"
    label = "UltraEdit (one closed-form step from a gradient, lifelong normalisation)"
    Settings = UltraEditSettings
    unused_settings = ("lr", "steps", "loss_stop", "early_stop_steps", "kl_factor", "kl_prompt", "weight_decay", "clamp_norm",
                       "first_step", "prefix_starts", "prefix_tokens", "prefix_sampling", "seed", "target_batch_requests",
                       "target_batch_tokens", "key_batch_rows", "cov_tokens", "corpus")
    uses_covariance = False

    def compute(
        self,
        loaded: LoadedModel,
        requests: list[EditRequest] | list[dict],
        ledger=None,
        covariances: CovarianceSet | None = None,
        progress: Progress | None = None,
    ) -> EditBatch:
        """The batch's closed-form update at every layer of R, on top of `ledger`'s edits; weights left unchanged."""
        started = time.perf_counter()
        settings = self.settings
        ledger = ledger if ledger is not None and len(ledger) else None
        requests = prepare(loaded, requests, settings, ledger)
        layers = list(settings.layers)
        timings: dict[str, float] = {}
        with loaded.lock, out_of_memory_guard(loaded, len(requests)):
            context = ledger.applied(loaded) if ledger is not None else nullcontext()
            with context:
                clock = time.perf_counter()
                features = answer_features(loaded, requests, layers, settings.edits_per_pass, stage(progress, 0.0, 0.8))
                timings["gradients"] = time.perf_counter() - clock
                clock = time.perf_counter()
                gradient_rows = torch.cat([features.gradients[layer] for layer in layers])
                own = FeatureStatistics.of(gradient_rows)
                own = FeatureStatistics.from_dict(own.to_dict())  # exactly what the batch stores
                statistics = ledger_statistics(ledger, loaded.layout.mlp_size, loaded.layout.hidden_size).merged(
                    key_statistics(features.keys).joined(own))
                deltas, diagnostics = self._layer_updates(loaded, features, statistics)
                timings["solve"] = time.perf_counter() - clock
                clock = time.perf_counter()
                request_diagnostics = self._after(loaded, requests, features, deltas)
                timings["check"] = time.perf_counter() - clock
        if progress is not None:
            progress(1.0, f"computed {len(requests)} edit(s)")
        return EditBatch(
            requests=requests,
            method=self.name,
            layers=layers,
            deltas=deltas,
            model=model_key(loaded),
            settings={**self.to_dict(), SUMMARY_KEY: own.to_dict()},
            request_diagnostics=request_diagnostics,
            layer_diagnostics=diagnostics,
            keys=features.keys,
            seconds=time.perf_counter() - started,
            timings=timings,
        )

    def _layer_updates(self, loaded: LoadedModel, features: AnswerFeatures, statistics: FeatureStatistics
                       ) -> tuple[dict[int, LayerDelta], list[LayerDiagnostics]]:
        """Every layer's Delta from the pass's keys and gradients (none depends on another's update)."""
        deltas, diagnostics = {}, []
        for layer in self.settings.layers:
            weight = projection_weight(loaded, layer)
            keys = features.keys[layer].to(weight.device)
            values = pseudo_values(keys, features.gradients[layer].to(weight.device), statistics, self.settings.step_size)
            update = LayerDelta.from_factors(*ridge_factors(keys, values, self.settings.ridge))
            delta = update.dense()
            if not torch.isfinite(delta).all():
                raise LocusError(f"UltraEdit's update for layer {layer} contains NaN or Inf; no weight was changed.")
            weight_norm = float(weight.double().norm())
            asked = float(values.norm(dim=-1).mean())
            deltas[layer] = update
            diagnostics.append(LayerDiagnostics(
                layer=layer, update_norm=float(delta.norm()), weight_norm=weight_norm,
                relative_update=float(delta.norm()) / max(weight_norm, 1e-12), residual_norm=asked, residual_share=asked,
                key_norm=float(keys.double().norm(dim=-1).mean()),
            ))
        return deltas, diagnostics

    def _after(self, loaded: LoadedModel, requests: list[EditRequest], features: AnswerFeatures,
               deltas: dict[int, LayerDelta]) -> list[RequestDiagnostics]:
        """Per request: the new object's NLL before and after the update (one forward pass per group, no gradient)."""
        saved = snapshot(loaded, list(deltas))
        after = torch.zeros(len(requests))
        leads = [True] * len(requests)
        rows = answer_rows(loaded, requests)
        try:
            for layer, delta in deltas.items():
                add_delta(projection_weight(loaded, layer), delta.dense())
            with torch.no_grad():
                for start in range(0, len(rows), self.settings.edits_per_pass):
                    group = rows[start : start + self.settings.edits_per_pass]
                    _, taken, group_leads = _run_rows(loaded, group, {}, with_kwargs=False)
                    for row, token_log_probs, lead in zip(group, taken, group_leads):
                        after[row.request] = -float(token_log_probs.mean())
                        leads[row.request] = lead
        finally:
            restore(loaded, saved)
        return [
            RequestDiagnostics(request.subject, request.target_new, losses=[float(features.nll[i]), float(after[i])],
                               nll=[float(features.nll[i]), float(after[i])], steps=1, converged=leads[i],
                               final_probability=math.exp(-float(after[i])))
            for i, request in enumerate(requests)
        ]

    def describe(self) -> str:
        return f"step {self.settings.step_size:g}, ridge {self.settings.ridge:g}"

    def weak_update_remedy(self) -> str:
        return f"a larger step size (--step-size, now {self.settings.step_size:g}) or more layers"

