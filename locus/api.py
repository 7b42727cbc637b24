"""Locus's public Python API: load a model, predict, trace, average, recommend R, edit, evaluate, undo.

The app and the command lines are clients of the same library; this module is the small, stable face
of it for notebooks and scripts. Every function takes the `LoadedModel` that `load` returns, reports
progress with a tqdm bar (tqdm.auto: a widget in Jupyter) unless `progress=False`, and raises
`LocusError` (a plain message) for anything a user can fix.

Edits made here stay on the model until undone: `edit` applies its batch at once and returns an
`Edit` handle (`undo()`, `save(path)`, or use it as a context manager: leaving the block restores the
weights bit for bit). Later edits are computed on top of the ones still applied.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from core.errors import InputError, LocusError
from core.loading import LoadedModel, from_parts, load_model
from core.predict import TokenProbability, generate_greedy, predict_next_tokens
from core.progress import Progress
from editor.edits.batch import EditBatch
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.evaluation.counterfact import CounterFactRecord, load_records
from editor.evaluation.evaluate import EvaluationResult, evaluate_records
from editor.layers import outlier_flags
from editor.methods.base import EditMethod
from editor.methods.registry import METHOD_NAMES, method_for
from tracer.average import AverageResult, average_traces
from tracer.figures import average_figure, heads_heatmap, recommendation_figure, trace_heatmap
from tracer.problem import TraceResult, TraceSettings
from tracer.recommend import LayerRecommendation, packaged_recommendation, recommend_layers
from tracer.trace import trace as run_trace

__all__ = [
    "METHOD_NAMES", "Edit", "EditRequest", "InputError", "LocusError", "Prediction", "Trace", "average", "edit",
    "evaluate", "generate", "load", "predict", "recommend_layers_for", "trace",
]


# --- loading ----------------------------------------------------------------------------------------------------

def load(
    model: str | torch.nn.Module = "embedded",
    tokenizer: Any = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """A model ready for Locus: "embedded", a local folder, a hub id, or your own loaded transformers model + tokenizer."""
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise InputError("A model object needs its tokenizer: locus.load(model, tokenizer).")
        spec = f"in-memory-{_fingerprint(model, tokenizer)}"  # the caches' key: another model must not share them
        return from_parts(model, tokenizer, spec=spec, name=getattr(model.config, "_name_or_path", None) or None)
    if tokenizer is not None:
        raise InputError("A tokenizer goes with a model object; a model named by a string brings its own.")
    return load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def _fingerprint(model: torch.nn.Module, tokenizer: Any) -> str:
    """16 hex digits naming a model object's weights (names, shapes and a strided sample of each) and tokenizer."""
    digest = hashlib.sha256(f"{type(model).__name__}|{type(tokenizer).__name__}|{len(tokenizer)}".encode())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            flat = parameter.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
            digest.update(f"{name}{tuple(parameter.shape)}{parameter.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


# --- predictions ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """The most probable next tokens after a prompt, best first (prints as a ranked list)."""

    prompt: str
    tokens: list[TokenProbability]

    @property
    def top(self) -> str:
        """The most probable next token, without its leading space."""
        return self.tokens[0].token.strip()

    def __str__(self) -> str:
        lines = [f"after {self.prompt!r}:"]
        lines += [f"  {rank}. {t.token!r:<16} {t.probability:7.2%}" for rank, t in enumerate(self.tokens, 1)]
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython shows the list
        printer.text(str(self))


def predict(lm: LoadedModel, prompt: str, top: int = 5, *, chat: bool = False) -> Prediction:
    """The `top` most probable next tokens after `prompt`, with their probabilities."""
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 100:
        raise InputError(f"top must be a whole number from 1 to 100, got {top!r}.")
    with lm.lock:
        return Prediction(prompt, predict_next_tokens(lm, prompt, top, chat=chat))


def generate(lm: LoadedModel, prompt: str, tokens: int = 20, *, chat: bool = False) -> str:
    """The greedy continuation of `prompt` (`tokens` new tokens at most)."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 1024:
        raise InputError(f"tokens must be a whole number from 1 to 1024, got {tokens!r}.")
    with lm.lock:
        return generate_greedy(lm, prompt, tokens, chat=chat)


# --- tracing ----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _progress(enabled: bool, description: str) -> Iterator[Progress | None]:
    """A `progress(fraction, message)` callback drawing one tqdm.auto bar (None when disabled)."""
    if not enabled:
        yield None
        return
    bar = tqdm(total=1000, desc=description, leave=False, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def report(fraction: float, message: str) -> None:
        bar.n = int(round(min(max(fraction, 0.0), 1.0) * 1000))
        bar.set_postfix_str(message[:60], refresh=False)
        bar.refresh()

    try:
        yield report
    finally:
        bar.close()


@dataclass
class Trace:
    """A finished causal trace: the answer, high/low, the restored scores per kind, figures and exports."""

    result: TraceResult

    @property
    def answer(self) -> str:
        """The token whose score is traced (without its leading space)."""
        return self.result.answer.strip()

    @property
    def scores(self) -> dict[str, list[list[float]]]:
        """{kind: tokens x layers restored scores} (the metric of the trace's settings)."""
        return self.result.scores

    @property
    def high(self) -> float:
        return self.result.high

    @property
    def low(self) -> float:
        return self.result.low

    def figure(self, kind: str = "mlp") -> go.Figure:
        """The tokens x layers heatmap of one kind (heads: heads x layers), a plotly Figure (inline in Jupyter)."""
        if kind == "heads":
            return heads_heatmap(self.result)
        if kind not in self.result.scores:
            raise InputError(f"This trace has no {kind!r} scores; it traced {', '.join(self.result.scores)}.")
        return trace_heatmap(self.result, kind)

    def to_dict(self) -> dict:
        return self.result.to_dict()

    def to_json(self, path: str | Path | None = None) -> str:
        """The trace as JSON text (also written to `path` when given)."""
        text = json.dumps(self.result.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per (kind, token, layer) cell as CSV text (also written to `path` when given)."""
        text = self.result.to_csv()
        if path is not None:
            Path(path).write_text(text)
        return text

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Trace of {self.result.prompt!r} (subject {self.result.subject!r}): answer {self.answer!r}, "
                     f"high {self.high:.4g}, low {self.low:.4g}, kinds {', '.join(self.result.scores)}")


def trace(
    lm: LoadedModel,
    prompt: str,
    subject: str,
    *,
    kinds: Sequence[str] | str = ("hidden", "mlp", "attn"),
    samples: int = 10,
    corruption: str = "noise",
    metric: str = "prob",
    progress: bool = True,
    **settings: Any,
) -> Trace:
    """Causal trace of `subject` in `prompt`: corrupt the subject, restore one (token, layer) cell at a time.

    Further settings are TraceSettings' (noise="3x", window=10, seed=1, answer=None, replacement=None, ...).
    """
    options = TraceSettings(kinds=kinds, samples=samples, corruption=corruption, metric=metric, **settings)
    with _progress(progress, "trace") as report:
        return Trace(run_trace(lm, prompt, subject, options, report))


def average(
    lm: LoadedModel,
    n: int = 20,
    *,
    kinds: Sequence[str] | str = ("mlp",),
    samples: int = 10,
    progress: bool = True,
    use_cache: bool = True,
    **settings: Any,
) -> AverageResult:
    """Average indirect effects over the first `n` known facts the model gets right (cached, resumable)."""
    options = TraceSettings(kinds=kinds, samples=samples, **settings)
    with _progress(progress, "average") as report:
        return average_traces(lm, n, options, report, use_cache=use_cache)


def average_plot(result: AverageResult, kind: str = "mlp") -> go.Figure:
    """The average indirect effect of `kind` by token class, with 95% intervals."""
    return average_figure(result, kind)


def recommend_layers_for(
    lm: LoadedModel, source: AverageResult | Trace | None = None, *, width: int = 5, progress: bool = True
) -> LayerRecommendation:
    """R for MEMIT: the window of `width` layers with the most MLP effect at the last subject token.

    From an average or a trace you give; else the packaged averages of the embedded model, or 20 facts.
    """
    flags = outlier_flags(lm)
    if source is None:
        packaged = packaged_recommendation(lm, width, flags)
        if packaged is not None:
            return packaged
        source = average(lm, 20, progress=progress)
    return recommend_layers(source.result if isinstance(source, Trace) else source, width, flags)


def recommendation_plot(recommendation: LayerRecommendation) -> go.Figure:
    """The curve behind a recommended R, with R marked."""
    return recommendation_figure(recommendation)


# --- editing ----------------------------------------------------------------------------------------------------

class _AppliedEdits:
    """The edits the API keeps on one model: a ledger, applied while nothing else is being computed."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.ledger = EditLedger.for_model(lm)
        self._applied: contextlib.ExitStack | None = None

    @classmethod
    def of(cls, lm: LoadedModel) -> _AppliedEdits:
        found = getattr(lm, "_locus_api_edits", None)
        if found is None:
            found = cls(lm)
            lm._locus_api_edits = found  # one per model object
        return found

    @contextlib.contextmanager
    def lifted(self) -> Iterator[EditLedger]:
        """Within the block the original weights are on the model; the (possibly changed) ledger is applied after."""
        with self.lm.lock:
            if self._applied is not None:
                self._applied.close()
                self._applied = None
            try:
                yield self.ledger
            finally:
                if len(self.ledger):
                    stack = contextlib.ExitStack()
                    stack.enter_context(self.ledger.applied(self.lm))
                    self._applied = stack


@dataclass
class Edit:
    """An applied edit batch: `undo()` takes it off (the weights come back bit for bit), `save(path)` keeps it."""

    lm: LoadedModel
    batch: EditBatch
    method: EditMethod
    _undone: bool = field(default=False, repr=False)

    @property
    def applied(self) -> bool:
        return not self._undone

    def undo(self) -> None:
        """Take this batch off the model (later batches stay; the weights are rebuilt from the originals)."""
        if self._undone:
            return
        edits = _AppliedEdits.of(self.lm)
        with edits.lifted() as ledger:
            ledger.undo(self.batch.batch_id)
        self._undone = True

    def save(self, path: str | Path) -> Path:
        """Write the edits up to and including this one as a Locus ledger (safetensors) for the CLIs and the app."""
        if self._undone:
            raise InputError("This edit was undone; there is nothing of it to save.")
        applied = _AppliedEdits.of(self.lm).ledger
        kept = EditLedger(applied.model, applied.base_hashes)
        for batch in applied.batches:
            kept.batches.append(batch)
            if batch.batch_id == self.batch.batch_id:
                break
        return kept.save(path)

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        state = "undone" if self._undone else "applied"
        printer.text(f"Edit ({state}): {self.batch.describe()}")


def _requests(requests: EditRequest | Sequence[EditRequest | dict]) -> list[EditRequest]:
    items = [requests] if isinstance(requests, (EditRequest, dict)) else list(requests)
    return [item if isinstance(item, EditRequest) else EditRequest.from_dict(item) for item in items]


def edit(
    lm: LoadedModel,
    requests: EditRequest | Sequence[EditRequest | dict],
    method: str = "memit",
    *,
    layers: Sequence[int] | None = None,
    progress: bool = True,
    **settings: Any,
) -> Edit:
    """Rewrite facts with `method` over `layers` (default: the family's R) and apply the edit at once.

    `settings` are the method's own (`python -m editor methods` lists them), e.g. mom2_weight=1500, steps=10.
    Computed on top of the edits still applied; the weights are unchanged if it fails or is interrupted.
    """
    chosen = method_for(lm.layout, method, layers=tuple(layers) if layers is not None else None, **settings)
    wanted = _requests(requests)
    edits = _AppliedEdits.of(lm)
    with edits.lifted() as ledger, _progress(progress, f"{chosen.name} edit") as report:
        batch = chosen.compute(lm, wanted, ledger, progress=report)
        ledger.add(batch, lm)
    return Edit(lm, batch, chosen)


def evaluate(
    lm: LoadedModel,
    records: str | Path | Sequence[CounterFactRecord | dict],
    method: str = "memit",
    *,
    layers: Sequence[int] | None = None,
    mode: str = "batch",
    limit: int | None = None,
    generation: bool = False,
    progress: bool = True,
    **settings: Any,
) -> EvaluationResult:
    """CounterFact-style scores (ES/PS/NS/S) of `records` before and after editing them; the weights end as they began.

    Computed on top of the edits still applied. `result.table()` prints it.
    """
    chosen = method_for(lm.layout, method, layers=tuple(layers) if layers is not None else None, **settings)
    loaded_records = load_records(str(records) if isinstance(records, Path) else records)
    edits = _AppliedEdits.of(lm)
    with edits.lifted() as ledger, _progress(progress, f"evaluate {chosen.name}") as report:
        return evaluate_records(lm, loaded_records, chosen, mode=mode, limit=limit, generation=generation,
                                ledger=ledger if len(ledger) else None, progress=report)


def methods() -> tuple[str, ...]:
    """The names of the editing methods `edit` and `evaluate` take."""
    return METHOD_NAMES


ProgressCallback = Callable[[float, str], None]
