"""Averaged traces over facts the model knows (SPEC section 1): AIE and ATE by token class, 95% intervals.

Each fact's trace is appended to a JSON-lines cache keyed by model and settings as soon as it
finishes, so a restart continues where it stopped. Facts are traced here or, given a pool, on its
workers (`trace_fact_record` is the per-fact work); either way the records are aggregated in the
order of the chosen facts, so the numbers do not depend on who traced what. For the embedded model,
the MLP-only traces of the first known facts ship in assets/ (rebuild: see `packaged_average_path`)
and serve as a read-only cache below the user's, so a fresh clone starts from averages. Aggregation
is a plain function of those records. Token classes follow ROME's averages: a class with several
tokens (middle subject tokens, further tokens) contributes every token as one sample; a token can be
in two classes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from core.distributed import WorkerPool
from core.embedded import EMBEDDED_SPEC, cache_root
from core.errors import InputError
from core.facts import KnownFact, facts_model_knows, model_key
from core.kinds import HEADS, KINDS
from core.loading import LoadedModel
from core.paths import ASSETS
from core.progress import Progress, safe_point
from tracer.problem import TOKEN_CLASSES, TraceResult, TraceSettings, token_classes
from tracer.trace import trace, trace_stream

Z_95 = 1.96
AGGREGATE_SECONDS = 1.0  # a running average is recomputed at most this often (and after the last fact)
PACKAGED_KINDS = ("mlp",)  # the packaged averages: MLP-only traces with otherwise default settings


@dataclass
class ClassCurve:
    """Mean indirect effect of one token class over layers, with the 95% half-width and sample count."""

    token_class: str
    mean: list[float]
    half_width: list[float]
    count: int

    def to_dict(self) -> dict:
        return {"token_class": self.token_class, "mean": _nan_to_none(self.mean), "half_width": _nan_to_none(self.half_width), "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> ClassCurve:
        return cls(data["token_class"], _none_to_nan(data["mean"]), _none_to_nan(data["half_width"]), int(data["count"]))


@dataclass
class AverageResult:
    """AIE {kind: {token class: curve over layers}} and ATE over `n_facts` facts, with 95% intervals."""

    model: str
    num_layers: int
    settings: TraceSettings
    n_facts: int
    effects: dict[str, dict[str, ClassCurve]]
    total_effect: float
    total_effect_half_width: float
    high_mean: float
    low_mean: float
    known_ids: list[int] = field(default_factory=list)
    requested: int = 0
    elapsed: float = 0.0

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in KINDS if kind in self.effects)

    def curve(self, kind: str, token_class: str) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """(mean, lower, upper) AIE over layers for one kind and token class."""
        curve = self.effects[kind][token_class]
        mean, half = numpy.asarray(curve.mean, dtype=float), numpy.asarray(curve.half_width, dtype=float)
        return mean, mean - half, mean + half

    def best(self, kind: str) -> tuple[str, int, float]:
        """(token class, layer, AIE) of the largest average indirect effect of `kind`."""
        best = ("", -1, -math.inf)
        for token_class, curve in self.effects[kind].items():
            values = numpy.asarray(curve.mean, dtype=float)
            if curve.count and numpy.isfinite(values).any():
                layer = int(numpy.nanargmax(values))
                if values[layer] > best[2]:
                    best = (token_class, layer, float(values[layer]))
        return best

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "num_layers": self.num_layers,
            "settings": self.settings.to_dict(),
            "n_facts": self.n_facts,
            "requested": self.requested,
            "total_effect": self.total_effect,
            "total_effect_half_width": self.total_effect_half_width,
            "high_mean": self.high_mean,
            "low_mean": self.low_mean,
            "effects": {kind: {name: curve.to_dict() for name, curve in curves.items()} for kind, curves in self.effects.items()},
            "known_ids": list(self.known_ids),
            "elapsed": self.elapsed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> AverageResult:
        return cls(
            model=data["model"],
            num_layers=int(data["num_layers"]),
            settings=TraceSettings.from_dict(data["settings"]),
            n_facts=int(data["n_facts"]),
            effects={kind: {name: ClassCurve.from_dict(curve) for name, curve in curves.items()} for kind, curves in data["effects"].items()},
            total_effect=float(data["total_effect"]),
            total_effect_half_width=float(data["total_effect_half_width"]),
            high_mean=float(data["high_mean"]),
            low_mean=float(data["low_mean"]),
            known_ids=list(data.get("known_ids", [])),
            requested=int(data.get("requested", 0)),
            elapsed=float(data.get("elapsed", 0.0)),
        )


@dataclass
class AverageUpdate:
    """One step of a running average: the aggregate so far and the share of facts done."""

    result: AverageResult
    fraction: float
    done: bool = False
    message: str = ""


def _nan_to_none(values) -> list:
    return [None if v is None or math.isnan(v) else float(v) for v in values]


def _none_to_nan(values) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


# --- math --------------------------------------------------------------------------------------

def mean_and_half_width(samples: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Mean over axis 0 and 1.96 * std / sqrt(n) (sample std; 0 for n = 1): (n, ...) -> (...), (...)."""
    count = samples.shape[0]
    if count == 0:
        shape = samples.shape[1:]
        return numpy.full(shape, math.nan), numpy.full(shape, math.nan)
    mean = samples.mean(axis=0)
    if count == 1:
        return mean, numpy.zeros_like(mean)
    return mean, Z_95 * samples.std(axis=0, ddof=1) / math.sqrt(count)


def class_samples(records: list[dict], kind: str, num_layers: int) -> dict[str, numpy.ndarray]:
    """{token class: (samples, L) indirect effects}, one sample per fact and token of the class."""
    gathered: dict[str, list] = {name: [] for name in TOKEN_CLASSES}
    for record in records:
        scores = numpy.asarray(record["scores"][kind], dtype=float)
        effects = scores - record["low"]
        for token, names in enumerate(token_classes(scores.shape[0], tuple(record["subject_range"]))):
            for name in names:
                gathered[name].append(effects[token])
    return {name: numpy.asarray(rows, dtype=float).reshape(-1, num_layers) for name, rows in gathered.items()}


def aggregate(records: list[dict], model: str, num_layers: int, settings: TraceSettings, requested: int = 0) -> AverageResult:
    """AverageResult from per-fact records {known_id, subject_range, high, low, scores}."""
    effects = {}
    for kind in settings.kinds:
        curves = {}
        for name, samples in class_samples(records, kind, num_layers).items():
            mean, half = mean_and_half_width(samples)
            curves[name] = ClassCurve(name, [float(v) for v in mean], [float(v) for v in half], int(len(samples)))
        effects[kind] = curves
    totals = numpy.asarray([r["high"] - r["low"] for r in records], dtype=float)
    total, total_half = mean_and_half_width(totals)
    return AverageResult(
        model=model,
        num_layers=num_layers,
        settings=settings,
        n_facts=len(records),
        effects=effects,
        total_effect=float(total),
        total_effect_half_width=float(total_half),
        high_mean=float(numpy.mean([r["high"] for r in records])) if records else math.nan,
        low_mean=float(numpy.mean([r["low"] for r in records])) if records else math.nan,
        known_ids=[int(r["known_id"]) for r in records],
        requested=requested,
    )


# --- the resumable cache ----------------------------------------------------------------------

UNKEYED = ("engine", "answer", "occurrence", "counterfactual_answer")  # the same numbers, or not used by averages
NEWER_DEFAULTS = {"corruption": "noise", "replacement": None, "metric": "prob", "head_positions": "last"}


def settings_key(settings: TraceSettings) -> str:
    """Short hash of everything that changes a fact's trace (not the engine: both give the same numbers).

    Settings added later are left out at their defaults, so the caches of ROME's noise-and-probability
    traces keep their names (and the averages packaged in assets/ stay valid).
    """
    relevant = {
        name: value for name, value in settings.to_dict().items()
        if name not in UNKEYED and not (name in NEWER_DEFAULTS and value == NEWER_DEFAULTS[name])
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def average_cache_path(loaded: LoadedModel, settings: TraceSettings) -> Path:
    return cache_root() / "averages" / model_key(loaded) / f"traces-{settings_key(settings)}.jsonl"


def packaged_average_path(loaded: LoadedModel, settings: TraceSettings | None = None) -> Path | None:
    """The traces shipped in assets/ for these settings (embedded model only; None otherwise).

    Rebuild: `python -m tracer average --kinds mlp --n N --package` (`write_packaged`).
    """
    if loaded.spec != EMBEDDED_SPEC:
        return None
    settings = settings or TraceSettings(kinds=PACKAGED_KINDS)
    return ASSETS / "averages" / f"{model_key(loaded)}-traces-{settings_key(settings)}.jsonl"


def cached_records(loaded: LoadedModel, settings: TraceSettings) -> dict[int, dict]:
    """Finished fact records by known_id: the packaged ones (if any) under the user's cache."""
    packaged = packaged_average_path(loaded, settings)
    records = read_records(packaged) if packaged is not None else {}
    records.update(read_records(average_cache_path(loaded, settings)))
    return records


def write_packaged(loaded: LoadedModel, result: AverageResult) -> Path:
    """Write the traces behind `result` (in its facts' order) to assets/ as the packaged averages; returns the path."""
    path = packaged_average_path(loaded, result.settings)
    if path is None:
        raise InputError("Only the embedded model's averages ship in assets/.")
    if result.settings.kinds != PACKAGED_KINDS or settings_key(result.settings) != settings_key(TraceSettings(kinds=PACKAGED_KINDS)):
        raise InputError("The packaged averages are MLP-only traces with the default settings: run average --kinds mlp alone.")
    records = cached_records(loaded, result.settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(records[known_id]) + "\n" for known_id in result.known_ids))
    temporary.replace(path)
    return path


def packaged_average(loaded: LoadedModel, settings: TraceSettings | None = None) -> AverageResult | None:
    """The averages shipped in assets/ (MLP-only traces of the first known facts of the embedded model), instantly.

    None for other models or settings without packaged traces. The Choose R tab can start from this.
    """
    settings = settings or TraceSettings(kinds=PACKAGED_KINDS)
    path = packaged_average_path(loaded, settings)
    records = list(read_records(path).values()) if path is not None else []
    if not records:
        return None
    return aggregate(records, loaded.name, loaded.layout.num_layers, settings, requested=len(records))


def read_records(path: Path) -> dict[int, dict]:
    """Finished fact records of a cache file by known_id (a torn last line is ignored)."""
    records: dict[int, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            records[int(record["known_id"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return records


def append_record(path: Path, record: dict) -> None:
    """Append one fact record as a JSON line (flushed, so a crash loses at most the fact in progress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def fact_record(fact: KnownFact, result: TraceResult) -> dict:
    return {
        "known_id": fact.known_id,
        "subject": fact.subject,
        "prompt": fact.prompt,
        "attribute": fact.attribute,
        "answer": result.answer,
        "tokens": result.tokens,
        "subject_range": list(result.subject_range),
        "high": result.high,
        "low": result.low,
        "scores": {kind: result.scores[kind] for kind in result.kinds},
    }


def trace_fact_record(loaded: LoadedModel, settings: TraceSettings, fact: KnownFact) -> dict:
    """The cache record of one fact traced with `settings` (a worker's item; the in-process loop computes the same)."""
    return fact_record(fact, trace(loaded, fact.prompt, fact.subject, settings))


# --- entry points ------------------------------------------------------------------------------

def check_average_settings(settings: TraceSettings) -> None:
    """InputError for settings that cannot be averaged over facts (every fact has its own subject and answer)."""
    settings.validate()
    if HEADS in settings.kinds:
        raise InputError("Head-level traces are not averaged over facts: trace the heads of one prompt, or average hidden, mlp, attn.")
    if settings.corruption == "replace" and settings.replacement_text.strip().lower() != "auto":
        raise InputError(f"Averages replace each fact's own subject, so one replacement ({settings.replacement!r}) cannot fit "
                         "them all: use --replacement auto (the first same-length subject of the known facts, per fact).")
    if settings.counterfactual_answer is not None:
        raise InputError("Averages take each fact's a' from its corrupted run: leave the counterfactual answer out.")


def uncached_facts(loaded: LoadedModel, n: int, settings: TraceSettings | None = None) -> int:
    """How many of the first `n` facts the model knows an average would still trace (the others are cached)."""
    settings = settings or TraceSettings()
    chosen = facts_model_knows(loaded)[:n]
    cached = cached_records(loaded, settings) if not loaded.edits_applied else {}
    return sum(1 for fact in chosen if fact.known_id not in cached)


def average_traces_stream(
    loaded: LoadedModel,
    n: int,
    settings: TraceSettings | None = None,
    facts: list[KnownFact] | None = None,
    use_cache: bool = True,
    pool: WorkerPool | None = None,
) -> Iterator[AverageUpdate]:
    """Trace the first `n` facts the model knows (skipping cached ones; on `pool`'s workers if given); yield the running average."""
    settings = settings or TraceSettings()
    check_average_settings(settings)
    use_cache = use_cache and not loaded.edits_applied  # the cache holds the unedited model's traces only
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InputError(f"The number of facts must be a whole number >= 1, got {n!r}.")
    candidates = facts if facts is not None else facts_model_knows(loaded)
    if not candidates:
        raise InputError("The model gets none of the known facts right, so there is nothing to average.")
    chosen = candidates[:n]
    path = average_cache_path(loaded, settings)
    cached = cached_records(loaded, settings) if use_cache else {}
    layers = loaded.layout.num_layers
    started = time.perf_counter()
    done = {fact.known_id: cached[fact.known_id] for fact in chosen if fact.known_id in cached}
    todo = [fact for fact in chosen if fact.known_id not in done]
    result = aggregate(list(done.values()), loaded.name, layers, settings, requested=n)
    aggregated = time.perf_counter()

    def finish(fact: KnownFact, record: dict) -> AverageUpdate:
        nonlocal result, aggregated
        if use_cache:
            append_record(path, record)
        done[fact.known_id] = record
        # Re-aggregating costs O(facts done); with many fast workers, do it at most every AGGREGATE_SECONDS.
        if len(done) == len(chosen) or time.perf_counter() - aggregated >= AGGREGATE_SECONDS:
            ordered = [done[item.known_id] for item in chosen if item.known_id in done]  # the same order however they finished
            result = aggregate(ordered, loaded.name, layers, settings, requested=n)
            aggregated = time.perf_counter()
        result.elapsed = time.perf_counter() - started
        return AverageUpdate(result, len(done) / len(chosen), message=f"fact {len(done)}/{len(chosen)}: {fact.subject}")

    message = f"{len(done)} of {len(chosen)} facts already in the cache" if done else f"tracing {len(chosen)} facts"
    yield AverageUpdate(result, len(done) / len(chosen), message=message)
    fact_settings = TraceSettings.from_dict({**settings.to_dict(), "answer": None, "occurrence": 0, "chat": False})
    if pool is not None:
        for index, record in pool.run(trace_fact_record, todo, fact_settings):
            yield finish(todo[index], record)
    else:
        for fact in todo:
            traced = None
            for update in trace_stream(loaded, fact.prompt, fact.subject, fact_settings):
                traced = update.result
                if not update.done:  # a chance to cancel and a finer progress while one fact is traced
                    yield AverageUpdate(result, (len(done) + update.fraction) / len(chosen),
                                        message=f"fact {len(done) + 1}/{len(chosen)} ({fact.subject}): {update.message}")
            yield finish(fact, fact_record(fact, traced))
    result.elapsed = time.perf_counter() - started
    if len(chosen) < n:
        message = f"only {len(chosen)} known facts available (asked for {n})"
    else:
        message = f"averaged {len(chosen)} facts"
    yield AverageUpdate(result, 1.0, done=True, message=message)


def average_traces(
    loaded: LoadedModel,
    n: int,
    settings: TraceSettings | None = None,
    progress: Progress | None = None,
    facts: list[KnownFact] | None = None,
    use_cache: bool = True,
    pool: WorkerPool | None = None,
) -> AverageResult:
    """AIE/ATE by token class over the first `n` facts the model knows (resumable, cached per model; on `pool` if given)."""
    result = None
    for update in average_traces_stream(loaded, n, settings, facts=facts, use_cache=use_cache, pool=pool):
        result = update.result
        if progress is not None:
            progress(update.fraction, update.message)
            safe_point(progress)  # nothing of the traces is on the model between two updates
    assert result is not None
    return result
