"""R measured by editing (SPEC 6): edit the same records at each candidate window R and score them.

For every window of layers, the requests are edited in one batch (SPEC 3) with the targets at the
window's last layer, scored (SPEC 4: ES, PS, NS, S), and the unedited weights are restored. The
target vectors depend on the last layer only, so they are optimized once per distinct last layer;
each window then costs one layer solve and one scoring pass (editor/studies/sweep.py's approach). Beside
each window's scores stands the tracing curve's value for it (the averaged MLP indirect effect at
the last subject token summed over the window's layers, tracer.average / tracer.recommend), so the
two answers to "where should I edit?" can be compared (Hase et al., NeurIPS 2023).

Every finished window is appended to a JSON-lines cache keyed by model, records and settings, so an
interrupted run continues where it stopped. Success by generation (ES_gen, PS_gen, NS_gen, SPEC 6) is
measured beside ES/PS/NS unless `by_generation` is off; it does not change the cache's key: a cached
window (or unedited line) without it, from an older version, is measured again when it is asked for,
and left without it when it is not.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy

from core.embedded import cache_root
from core.errors import InputError
from core.facts import model_key
from core.loading import LoadedModel
from core.progress import Progress
from editor.edits.ledger import EditLedger
from editor.evaluation.counterfact import CounterFactRecord
from editor.evaluation.evaluate import Scores, has_generation_success, score_records, summarize
from editor.layers import AUTO_FACTS, layer_spans, layers_text, outlier_flags
from editor.methods.base import EditMethod
from editor.methods.memit import Memit, prepare
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import compute_targets
from editor.statistics.covariance import layer_covariances
from editor.studies.work_plan import WorkPlan, missing_covariance_layers, window_layers
from tracer.average import average_traces, uncached_facts
from tracer.problem import TraceSettings
from tracer.recommend import LayerRecommendation, recommend_layers

DEFAULT_WIDTH = 5
CURVE_SETTINGS = TraceSettings(kinds=("mlp",))  # the tracing curve: MLP traces averaged over known facts
MAX_WINDOWS = 1000  # windows measured in one run at most (each is a full edit and scoring pass)


# --- windows -------------------------------------------------------------------------------------------------------

def parse_windows(text: str, num_layers: int, width: int = DEFAULT_WIDTH) -> list[tuple[int, ...]]:
    """'all' -> every window of `width` adjacent layers; '1-5,2-6' -> those ranges. Sorted by last layer, distinct."""
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= num_layers:
        raise InputError(f"The width of R must be a whole number from 1 to {num_layers}, got {width!r}.")
    text = (text or "").strip()
    if text.lower() == "all":
        windows = [tuple(range(start, start + width)) for start in range(num_layers - width + 1)]
    else:
        windows = [tuple(range(low, high + 1)) for low, high in layer_spans(text, num_layers)]
    distinct = sorted(set(windows), key=lambda window: (window[-1], window[0]))
    if len(distinct) > MAX_WINDOWS:
        raise InputError(f"{len(distinct)} windows is too many for one run (at most {MAX_WINDOWS}).")
    return distinct


def window_effect(curve: list[float], layers: tuple[int, ...] | list[int]) -> float:
    """The tracing curve's value for a window: its summed effect over the window's layers (as recommend_layers sums)."""
    return float(sum(curve[layer] for layer in layers))


def rank_correlation(first: list[float], second: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant list."""
    if len(first) < 3 or len(first) != len(second):
        return None

    def ranks(values: list[float]) -> numpy.ndarray:
        array = numpy.asarray(values, dtype=float)
        order = array.argsort(kind="stable")
        result = numpy.empty(len(array))
        result[order] = numpy.arange(len(array), dtype=float)
        for value in numpy.unique(array):  # ties share their mean rank
            tied = array == value
            result[tied] = result[tied].mean()
        return result

    a, b = ranks(first), ranks(second)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(numpy.corrcoef(a, b)[0, 1])


# --- results -------------------------------------------------------------------------------------------------------

@dataclass
class WindowScore:
    """One window R edited and scored: ES, PS, NS, S (percent), the tracing curve's value, and what it cost."""

    layers: list[int]
    ES: float | None
    PS: float | None
    NS: float | None
    S: float | None
    efficacy_accuracy: float | None = None
    neighborhood_accuracy: float | None = None
    trace_effect: float | None = None
    ES_gen: float | None = None  # success by generation (SPEC 6); None where not measured
    PS_gen: float | None = None
    NS_gen: float | None = None
    residual_left: float = 0.0  # mean ||z - h|| at l_R after the updates (0 = the whole change was written)
    seconds: float = 0.0  # the solve and the scoring (the targets, shared per last layer, are counted apart)
    warnings: list[str] = field(default_factory=list)

    @property
    def edit_score(self) -> float | None:
        """What windows are ranked by: S, or ES for requests without paraphrase and neighbourhood prompts."""
        return self.S if self.S is not None else self.ES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WindowScore:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


@dataclass
class WindowsResult:
    """Edit scores per window beside the tracing curve, with the tracing-recommended and the editing-best R."""

    model: str
    n: int
    width: int
    method: str
    method_settings: str  # the method's own settings in a few words (EditMethod.describe)
    cov_tokens: int
    unedited: Scores
    windows: list[WindowScore]
    trace_curve: list[float]  # averaged MLP indirect effect at the last subject token, per layer
    trace_facts: int
    tracing_recommended: list[int]
    recommendation: LayerRecommendation | None = None
    target_seconds: float = 0.0
    seconds: float = 0.0
    cached_windows: int = 0  # windows read from the cache rather than measured now
    trace_note: str = ""  # why there is no tracing curve, when there is none

    @property
    def editing_best(self) -> list[int]:
        """The measured window with the highest edit score (the earliest one on ties); [] before any window is done."""
        scored = [window for window in self.windows if window.edit_score is not None]
        if not scored:
            return []
        return list(max(scored, key=lambda window: (window.edit_score, -window.layers[-1], -window.layers[0])).layers)

    @property
    def tied_best(self) -> list[list[int]]:
        """Every measured window whose edit score equals the best one (the editing-best R first)."""
        best = self.window(self.editing_best) if self.editing_best else None
        if best is None:
            return []
        tied = [window.layers for window in self.windows if window.edit_score == best.edit_score and window.layers != best.layers]
        return [list(best.layers), *tied]

    @property
    def agree(self) -> bool:
        """True when the window tracing recommends edits best (alone or tied with others)."""
        return list(self.tracing_recommended) in self.tied_best

    def window(self, layers) -> WindowScore | None:
        return next((window for window in self.windows if window.layers == list(layers)), None)

    @property
    def correlation(self) -> float | None:
        """Spearman's rank correlation between the tracing curve's value and S over the measured windows."""
        pairs = [(w.trace_effect, w.edit_score) for w in self.windows if w.trace_effect is not None and w.edit_score is not None]
        return rank_correlation([p[0] for p in pairs], [p[1] for p in pairs])

    def explanation(self) -> str:
        """Plain words: which R edits best, what tracing recommends, and whether they agree."""
        traced = layers_text(self.tracing_recommended)
        best = self.editing_best
        if not best:
            return f"Tracing recommends R = {traced}; no window has been edited yet." if traced else "No window has been edited yet."
        top = self.window(best)
        text = f"Editing: R = {layers_text(best)} edits best (S {_number(top.S)}, ES {_number(top.ES)}, PS {_number(top.PS)}, " \
               f"NS {_number(top.NS)})."
        if len(self.tied_best) > 1:
            text += f" Tied with R = {', '.join(layers_text(layers) for layers in self.tied_best[1:])}."
        if not traced:
            return text + " " + (self.trace_note or "There is no tracing curve to compare with.")
        measured = self.window(self.tracing_recommended)
        if self.agree:
            same = "the same R" if list(self.tracing_recommended) == best else f"R = {traced}, tied for the best"
            return text + f" Tracing recommends {same}: they agree."
        if measured is None or measured.edit_score is None:
            return text + f" Tracing recommends R = {traced}, which was not edited here: compare by measuring it too."
        ranked = sorted((w for w in self.windows if w.edit_score is not None), key=lambda w: -w.edit_score)
        rank = 1 + next(index for index, w in enumerate(ranked) if w.layers == measured.layers)
        name = "S" if measured.S is not None else "ES"
        return (
            text + f" Tracing recommends R = {traced}, which edits with {name} {measured.edit_score:.1f} (rank {rank} of "
            f"{len(ranked)}): tracing and editing disagree; prefer the editing result."
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "n": self.n,
            "width": self.width,
            "method": self.method,
            "method_settings": self.method_settings,
            "cov_tokens": self.cov_tokens,
            "unedited": self.unedited.to_dict(),
            "windows": [window.to_dict() for window in self.windows],
            "trace_curve": list(self.trace_curve),
            "trace_facts": self.trace_facts,
            "tracing_recommended": list(self.tracing_recommended),
            "editing_best": self.editing_best,
            "agree": self.agree,
            "rank_correlation": self.correlation,
            "explanation": self.explanation(),
            "recommendation": self.recommendation.to_dict() if self.recommendation is not None else None,
            "target_seconds": self.target_seconds,
            "seconds": self.seconds,
            "cached_windows": self.cached_windows,
            "trace_note": self.trace_note,
        }

    def table(self) -> str:
        """Plain text: one row per window (the tracing R marked T, the editing-best R marked E), then the verdict."""
        header = (f"{'R':>8}{'trace':>9}{'ES':>8}{'PS':>8}{'NS':>8}{'S':>8}{'ES-gen':>8}{'PS-gen':>8}{'NS-gen':>8}"
                  f"{'Eff.acc':>9}{'Nbr.acc':>9}{'left':>7}{'s':>7}")
        lines = [header, f"{'unedited':>17}" + _cells(self.unedited) + f"{'':>7}{'':>7}"]
        best = self.editing_best
        for window in self.windows:
            marks = ("T" if window.layers == list(self.tracing_recommended) else "") + ("E" if window.layers == best else "")
            effect = "-" if window.trace_effect is None else f"{window.trace_effect:.4f}"
            lines.append(f"{marks:>2}{layers_text(window.layers):>6}{effect:>9}" + _cells(window)
                         + f"{window.residual_left:7.1f}{window.seconds:7.0f}")
        correlation = self.correlation
        lines.append(
            f"n={self.n}  method={self.method}  {self.method_settings}  cov_tokens={self.cov_tokens:,}  "
            f"trace = summed MLP effect at the last subject token ({self.trace_facts} facts); T = tracing's R, E = editing's best"
            + ("" if correlation is None else f"; rank correlation trace vs S {correlation:+.2f}")
        )
        lines.append(self.explanation())
        return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cells(scores) -> str:
    values = (scores.ES, scores.PS, scores.NS, scores.S, scores.ES_gen, scores.PS_gen, scores.NS_gen)
    extra = (scores.efficacy_accuracy, scores.neighborhood_accuracy)
    return "".join(f"{'-':>8}" if v is None else f"{v:8.1f}" for v in values) + "".join(
        f"{'-':>9}" if v is None else f"{v:9.1f}" for v in extra
    )


@dataclass
class WindowsUpdate:
    """One step of a running measurement: the result so far and the share done."""

    result: WindowsResult
    fraction: float
    done: bool = False
    message: str = ""


# --- the resumable cache -------------------------------------------------------------------------------------------

def windows_cache_path(loaded: LoadedModel, records: list[CounterFactRecord], method: EditMethod) -> Path:
    """The JSON-lines cache of these records edited with this method (every setting but the layers)."""
    settings = {key: value for key, value in method.to_dict().items() if key != "layers"}
    payload = {"model": model_key(loaded), "records": [record.to_dict() for record in records], "method": settings}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root() / "edit_windows" / model_key(loaded) / f"windows-{key}.jsonl"


def read_cache(path: Path) -> tuple[Scores | None, dict[tuple[int, ...], WindowScore]]:
    """(unedited scores, {window: scores}) already measured (a torn last line is ignored)."""
    unedited, windows = None, {}
    if not path.is_file():
        return unedited, windows
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            if entry.get("kind") == "unedited":
                unedited = Scores.from_dict(entry["scores"])
            elif entry.get("kind") == "window":
                window = WindowScore.from_dict(entry["window"])
                windows[tuple(window.layers)] = window
        except (ValueError, KeyError, TypeError):
            continue
    return unedited, windows


def append_entry(path: Path, entry: dict) -> None:
    """Append one JSON line (flushed, so a crash loses at most the window in progress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()


# --- the measurement -----------------------------------------------------------------------------------------------

def tracing_recommendation(
    loaded: LoadedModel, width: int, facts: int = AUTO_FACTS, progress: Progress | None = None
) -> tuple[LayerRecommendation, int]:
    """(R recommended by MLP traces averaged over `facts` known facts, the facts averaged); cached (packaged for the embedded model)."""
    average = average_traces(loaded, facts, CURVE_SETTINGS, progress=progress)
    return recommend_layers(average, width, outlier_flags(loaded)), average.n_facts


def measure_windows_stream(
    loaded: LoadedModel,
    records: list[CounterFactRecord],
    windows: str | list[tuple[int, ...]] = "all",
    method: EditMethod | None = None,
    *,
    width: int = DEFAULT_WIDTH,
    trace_facts: int = AUTO_FACTS,
    use_cache: bool = True,
    progress: Progress | None = None,
    recommendation: LayerRecommendation | None = None,
    by_generation: bool = True,
) -> Iterator[WindowsUpdate]:
    """Edit `records` at every window and yield the growing result; the last update has done=True.

    Updates come per step (the traces, the unedited scores, the covariances, each window); `progress`,
    if given, also hears about the work inside a step. The tracing curve is `recommendation`'s when
    given (e.g. the app's current one), else MLP traces averaged over `trace_facts` known facts; a
    model that knows none of them is measured without a tracing curve (`trace_note` says why). The model lock is taken per step, never across a
    yield; the weights are the unedited ones between steps, so closing the generator early leaves the
    model as it was.
    """
    started = time.perf_counter()
    layout = loaded.layout
    if not records:
        raise InputError("No records to edit: give at least one CounterFact record (or request).")
    if isinstance(trace_facts, bool) or not isinstance(trace_facts, int) or trace_facts < 1:
        raise InputError(f"The number of facts behind the tracing curve must be a whole number >= 1, got {trace_facts!r}.")
    chosen = parse_windows(windows, layout.num_layers, width) if isinstance(windows, str) else list(dict.fromkeys(tuple(w) for w in windows))
    if not chosen:
        raise InputError("No windows to measure.")
    base = method if method is not None else Memit.for_model(layout)
    if not base.reuses_targets:
        raise InputError(f"R by editing edits each window from targets optimized once per last layer; {base.label} cannot.")
    base = base.replace(layers=chosen[0])
    requests = prepare(loaded, [record.request() for record in records], base.settings)
    for window in chosen:
        base.settings.replace(layers=window).check(layout)
    path = windows_cache_path(loaded, records, base)
    unedited, done = read_cache(path) if use_cache else (None, {})
    if by_generation:  # measured before success by generation was: measured again
        unedited = unedited if unedited is not None and has_generation_success(unedited.to_dict()) else None
        done = {window: score for window, score in done.items() if score.ES_gen is not None}
    else:
        unedited = unedited.without_generation_success() if unedited is not None else None
        done = {window: replace(score, ES_gen=None, PS_gen=None, NS_gen=None) for window, score in done.items()}
    yield WindowsUpdate(_result(loaded, records, base, width, unedited, [], [], 0, [], None, started), 0.0,
                        message=f"{len(done)} of {len(chosen)} windows already in the cache" if done else "averaging traces")

    remaining = [window for window in chosen if window not in done]
    by_last: dict[int, list[tuple[int, ...]]] = {}
    for window in remaining:
        by_last.setdefault(window[-1], []).append(window)
    missing = missing_covariance_layers(loaded, remaining, base.settings) if remaining else []
    to_trace = uncached_facts(loaded, trace_facts, CURVE_SETTINGS) if recommendation is None else 0
    plan = WorkPlan.of(loaded, records, by_last, base.settings, trace_facts=to_trace,
                       score_unedited=unedited is None, covariance_layers=missing, by_generation=by_generation)
    note = ""
    facts = 0
    if recommendation is None:
        try:
            recommendation, facts = tracing_recommendation(loaded, width, trace_facts, plan.stage(progress, "trace"))
        except InputError as error:  # e.g. the model knows none of the facts: the edits are still measured
            note = f"No tracing curve: {error}"
    curve = recommendation.curve if recommendation is not None else []
    tracing = recommendation.layers if recommendation is not None else []
    measured = [_with_effect(done[window], curve) for window in chosen if window in done]

    def current(fraction: float, message: str, target_seconds: float = 0.0) -> WindowsUpdate:
        ordered = sorted(measured, key=lambda window: (window.layers[-1], window.layers[0]))
        result = _result(loaded, records, base, width, unedited, ordered, curve, facts, tracing, recommendation,
                         started, target_seconds, cached=len(chosen) - len(remaining))
        result.trace_note = note
        return WindowsUpdate(result, fraction, message=message)

    if unedited is None:
        with loaded.lock:
            pre, entropies = score_records(loaded, records, generation=False, by_generation=by_generation,
                                           progress=plan.stage(progress, "unedited"))
        unedited = summarize(pre, entropies)
        if use_cache:
            append_entry(path, {"kind": "unedited", "scores": unedited.to_dict()})
    yield current(plan.end("unedited"), f"unedited scores: S {unedited.S}")
    if remaining:
        layer_covariances(loaded, window_layers(remaining), base.settings.cov_tokens, base.settings.corpus,
                          plan.stage(progress, "covariance"))  # one pass for all
    yield current(plan.end("covariance"), "covariance statistics ready")

    prefixes = context_prefixes(loaded, base.settings)
    target_seconds = 0.0
    for last, group in by_last.items():
        clock = time.perf_counter()
        with loaded.lock:
            targets = compute_targets(loaded, requests, base.settings.replace(layers=group[0]), prefixes,
                                      progress=plan.stage(progress, ("targets", last)))
        target_seconds += time.perf_counter() - clock
        for window in group:
            clock = time.perf_counter()
            edit = base.replace(layers=window)
            covariances = layer_covariances(loaded, list(window), edit.settings.cov_tokens, edit.settings.corpus)
            with loaded.lock:
                batch = edit.compute(loaded, requests, covariances=covariances, targets=targets)
                ledger = EditLedger.for_model(loaded)
                ledger.add(batch, loaded)
                with ledger.applied(loaded):
                    post, entropies = score_records(loaded, records, generation=False, by_generation=by_generation,
                                                    progress=plan.stage(progress, window))
            scores = summarize(post, entropies)
            score = WindowScore(
                layers=list(window), ES=scores.ES, PS=scores.PS, NS=scores.NS, S=scores.S,
                efficacy_accuracy=scores.efficacy_accuracy, neighborhood_accuracy=scores.neighborhood_accuracy,
                ES_gen=scores.ES_gen, PS_gen=scores.PS_gen, NS_gen=scores.NS_gen, residual_left=batch.final_residual_norm, seconds=time.perf_counter() - clock, warnings=list(batch.warnings),
            )
            if use_cache:
                append_entry(path, {"kind": "window", "window": score.to_dict()})
            measured.append(_with_effect(score, curve))
            yield current(plan.end(window), f"R = {layers_text(window)}: S {score.S}", target_seconds)
    final = current(1.0, f"measured {len(chosen)} windows", target_seconds)
    final.done = True
    yield final


def _with_effect(window: WindowScore, curve: list[float]) -> WindowScore:
    window.trace_effect = window_effect(curve, window.layers) if curve else None
    return window


def _result(loaded, records, method, width, unedited, windows, curve, facts, tracing, recommendation, started,
            target_seconds=0.0, cached=0) -> WindowsResult:
    empty = Scores(None, None, None, None, None, None, None, len(records))
    return WindowsResult(
        model=loaded.name, n=len(records), width=width, method=method.name, method_settings=method.describe(),
        cov_tokens=method.settings.cov_tokens, unedited=unedited or empty, windows=list(windows), trace_curve=list(curve),
        trace_facts=facts, tracing_recommended=list(tracing), recommendation=recommendation, target_seconds=target_seconds,
        seconds=time.perf_counter() - started, cached_windows=cached,
    )


def measure_windows(
    loaded: LoadedModel,
    records: list[CounterFactRecord],
    windows: str | list[tuple[int, ...]] = "all",
    method: EditMethod | None = None,
    *,
    width: int = DEFAULT_WIDTH,
    trace_facts: int = AUTO_FACTS,
    use_cache: bool = True,
    progress: Progress | None = None,
    recommendation: LayerRecommendation | None = None,
    by_generation: bool = True,
) -> WindowsResult:
    """ES/PS/NS/S (and by generation) of `records` edited at each window, beside the tracing curve; resumable (see the module notes)."""
    result = None
    for update in measure_windows_stream(loaded, records, windows, method, width=width, trace_facts=trace_facts,
                                         use_cache=use_cache, progress=progress, recommendation=recommendation,
                                         by_generation=by_generation):
        result = update.result
        if progress is not None:
            progress(update.fraction, update.message)
    assert result is not None
    return result

