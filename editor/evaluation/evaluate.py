"""CounterFact evaluation (SPEC section 4): the same records scored before and after editing.

Single mode treats every record on its own (scored, edited alone, scored again, weights restored:
`evaluate_one_record`), here in order or on a pool's workers; both give the same numbers. Each
finished record is cached as it arrives (`editor.evaluation.result_cache`), so a rerun of a killed run
computes only the records that were not finished.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from core.distributed import WorkerPool
from core.errors import InputError
from core.facts import model_key
from core.loading import LoadedModel
from core.progress import Progress, stage
from editor.edits.ledger import EditLedger
from editor.evaluation.by_generation import generation_checks
from editor.evaluation.counterfact import CounterFactRecord, load_records
from editor.evaluation.metrics import (
    GenerationHits,
    PairScore,
    RecordScores,
    harmonic_mean,
    mean,
    ngram_entropy,
    percent,
    record_scores,
)
from editor.evaluation.result_cache import ResultCache, compute_missing, digest
from editor.evaluation.scoring import teacher_forced
from editor.layers import layers_text
from editor.methods.base import EditMethod
from editor.methods.memit import Memit, prepare
from editor.passes.generation import generate_texts
from editor.statistics.covariance import CovarianceSet, layer_covariances

MODES = ("batch", "single")
GENERATION_TOKENS = 100
GENERATION_SEED = 0


@dataclass
class Scores:
    """Means over records, in percent; GE = 100 x weighted bigram/trigram entropy (as the papers report it)."""

    ES: float | None
    PS: float | None
    NS: float | None
    S: float | None
    efficacy_accuracy: float | None
    neighborhood_accuracy: float | None
    GE: float | None
    n: int
    # success by generation (SPEC 6), beside ES/PS/NS: None where not measured (or read from an older result)
    ES_gen: float | None = None
    PS_gen: float | None = None
    NS_gen: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scores:
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})

    def without_generation_success(self) -> Scores:
        """These scores with ES_gen, PS_gen and NS_gen left out (a run that did not ask for them)."""
        return replace(self, ES_gen=None, PS_gen=None, NS_gen=None)


GENERATION_SUCCESS_KEYS = ("ES_gen", "PS_gen", "NS_gen")


def has_generation_success(scores: dict) -> bool:
    """Do these scores (a Scores dict, e.g. read from a cache) hold success by generation? An older result does not."""
    return scores.get("ES_gen") is not None


def summarize(per_record: list[RecordScores], entropies: list[float]) -> Scores:
    """Scores from per-record fractions (records without paraphrases/neighbours are left out of PS/NS; records
    scored without generation are left out of ES_gen/PS_gen/NS_gen, which are None when no record has them)."""
    es = percent(mean(r.es for r in per_record))
    ps = percent(mean(r.ps for r in per_record if r.ps is not None))
    ns = percent(mean(r.ns for r in per_record if r.ns is not None))
    return Scores(
        ES=es,
        PS=ps,
        NS=ns,
        S=harmonic_mean([es, ps, ns]),
        efficacy_accuracy=percent(mean(r.efficacy_accuracy for r in per_record)),
        neighborhood_accuracy=percent(mean(r.neighborhood_accuracy for r in per_record if r.neighborhood_accuracy is not None)),
        GE=100.0 * mean(entropies) if entropies else None,
        n=len(per_record),
        ES_gen=percent(mean(r.es_gen for r in per_record if r.es_gen is not None)),
        PS_gen=percent(mean(r.ps_gen for r in per_record if r.ps_gen is not None)),
        NS_gen=percent(mean(r.ns_gen for r in per_record if r.ns_gen is not None)),
    )


def score_records(
    loaded: LoadedModel,
    records: list[CounterFactRecord],
    *,
    generation: bool = True,
    by_generation: bool = True,
    progress: Progress | None = None,
) -> tuple[list[RecordScores], list[float]]:
    """Per-record scores on the model as it is now, and the n-gram entropy of each generation.

    `generation`: the fluency texts (GE); `by_generation`: success by greedy generation (SPEC 6: es_gen,
    ps_gen, ns_gen; None when off).
    """
    pairs, owners, checks = [], [], []
    for index, record in enumerate(records):
        prompts = [("rewrite", record.rewrite_prompt)]
        prompts += [("paraphrase", p) for p in record.paraphrase_prompts]
        prompts += [("neighborhood", p) for p in record.neighborhood_prompts]
        for kind, prompt in prompts:
            pairs.append((prompt, record.target_new))
            pairs.append((prompt, record.target_true))
            owners.append((index, kind))
            checks.append((prompt, record.target_true if kind == "neighborhood" else record.target_new))
    forced_end = 0.8 if generation else 1.0
    checks_start = forced_end / 2 if by_generation else forced_end
    scored = teacher_forced(loaded, pairs, progress=stage(progress, 0.0, checks_start), first_token=by_generation)
    hits = None
    if by_generation:  # greedy decoding goes on from the first token the teacher-forced pass already chose
        hits = generation_checks(loaded, checks, first_tokens=[scored[2 * position][2] for position in range(len(checks))],
                                 progress=stage(progress, checks_start, forced_end))
    grouped: list[dict[str, list[PairScore]]] = [{"rewrite": [], "paraphrase": [], "neighborhood": []} for _ in records]
    generated: list[dict[str, list[bool]]] = [{"rewrite": [], "paraphrase": [], "neighborhood": []} for _ in records]
    for position, (index, kind) in enumerate(owners):
        (nll_new, hit_new, *_), (nll_true, hit_true, *_) = scored[2 * position], scored[2 * position + 1]
        grouped[index][kind].append(PairScore(nll_new, nll_true, hit_new, hit_true))
        if hits is not None:
            generated[index][kind].append(hits[position])
    per_record = [
        record_scores(g["rewrite"][0], g["paraphrase"], g["neighborhood"],
                      GenerationHits(h["rewrite"][0], h["paraphrase"], h["neighborhood"]) if hits is not None else None)
        for g, h in zip(grouped, generated)
    ]
    entropies: list[float] = []
    prompts = [p for record in records for p in record.generation_prompts] if generation else []
    if prompts:
        if progress is not None:
            progress(0.8, f"generating {len(prompts)} text(s) for fluency")
        texts = generate_texts(loaded, prompts, GENERATION_TOKENS, top_k=5, seed=GENERATION_SEED)
        entropies = [ngram_entropy(text) for text in texts]
    return per_record, entropies


@dataclass
class SingleModeContext:
    """What every record of a single-mode evaluation shares: the method, C, the starting ledger."""

    method: EditMethod
    covariances: CovarianceSet | None
    ledger: EditLedger | None
    generation: bool
    by_generation: bool = True


@dataclass
class RecordOutcome:
    """One record of a single-mode evaluation: scores before and after its own edit."""

    pre: RecordScores
    pre_entropies: list[float]
    post: RecordScores
    post_entropies: list[float]
    edit_seconds: float
    warnings: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RecordOutcome:
        values = dict(data)
        values["pre"], values["post"] = RecordScores(**data["pre"]), RecordScores(**data["post"])  # older: no *_gen
        return cls(**values)

    @property
    def has_generation_success(self) -> bool:
        return self.pre.es_gen is not None and self.post.es_gen is not None

    def without_generation_success(self) -> RecordOutcome:
        cleared = {"es_gen": None, "ps_gen": None, "ns_gen": None}
        return replace(self, pre=replace(self.pre, **cleared), post=replace(self.post, **cleared))


def evaluate_one_record(
    loaded: LoadedModel, context: SingleModeContext, record: CounterFactRecord, progress: Progress | None = None
) -> RecordOutcome:
    """Score `record`, edit it alone, score it again; the weights end as they began (a worker's item)."""
    base = context.ledger if context.ledger is not None else EditLedger.for_model(loaded)
    with loaded.lock:
        with base.applied(loaded):
            pre, pre_entropies = score_records(loaded, [record], generation=context.generation, by_generation=context.by_generation,
                                               progress=stage(progress, 0.0, 0.2))
        clock = time.perf_counter()
        batch = context.method.compute(loaded, [record.request()], context.ledger, context.covariances, stage(progress, 0.2, 0.8))
        edit_seconds = time.perf_counter() - clock
        with base.with_batch(batch).applied(loaded):
            post, post_entropies = score_records(loaded, [record], generation=context.generation, by_generation=context.by_generation,
                                                 progress=stage(progress, 0.8, 1.0))
    return RecordOutcome(pre[0], pre_entropies, post[0], post_entropies, edit_seconds, batch.warnings)


def single_mode_cache(loaded: LoadedModel, method: EditMethod, ledger: EditLedger | None, generation: bool,
                      enabled: bool = True) -> ResultCache:
    """The finished records of single-mode runs with this method and settings (from the same starting ledger)."""
    state = [batch.batch_id for batch in ledger] if ledger is not None else []
    used = {key: value for key, value in method.to_dict().items() if key not in method.unused_settings}
    settings = {"method": used, "ledger": state, "generation": generation}
    return ResultCache.for_run("evaluate-single", model_key(loaded), settings, enabled)


def single_mode_outcomes(
    loaded: LoadedModel,
    records: list[CounterFactRecord],
    method: EditMethod,
    ledger: EditLedger | None,
    generation: bool,
    progress: Progress | None,
    pool: WorkerPool | None,
    use_cache: bool,
    by_generation: bool = True,
) -> list[RecordOutcome]:
    """Every record's outcome in record order: cached ones read back, the rest computed (here or on `pool`) and cached.

    Success by generation does not change the cache's settings: a cached record without it (from an older
    version, or a run with it off) is computed again when it is asked for, and a run that does not ask
    for it leaves it out of the records it reads back.
    """
    cache = single_mode_cache(loaded, method, ledger, generation, use_cache)
    keys = [digest(record.to_dict()) for record in records]
    outcomes: list[RecordOutcome | None] = [
        RecordOutcome.from_dict(cache.get(key)) if key in cache else None for key in keys
    ]
    outcomes = [
        None if outcome is None or (by_generation and not outcome.has_generation_success)
        else outcome if by_generation else outcome.without_generation_success()
        for outcome in outcomes
    ]
    todo = [index for index, outcome in enumerate(outcomes) if outcome is None]
    if not todo:
        return outcomes
    # C once for every record (on the workers, if it is not cached yet)
    settings = method.settings
    covariances = (layer_covariances(loaded, list(settings.layers), settings.cov_tokens, settings.corpus,
                                     stage(progress, 0.0, 0.1), pool=pool) if method.uses_covariance else None)
    context = SingleModeContext(method, covariances, ledger, generation, by_generation)
    for index, outcome in compute_missing(evaluate_one_record, loaded, records, todo, context, pool=pool,
                                          progress=progress, span=(0.1, 1.0), message="record {finished}/{total} evaluated"):
        outcomes[index] = outcome
        cache.put(keys[index], outcome.to_dict())
    return outcomes


@dataclass
class EvaluationResult:
    """Unedited vs edited scores of the same records, and how the edit was made."""

    pre: Scores
    post: Scores
    n: int
    layers: list[int]
    mode: str
    method: str
    method_settings: str  # the method's own settings in a few words (EditMethod.describe)
    cov_tokens: int
    seconds: float
    edit_seconds: float
    warnings: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # EditMethod.to_dict() of the edit

    def to_dict(self) -> dict:
        data = asdict(self)
        data["pre"], data["post"] = self.pre.to_dict(), self.post.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationResult:
        values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        values["pre"], values["post"] = Scores.from_dict(data["pre"]), Scores.from_dict(data["post"])
        return cls(**values)

    def table(self) -> str:
        """A plain-text table: unedited vs edited."""
        columns = [("ES", "ES"), ("PS", "PS"), ("NS", "NS"), ("S", "S"), ("ES-gen", "ES_gen"), ("PS-gen", "PS_gen"),
                   ("NS-gen", "NS_gen"), ("Eff.acc", "efficacy_accuracy"), ("Nbr.acc", "neighborhood_accuracy"), ("GE", "GE")]
        header = f"{'':10}" + "".join(f"{title:>9}" for title, _ in columns)
        lines = [header]
        for label, scores in (("unedited", self.pre), ("edited", self.post)):
            cells = []
            for _, key in columns:
                value = getattr(scores, key)
                cells.append(f"{'-':>9}" if value is None else f"{value:9.1f}")
            lines.append(f"{label:10}" + "".join(cells))
        lines.append(
            f"n={self.n}  method={self.method}  layers={layers_text(self.layers)}  mode={self.mode}  "
            f"{self.method_settings}  cov_tokens={self.cov_tokens:,}  edit {self.edit_seconds:.1f} s, total {self.seconds:.1f} s"
        )
        return "\n".join(lines)


def evaluate_records(
    loaded: LoadedModel,
    records: list[CounterFactRecord] | str | list[dict],
    method: EditMethod | None = None,
    *,
    mode: str = "batch",
    ledger: EditLedger | None = None,
    generation: bool = True,
    limit: int | None = None,
    progress: Progress | None = None,
    pool: WorkerPool | None = None,
    use_cache: bool = True,
    by_generation: bool = True,
) -> EvaluationResult:
    """Score `records`, edit them (all at once, or one at a time restoring in between, then on `pool` if given), score again.

    `generation`: GE's fluency texts; `by_generation`: success by generation (ES_gen, PS_gen, NS_gen).
    Single mode caches each finished record (unless `use_cache` is False): a rerun computes only the rest.
    """
    started = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"Unknown mode {mode!r}: use batch or single.")
    if pool is not None and mode != "single":
        raise InputError("Workers evaluate records one at a time: use --mode single (batch mode makes one edit).")
    records = load_records(records) if not (isinstance(records, list) and records and isinstance(records[0], CounterFactRecord)) else records
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, got {limit}.")
        records = records[:limit]
    method = method if method is not None else Memit.for_model(loaded.layout)
    prepare(loaded, [record.request() for record in records], method.settings, ledger)  # every request valid before editing
    base = ledger if ledger is not None else EditLedger.for_model(loaded)
    edit_seconds, warnings = 0.0, []
    if mode == "batch":
        with loaded.lock:
            with base.applied(loaded):
                pre_records, pre_entropies = score_records(loaded, records, generation=generation, by_generation=by_generation,
                                                           progress=stage(progress, 0.0, 0.2))
            clock = time.perf_counter()
            batch = method.compute(loaded, [r.request() for r in records], ledger, progress=stage(progress, 0.2, 0.8))
            edit_seconds = time.perf_counter() - clock
            warnings = batch.warnings
            with base.with_batch(batch).applied(loaded):
                post_records, post_entropies = score_records(loaded, records, generation=generation, by_generation=by_generation,
                                                             progress=stage(progress, 0.8, 1.0))
    else:
        outcomes = single_mode_outcomes(loaded, records, method, ledger, generation, progress, pool, use_cache, by_generation)
        pre_records = [outcome.pre for outcome in outcomes]
        post_records = [outcome.post for outcome in outcomes]
        pre_entropies = [value for outcome in outcomes for value in outcome.pre_entropies]
        post_entropies = [value for outcome in outcomes for value in outcome.post_entropies]
        edit_seconds = sum(outcome.edit_seconds for outcome in outcomes)
        warnings = outcomes[-1].warnings if outcomes else []
    per_record = [
        {"case_id": record.case_id, "pre": asdict(pre), "post": asdict(post)}
        for record, pre, post in zip(records, pre_records, post_records)
    ]
    return EvaluationResult(
        pre=summarize(pre_records, pre_entropies),
        post=summarize(post_records, post_entropies),
        n=len(records),
        layers=list(method.layers),
        mode=mode,
        method=method.name,
        method_settings=method.describe(),
        cov_tokens=method.settings.cov_tokens,
        settings=method.to_dict(),
        seconds=time.perf_counter() - started,
        edit_seconds=edit_seconds,
        warnings=warnings,
        records=per_record,
    )
