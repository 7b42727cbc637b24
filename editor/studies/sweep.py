"""How edit quality depends on the covariance budget and lambda: the targets once, then one solve per setting.

The target vectors z (SPEC 3 step 2) depend on the model, the requests and R only, not on C or lambda,
so a sweep optimizes them once and then, for every (token budget, lambda), computes the layer
updates, applies them, scores the records, and restores the weights (`sweep_cell`, here in order or on a
pool's workers: the same numbers). Budgets run smallest first: the covariance cache continues a larger
budget from the largest finished smaller one. Each finished cell is cached as it arrives
(`editor.evaluation.result_cache`): a rerun computes only the cells that were not finished. Success by
generation (ES_gen, PS_gen, NS_gen) does not change the cache's key: a cell cached without it is computed
again when it is asked for (`by_generation`, on by default), and shown without it when it is not.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from core.distributed import WorkerPool
from core.errors import InputError
from core.facts import model_key
from core.loading import LoadedModel
from core.progress import Progress, stage
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.evaluation.counterfact import CounterFactRecord
from editor.evaluation.evaluate import Scores, has_generation_success, score_records, summarize
from editor.evaluation.result_cache import ResultCache, compute_missing, digest
from editor.layers import layers_text
from editor.methods.base import EditMethod
from editor.methods.memit import prepare
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import TargetResult, compute_targets
from editor.statistics.covariance import CovarianceSet, layer_covariances

COLUMNS = (("ES", "ES"), ("PS", "PS"), ("NS", "NS"), ("S", "S"), ("ES-gen", "ES_gen"), ("PS-gen", "PS_gen"),
           ("NS-gen", "NS_gen"), ("Eff.acc", "efficacy_accuracy"), ("Nbr.acc", "neighborhood_accuracy"), ("GE", "GE"))


@dataclass
class SweepRow:
    """The edited model's scores for one (covariance tokens, lambda), and how much of z - h the updates wrote."""

    cov_tokens: int
    mom2_weight: float | None  # lambda (None: the method has none, e.g. AlphaEdit)
    scores: Scores
    residual_left: float  # mean ||z - h|| at l_R after all layers (0 = the whole change was written)
    seconds: float  # layer updates + scoring (+ the covariance, on the first row of a budget)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["scores"] = self.scores.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SweepRow:
        values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        values["scores"] = Scores.from_dict(data["scores"])
        return cls(**values)


@dataclass
class SweepResult:
    """Unedited scores, one row per setting, and the shared settings (n, R, method, target time)."""

    unedited: Scores
    rows: list[SweepRow]
    n: int
    layers: list[int]
    method: str
    residual_before: float  # mean ||z - h|| before any update
    target_seconds: float

    def to_dict(self) -> dict:
        data = asdict(self)
        for row in data["rows"]:
            row["lambda"] = row["mom2_weight"]
        return data

    def table(self) -> str:
        """Plain text: the unedited row, then one row per (tokens, lambda)."""
        header = f"{'tokens':>9}{'lambda':>9}" + "".join(f"{title:>9}" for title, _ in COLUMNS) + f"{'left':>8}"
        lines = [header, f"{'unedited':>18}" + _cells(self.unedited) + f"{self.residual_before:8.1f}"]
        for row in self.rows:
            weight = "-" if row.mom2_weight is None else f"{row.mom2_weight:g}"
            lines.append(f"{row.cov_tokens:>9,}{weight:>9}" + _cells(row.scores) + f"{row.residual_left:8.1f}")
        lines.append(
            f"n={self.n}  method={self.method}  layers={layers_text(self.layers)}  "
            f"targets optimized once in {self.target_seconds:.1f} s; 'left' = mean ||z - h|| not written into the weights"
        )
        return "\n".join(lines)


def _cells(scores: Scores) -> str:
    values = (getattr(scores, key) for _, key in COLUMNS)
    return "".join(f"{'-':>9}" if value is None else f"{value:9.1f}" for value in values)


def sweep_cache(loaded: LoadedModel, records: list[CounterFactRecord], method: EditMethod, generation: bool,
                enabled: bool = True) -> ResultCache:
    """The finished cells of sweeps of these records with this method (every setting but budget and lambda)."""
    settings = {key: value for key, value in method.to_dict().items() if key not in ("cov_tokens", "mom2_weight")}
    payload = {"method": settings, "records": [digest(record.to_dict()) for record in records], "generation": generation}
    return ResultCache.for_run("sweep", model_key(loaded), payload, enabled)


def cell_key(cell: tuple[int, float | None]) -> str:
    """The cache key of one (covariance tokens, lambda) cell."""
    return f"{int(cell[0])}:{cell[1] if cell[1] is None else float(cell[1])!r}"


@dataclass
class SweepContext:
    """What every (budget, lambda) cell shares: the records, the prepared requests, the targets z, C per budget."""

    records: list[CounterFactRecord]
    requests: list[EditRequest]
    method: EditMethod
    targets: TargetResult
    covariances: dict[int, CovarianceSet]
    generation: bool
    by_generation: bool = True


def sweep_cell(loaded: LoadedModel, context: SweepContext, cell: tuple[int, float | None],
               progress: Progress | None = None) -> SweepRow:
    """The edited model's scores for one (covariance tokens, lambda); the weights end as they began (a worker's item)."""
    tokens, weight = cell
    clock = time.perf_counter()
    changes = {"cov_tokens": tokens} if weight is None else {"cov_tokens": tokens, "mom2_weight": weight}
    method = context.method.replace(**changes)
    with loaded.lock:
        batch = method.compute(loaded, context.requests, covariances=context.covariances[tokens],
                               progress=stage(progress, 0.0, 0.3), targets=context.targets)
        ledger = EditLedger.for_model(loaded)
        ledger.add(batch, loaded)
        with ledger.applied(loaded):
            post, entropies = score_records(loaded, context.records, generation=context.generation,
                                            by_generation=context.by_generation, progress=stage(progress, 0.3, 1.0))
    return SweepRow(tokens, weight, summarize(post, entropies), batch.final_residual_norm, time.perf_counter() - clock, batch.warnings)


def sweep_records(
    loaded: LoadedModel,
    records: list[CounterFactRecord],
    method: EditMethod,
    budgets: list[int],
    lambdas: list[float],
    *,
    generation: bool = False,
    progress: Progress | None = None,
    pool: WorkerPool | None = None,
    use_cache: bool = True,
    by_generation: bool = True,
) -> SweepResult:
    """Score `records` unedited, then edited in one batch with every (budget, lambda) (cells on `pool` if given); the weights end as they began.

    `lambdas` empty: the method's own lambda (or none). Finished cells are cached (unless `use_cache` is
    False); a rerun computes only the rest.
    """
    if not method.reuses_targets:
        raise InputError(f"The sweep solves once per setting from targets optimized once; {method.label} cannot.")
    settings = method.settings
    has_lambda = "mom2_weight" in settings.field_names()
    if lambdas and not has_lambda:
        raise InputError(f"{method.label} has no lambda to sweep; sweep --tokens only.")
    requests = prepare(loaded, [record.request() for record in records], settings)
    budgets = sorted(budgets)
    weights = lambdas or [settings.mom2_weight if has_lambda else None]
    cells = [(tokens, weight) for tokens in budgets for weight in weights]
    cache = sweep_cache(loaded, records, method, generation, use_cache)
    cached = [cache.get(cell_key(cell)) for cell in cells]
    start = cache.get("start")  # unedited scores and the targets' figures
    if by_generation:  # cached before success by generation was measured: computed again
        cached = [row if row is not None and has_generation_success(row["scores"]) else None for row in cached]
        start = start if start is not None and has_generation_success(start["unedited"]) else None
    else:
        cached = [None if row is None else {**row, "scores": Scores.from_dict(row["scores"]).without_generation_success().to_dict()}
                  for row in cached]
        start = None if start is None else {**start, "unedited": Scores.from_dict(start["unedited"]).without_generation_success().to_dict()}
    if start is not None and all(row is not None for row in cached):
        return SweepResult(
            unedited=Scores.from_dict(start["unedited"]), rows=[SweepRow.from_dict(row) for row in cached], n=len(records),
            layers=list(settings.layers), method=method.name, residual_before=start["residual_before"],
            target_seconds=start["target_seconds"],
        )
    covariances: dict[int, CovarianceSet] = {}
    covariance_seconds: dict[int, float] = {}
    with loaded.lock:
        pre, pre_entropies = score_records(loaded, records, generation=generation, by_generation=by_generation,
                                           progress=stage(progress, 0.0, 0.05))
        clock = time.perf_counter()
        prefixes = context_prefixes(loaded, settings)
        targets = compute_targets(loaded, requests, settings, prefixes, progress=stage(progress, 0.05, 0.5))
        target_seconds = time.perf_counter() - clock
        residual_before = float((targets.targets - targets.hidden).norm(dim=-1).mean())
        for position, tokens in enumerate(budgets):  # smallest first: a larger budget continues a smaller one
            clock = time.perf_counter()
            report = stage(progress, 0.5 + 0.1 * position / len(budgets), 0.5 + 0.1 * (position + 1) / len(budgets))
            covariances[tokens] = layer_covariances(loaded, list(settings.layers), tokens, settings.corpus, report, pool=pool)
            covariance_seconds[tokens] = time.perf_counter() - clock
    if start is None:
        cache.put("start", {"unedited": summarize(pre, pre_entropies).to_dict(), "residual_before": residual_before,
                            "target_seconds": target_seconds})
    context = SweepContext(records, requests, method, targets, covariances, generation, by_generation)
    rows: list[SweepRow | None] = [None if row is None else SweepRow.from_dict(row) for row in cached]
    todo = [index for index, row in enumerate(rows) if row is None]
    for tokens, seconds in covariance_seconds.items():  # the covariance counts on the first row of its budget
        covariance_seconds[tokens] = seconds if any(cells[index][0] == tokens for index in todo) else 0.0
    for index, row in compute_missing(sweep_cell, loaded, cells, todo, context, pool=pool,
                                      progress=progress, span=(0.6, 1.0), message="setting {finished}/{total} scored"):
        first_of_budget = next(other for other in todo if cells[other][0] == row.cov_tokens) == index
        if first_of_budget:  # the covariance counts on the first computed row of its budget
            row.seconds += covariance_seconds.get(row.cov_tokens, 0.0)
        rows[index] = row
        cache.put(cell_key(cells[index]), row.to_dict())
    return SweepResult(
        unedited=summarize(pre, pre_entropies),
        rows=rows,
        n=len(records),
        layers=list(settings.layers),
        method=method.name,
        residual_before=residual_before,
        target_seconds=target_seconds,
    )
