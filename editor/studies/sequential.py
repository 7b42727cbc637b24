"""Sequential (lifelong) editing, SPEC section 6: batch after batch, each computed with the earlier ones applied.

After every batch the run measures, on the model with all batches so far: ES/PS/NS over all edits
so far and over the latest batch (SPEC 4), with success by generation beside them (ES_gen, PS_gen,
NS_gen, SPEC 6; unless `by_generation` is off; a run resumed from an older version has None where it
was not measured), perplexity on held-out Wikipedia text and retention of a
fixed probe set of known facts (editor.evaluation.health), the growth of each edited matrix's norm, and the time.
A batch after which the model has collapsed (perplexity over `collapse_ratio` x the unedited's, a
non-finite logit, or an update that is not finite) is not kept: the run stops with the last healthy
ledger. `on_batch` is called after every kept batch (the CLI writes the JSON and the ledger there, so
a stopped run resumes from its last batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from core.errors import InputError, LocusError
from core.facts import KnownFact
from core.loading import LoadedModel
from core.progress import Progress, stage
from editor.edits.ledger import EditLedger
from editor.edits.weights import projection_weight
from editor.evaluation.counterfact import CounterFactRecord
from editor.evaluation.evaluate import score_records, summarize
from editor.evaluation.health import (
    COLLAPSE_RATIO,
    Health,
    collapse_message,
    held_out_texts,
    measure_health,
    probe_facts,
)
from editor.evaluation.metrics import RecordScores
from editor.methods.base import EditMethod
from editor.statistics.corpus import WIKIPEDIA
from editor.statistics.covariance import layer_covariances

SCORE_KEYS = ("ES", "PS", "NS", "S", "ES_gen", "PS_gen", "NS_gen", "efficacy_accuracy", "neighborhood_accuracy", "n")


def score_summary(per_record: list[RecordScores]) -> dict:
    """ES/PS/NS/S, success by generation and the accuracies (percent) of some records' scores."""
    scores = summarize(per_record, []).to_dict()
    return {key: scores[key] for key in SCORE_KEYS}


def record_chunks(records: list[CounterFactRecord], batch_size: int, batches: int) -> list[list[CounterFactRecord]]:
    """The first batch_size x batches records in batches (InputError when there are too few)."""
    if batch_size < 1 or batches < 1:
        raise InputError("--batch-size and --batches must be at least 1.")
    needed = batch_size * batches
    if needed > len(records):
        raise InputError(f"{batches} batches of {batch_size} need {needed:,} records; the data has {len(records):,}.")
    return [records[index * batch_size : (index + 1) * batch_size] for index in range(batches)]


def differing_keys(earlier: dict, settings: dict, keys) -> list[str]:
    """The `keys` whose value in an earlier run's `earlier` settings is not the one in `settings`."""
    return [key for key in keys if earlier.get(key) != settings[key]]


def resume_mismatch(earlier: dict, settings: dict, unused: tuple[str, ...] = (), defaults: dict | None = None) -> list[str]:
    """The names of the settings in which a kept run (`earlier`) differs from the run asked for (`settings`).

    Compared: data, batch size, method, layers and every method setting except those the method ignores
    (`unused`). A setting one side did not record (a run of an older version; a setting left out at its
    default) counts as its value in `defaults` (the settings class's); one in neither is not compared.
    """
    names = differing_keys(earlier, settings, ("data", "batch_size", "method", "layers"))
    kept, asked, defaults = earlier.get("hparams", {}), settings["hparams"], defaults or {}
    if not kept:  # a run of a version that recorded no settings
        return names
    for key in [*asked, *(key for key in kept if key not in asked)]:
        if key in names or key in unused:
            continue
        before, now = kept.get(key, defaults.get(key)), asked.get(key, defaults.get(key))
        if before is not None and now is not None and before != now:
            names.append(key)
    return names


def matrix_norms(loaded: LoadedModel, layers) -> dict[int, float]:
    """||W_l||_F of the edited matrices as they are on the model now."""
    return {layer: float(projection_weight(loaded, layer).double().norm()) for layer in layers}


def change_norms(loaded: LoadedModel, originals: dict[int, torch.Tensor]) -> dict[int, float]:
    """||W_l - W_l(original)||_F for the matrices in `originals`."""
    return {layer: float((projection_weight(loaded, layer).double() - weight.double()).norm()) for layer, weight in originals.items()}


@dataclass
class SequentialRun:
    """A sequential run as it goes: its settings, the unedited model's figures, and one row per kept batch."""

    settings: dict
    unedited: dict
    batches: list[dict] = field(default_factory=list)
    stopped: str | None = None  # the plain message of a collapse, when the run stopped early
    collapse: dict | None = None  # the figures of the batch that was not kept
    # per record [es, ps, ns, efficacy acc., nbr acc., es_gen, ps_gen, ns_gen] (the last three absent in older runs)
    unedited_records: list[list] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SequentialRun:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})

    def table(self) -> str:
        """A plain-text table of the curves (one line per batch, after the unedited line)."""
        header = (f"{'edits':>6} {'ES':>6} {'PS':>6} {'NS':>6} {'ES-gen':>6} {'PS-gen':>6} {'NS-gen':>6} {'ppl':>8} {'x ppl':>6} "
                  f"{'retain':>7} {'max norm':>9} {'s':>7}")
        lines = [header]
        base = self.unedited
        lines.append(f"{'0':>6} {_scores(base)} "
                     f"{_cell(base.get('perplexity'), 8, 2)} {'1.00':>6} {_cell(base.get('retention'), 7)} {'1.000':>9} {'':>7}")
        for row in self.batches:
            growth = max(row["norm_growth"].values()) if row["norm_growth"] else 1.0
            lines.append(f"{row['edits']:>6} {_scores(row)} {_cell(row['perplexity'], 8, 2)} "
                         f"{row['perplexity_ratio']:>6.2f} {_cell(row['retention'], 7)} {growth:>9.3f} {row['seconds']:>7.0f}")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return "\n".join(lines)


def _cell(value, width: int = 6, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _scores(row: dict) -> str:
    """ES, PS, NS and ES/PS/NS by generation of a row (dashes where a row of an older run has none)."""
    return " ".join(_cell(row.get(key)) for key in ("ES", "PS", "NS", "ES_gen", "PS_gen", "NS_gen"))


def _record_row(score: RecordScores) -> list:
    return [score.es, score.ps, score.ns, score.efficacy_accuracy, score.neighborhood_accuracy, score.es_gen, score.ps_gen,
            score.ns_gen]


def _record_score(row: list) -> RecordScores:
    return RecordScores(*row)  # a row of an older run has no es_gen, ps_gen, ns_gen: None


def run_sequential(
    loaded: LoadedModel,
    records: list[CounterFactRecord],
    method: EditMethod,
    batch_size: int,
    batches: int,
    *,
    run: SequentialRun | None = None,
    ledger: EditLedger | None = None,
    probes: list[KnownFact] | None = None,
    texts: list[str] | tuple[str, ...] | None = None,
    collapse_ratio: float = COLLAPSE_RATIO,
    settings: dict | None = None,
    on_batch: Callable[[SequentialRun, EditLedger], None] | None = None,
    progress: Progress | None = None,
    by_generation: bool = True,
) -> tuple[SequentialRun, EditLedger]:
    """Edit `records` in `batches` batches of `batch_size`, measuring after each (see the module docstring).

    `run` and `ledger` continue an earlier run (the ledger holds its kept batches). Returns the run and
    the last healthy ledger. The model's weights are left as they were.
    """
    chunks = record_chunks(records, batch_size, batches)
    if method.edits_one_layer:
        raise InputError(f"Sequential runs edit batches over the layers R; {method.label} edits one fact at a time.")
    if collapse_ratio <= 1:
        raise InputError(f"The collapse ratio must be above 1, got {collapse_ratio:g}.")
    ledger = ledger if ledger is not None else EditLedger.for_model(loaded)
    if run is not None and len(run.batches) != len(ledger):
        raise InputError(f"The run has {len(run.batches)} batches but its ledger has {len(ledger)}; they do not belong together.")
    if len(ledger) > batches:
        raise InputError(f"The ledger already holds {len(ledger)} batches, more than the {batches} asked for.")
    texts = texts if texts is not None else held_out_texts(WIKIPEDIA)  # perplexity is always measured on Wikipedia
    edited_subjects = {record.subject for chunk in chunks for record in chunk}
    probes = probes if probes is not None else probe_facts(loaded, edited_subjects)
    chosen = [record for chunk in chunks for record in chunk]
    layers = list(method.layers)
    originals = {layer: projection_weight(loaded, layer).detach().clone() for layer in layers}
    unedited_norms = matrix_norms(loaded, layers)
    if run is None:
        clock = time.perf_counter()
        health = measure_health(loaded, probes, texts, stage(progress, 0.0, 0.02))
        pre, _ = score_records(loaded, chosen, generation=False, by_generation=by_generation, progress=stage(progress, 0.02, 0.04))
        unedited = {**score_summary(pre), **health.to_dict(), "seconds": time.perf_counter() - clock}
        run = SequentialRun(settings={**(settings or {}), "torch_threads": torch.get_num_threads()}, unedited=unedited, unedited_records=[_record_row(s) for s in pre])
    if run.stopped:
        return run, ledger
    unedited_health = Health.from_dict(run.unedited)
    pre = [_record_score(row) for row in run.unedited_records]
    covariances = (layer_covariances(loaded, layers, method.settings.cov_tokens, method.settings.corpus, stage(progress, 0.04, 0.06))
                   if method.uses_covariance else None)
    started = time.perf_counter() - sum(row["seconds"] for row in run.batches)
    for index in range(len(ledger), batches):
        report = stage(progress, 0.06 + 0.94 * index / batches, 0.06 + 0.94 * (index + 1) / batches)
        chunk = chunks[index]
        clock = time.perf_counter()
        try:
            batch = method.compute(loaded, [record.request() for record in chunk], ledger, covariances, stage(report, 0.0, 0.8))
        except LocusError as error:  # NaN/Inf targets or updates: the model (or the solve) has broken down
            run.stopped = f"Batch {index + 1} could not be computed: {error}"
            run.collapse = {"batch": index + 1, "error": str(error)}
            break
        edit_seconds = time.perf_counter() - clock
        candidate = ledger.with_batch(batch)
        clock = time.perf_counter()
        with candidate.applied(loaded):
            health = measure_health(loaded, probes, texts, stage(report, 0.8, 0.9))
            norms = matrix_norms(loaded, layers)
            changes = change_norms(loaded, originals)
            collapsed = collapse_message(unedited_health, health, collapse_ratio)
            if collapsed is None:
                done = (index + 1) * batch_size
                post, _ = score_records(loaded, chosen[:done], generation=False, by_generation=by_generation,
                                        progress=stage(report, 0.9, 1.0))
        measure_seconds = time.perf_counter() - clock
        figures = {
            "perplexity": health.to_dict()["perplexity"],
            "perplexity_ratio": health.perplexity / unedited_health.perplexity,
            "retention": health.retention,
            "forgotten": health.forgotten,  # the probe facts not kept: {prompt, expected, answer}
            "finite": health.finite,
            "norm_growth": {str(layer): norms[layer] / unedited_norms[layer] for layer in layers},
            "relative_change": {str(layer): changes[layer] / unedited_norms[layer] for layer in layers},
        }
        if collapsed is not None:
            run.stopped = f"Stopped after {len(ledger)} healthy batch(es): batch {index + 1} broke the model. {collapsed}"
            run.collapse = {"batch": index + 1, **figures, "edit_seconds": edit_seconds, "measure_seconds": measure_seconds}
            break
        ledger = candidate
        row = {
            "batch": index + 1,
            "edits": done,
            **{key: value for key, value in score_summary(post).items() if key != "n"},
            "latest": score_summary(post[-batch_size:]),
            "unedited_so_far": score_summary(pre[:done]),
            **figures,
            "seconds": edit_seconds + measure_seconds,
            "edit_seconds": edit_seconds,
            "measure_seconds": measure_seconds,
            "elapsed_seconds": time.perf_counter() - started,
            "batch_id": batch.batch_id,
            "ledger_bytes": ledger.nbytes(),
            "warnings": list(dict.fromkeys(batch.warnings)),
        }
        run.batches.append(row)
        if on_batch is not None:
            on_batch(run, ledger)
    if progress is not None:
        progress(1.0, run.stopped or f"{len(run.batches)} batch(es) done")
    return run, ledger
