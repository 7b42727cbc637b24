"""Model health (SPEC section 6): perplexity on held-out Wikipedia text and retention of known facts.

Perplexity = exp(mean token NLL) over the last HELD_OUT_TEXTS texts of the covariance corpus's order
(never read for C), each cut to PERPLEXITY_TOKENS tokens. Retention = the share of a fixed probe set
of PROBE_COUNT facts the model knows, none edited, whose greedy first token is still the known
attribute's first token. Collapse: perplexity over COLLAPSE_RATIO x the unedited's, or a non-finite
logit. Drift warnings: perplexity over PERPLEXITY_WARNING x the unedited's, or retention below
RETENTION_WARNING x the unedited's. `model_health` measures both for a ledger and caches the figures
per (model, probe set, ledger state).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

from core.errors import LocusError
from core.facts import KnownFact, facts_model_knows, model_key
from core.hooks import capture_outputs
from core.loading import LoadedModel
from core.progress import Progress, safe_point, stage
from core.tokens import target_token_ids
from editor.edits.ledger import EditLedger, edits_applied
from editor.passes.forward import pad_id, pad_right, row_batches, run_until
from editor.statistics.corpus import WIKIPEDIA, Corpus, load_corpus

PERPLEXITY_TOKENS = 256
PROBE_COUNT = 100
COLLAPSE_RATIO = 2.0  # SPEC 6: perplexity over twice the unedited's is a collapse
PERPLEXITY_WARNING = 1.10  # warn when perplexity rises more than 10% ...
RETENTION_WARNING = 0.90  # ... or retention falls below 90% of the unedited's
BATCH_TOKENS = 2048  # padded tokens per forward pass
LOGIT_CHUNK = 512  # positions per vocabulary-sized logits block
PERPLEXITY_SHARE = 0.95  # of one state's measurement: ~20,000 held-out tokens against 100 short probe prompts (measured
# on the embedded model: 32 s and 1.5 s on 2 CPU cores)


# --- measurements on the model as it is now -------------------------------------------------------


@torch.inference_mode()
def perplexity(
    loaded: LoadedModel, texts: list[str] | tuple[str, ...], max_tokens: int = PERPLEXITY_TOKENS, progress: Progress | None = None
) -> tuple[float, int, bool]:
    """(exp(mean token NLL), tokens scored, every logit finite) over `texts`, each cut to `max_tokens` tokens."""
    limit = max(2, min(max_tokens, loaded.max_length))
    rows = [ids for ids in (list(loaded.tokenizer(text)["input_ids"])[:limit] for text in texts) if len(ids) >= 2]
    if not rows:
        raise LocusError("The held-out texts have no tokens to score.")
    layout = loaded.layout
    last_block = layout.block(layout.num_layers - 1)
    total, count, finite, done, scored = 0.0, 0, True, 0, 0
    all_tokens = sum(len(row) for row in rows)  # progress in tokens: a batch's time follows its tokens, not its texts
    for batch in row_batches([len(row) for row in rows], max_rows=64, max_tokens=BATCH_TOKENS):
        ids, mask = pad_right([rows[i] for i in batch], pad_id(loaded.tokenizer), loaded.device)
        with capture_outputs(loaded.model, [last_block]) as outputs:
            run_until(loaded, layout.num_layers - 1, input_ids=ids, attention_mask=mask, use_cache=False)
        hidden = outputs[last_block]
        predicted = mask[:, 1:].bool()  # position t predicts token t + 1
        states, targets = hidden[:, :-1][predicted], ids[:, 1:][predicted]
        for start in range(0, len(targets), LOGIT_CHUNK):
            logits = layout.final_logits(loaded.model, states[start : start + LOGIT_CHUNK]).float()
            finite = finite and bool(torch.isfinite(logits).all())
            chosen = targets[start : start + LOGIT_CHUNK]
            total += float(-torch.log_softmax(logits, dim=-1).gather(-1, chosen.unsqueeze(-1)).sum())
            count += len(chosen)
        done += len(batch)
        scored += sum(len(rows[i]) for i in batch)
        if progress is not None:
            progress(scored / all_tokens, f"perplexity: {done}/{len(rows)} held-out texts")
            safe_point(progress)
    mean = total / count
    return (math.exp(mean) if math.isfinite(mean) and mean < 700 else math.inf), count, finite and math.isfinite(mean)


def retention(loaded: LoadedModel, facts: list[KnownFact], progress: Progress | None = None) -> tuple[float, bool]:
    """(percent of `facts` whose greedy next token is their attribute's first token, every logit finite)."""
    kept, finite, _ = retention_with_forgotten(loaded, facts, progress)
    return kept, finite


def retention_with_forgotten(
    loaded: LoadedModel, facts: list[KnownFact], progress: Progress | None = None
) -> tuple[float, bool, list[dict]]:
    """Retention as `retention` gives it, and the facts not kept: [{prompt, expected, answer}] (answer: the greedy token)."""
    answers = probe_answers(loaded, facts, progress)
    forgotten = [lost_fact(fact, answer, loaded.tokenizer) for fact, answer, kept in zip(facts, answers.answers, answers.kept) if not kept]
    return answers.retention, answers.finite, forgotten


def lost_fact(fact: KnownFact, answer: int, tokenizer) -> dict:
    """{prompt, expected, answer} of a probe fact whose greedy first token is now `answer` instead of its attribute's."""
    return {"prompt": fact.prompt, "expected": fact.attribute, "answer": tokenizer.decode([answer])}


@dataclass
class ProbeAnswers:
    """The model's greedy first token for each probe fact, and how far the known attribute leads."""

    answers: list[int]  # the greedy next token per fact
    expected: list[int]  # the first token of each fact's known attribute
    margins: list[float]  # log p(expected) - the largest other log p (< 0: another token leads)
    finite: bool  # every logit was finite

    @property
    def kept(self) -> list[bool]:
        """Per fact: the greedy answer is the known attribute's first token."""
        return [answer == expected for answer, expected in zip(self.answers, self.expected)]

    @property
    def retention(self) -> float:
        """Percent of the facts kept."""
        return 100.0 * sum(self.kept) / len(self.answers)


@torch.inference_mode()
def probe_answers(loaded: LoadedModel, facts: list[KnownFact], progress: Progress | None = None) -> ProbeAnswers:
    """Greedy answers and margins of `facts` (their prompts, batched) on the model as it is now."""
    if not facts:
        raise LocusError("There are no probe facts to measure retention with.")
    tokenizer, layout = loaded.tokenizer, loaded.layout
    rows = [list(tokenizer(fact.prompt)["input_ids"]) for fact in facts]
    expected = [target_token_ids(tokenizer, fact.attribute, prompt=fact.prompt)[0] for fact in facts]
    last_block = layout.block(layout.num_layers - 1)
    answers, margins = [0] * len(facts), [0.0] * len(facts)
    finite, done = True, 0
    for batch in row_batches([len(row) for row in rows], max_rows=64, max_tokens=BATCH_TOKENS):
        ids, mask = pad_right([rows[i] for i in batch], pad_id(tokenizer), loaded.device)
        with capture_outputs(loaded.model, [last_block]) as outputs:
            run_until(loaded, layout.num_layers - 1, input_ids=ids, attention_mask=mask, use_cache=False)
        last = torch.tensor([len(rows[i]) - 1 for i in batch], device=ids.device)
        logits = layout.final_logits(loaded.model, outputs[last_block][torch.arange(len(batch), device=ids.device), last]).float()
        finite = finite and bool(torch.isfinite(logits).all())
        chosen = torch.tensor([expected[i] for i in batch], device=logits.device)
        log_probs = torch.log_softmax(logits, dim=-1)
        known = log_probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
        others = log_probs.scatter(-1, chosen.unsqueeze(-1), -math.inf).max(-1).values
        for i, answer, margin in zip(batch, logits.argmax(-1).tolist(), (known - others).tolist()):
            answers[i], margins[i] = int(answer), float(margin)
        done += len(batch)
        if progress is not None:
            progress(done / len(rows), f"retention: {done}/{len(rows)} known facts")
            safe_point(progress)
    return ProbeAnswers(answers, expected, margins, finite)


def probe_facts(loaded: LoadedModel, exclude_subjects=(), count: int = PROBE_COUNT) -> list[KnownFact]:
    """A fixed probe set: up to `count` facts the model knows, relations in turn (by known_id), none whose
    subject equals, contains or is contained in one of `exclude_subjects`."""
    excluded = {subject for subject in exclude_subjects if subject}
    by_relation: dict[str, list[KnownFact]] = defaultdict(list)
    seen = set()
    for fact in sorted(facts_model_knows(loaded), key=lambda f: f.known_id):
        if fact.subject in seen or any(fact.subject in other or other in fact.subject for other in excluded):
            continue
        seen.add(fact.subject)
        by_relation[fact.relation_id].append(fact)
    relations = sorted(by_relation, key=lambda relation: (-len(by_relation[relation]), relation))
    depth = max((len(items) for items in by_relation.values()), default=0)
    ordered = [by_relation[relation][index] for index in range(depth) for relation in relations if index < len(by_relation[relation])]
    return ordered[:count]


def held_out_texts(corpus: str | Corpus = WIKIPEDIA) -> tuple[str, ...]:
    """The corpus's held-out texts (the last ones of its order, never read for covariance statistics)."""
    corpus = load_corpus(corpus) if isinstance(corpus, str) else corpus
    texts = corpus.held_out_texts()
    if not texts:
        raise LocusError(f"The corpus {corpus.name!r} is too small to hold texts out for perplexity ({len(corpus)} texts).")
    return texts


# --- figures and judgements ---------------------------------------------------------------------


@dataclass
class Health:
    """Perplexity and retention of the model as it was measured (retention in percent of the probe facts)."""

    perplexity: float
    retention: float
    finite: bool  # every logit of both measurements was finite
    tokens: int  # held-out tokens scored
    probes: int  # probe facts
    seconds: float = 0.0
    forgotten: list[dict] = field(default_factory=list)  # probe facts not kept: {prompt, expected, answer}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["perplexity"] = self.perplexity if math.isfinite(self.perplexity) else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Health:
        values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        values["perplexity"] = math.inf if values.get("perplexity") is None else values["perplexity"]
        return cls(**values)


def measure_health(
    loaded: LoadedModel, probes: list[KnownFact], texts, progress: Progress | None = None, max_tokens: int = PERPLEXITY_TOKENS
) -> Health:
    """Perplexity on `texts` and retention of `probes` on the model as it is now."""
    started = time.perf_counter()
    with loaded.lock:
        value, tokens, finite_text = perplexity(loaded, texts, max_tokens, stage(progress, 0.0, PERPLEXITY_SHARE))
        kept, finite_facts, forgotten = retention_with_forgotten(loaded, probes, stage(progress, PERPLEXITY_SHARE, 1.0))
    return Health(value, kept, finite_text and finite_facts, tokens, len(probes), time.perf_counter() - started, forgotten)


def collapse_message(unedited: Health, edited: Health, ratio: float = COLLAPSE_RATIO) -> str | None:
    """A plain sentence when the edited model has collapsed (SPEC 6), else None."""
    if not edited.finite:
        return "The edited model produces non-finite logits (NaN or Inf): it has collapsed."
    if edited.perplexity > ratio * unedited.perplexity:
        return (f"The edited model has collapsed: its perplexity on held-out text is {edited.perplexity:.1f}, more than "
                f"{ratio:g}x the unedited model's {unedited.perplexity:.1f}.")
    return None


def health_warnings(unedited: Health, edited: Health) -> list[str]:
    """Drift warnings: perplexity more than PERPLEXITY_WARNING x, retention below RETENTION_WARNING x the unedited's."""
    collapsed = collapse_message(unedited, edited)
    if collapsed:
        return [collapsed]
    warnings = []
    if edited.perplexity > PERPLEXITY_WARNING * unedited.perplexity:
        warnings.append(f"Perplexity on held-out text rose from {unedited.perplexity:.2f} to {edited.perplexity:.2f} "
                        f"(x{edited.perplexity / unedited.perplexity:.2f}, more than x{PERPLEXITY_WARNING:.2f}): "
                        "the edits are changing how the model writes ordinary text.")
    if edited.retention < RETENTION_WARNING * unedited.retention:
        warnings.append(f"Only {edited.retention:.0f}% of the probe facts the model knew are still answered "
                        f"(unedited: {unedited.retention:.0f}%, warning below {RETENTION_WARNING:.0%} of that): "
                        "the edits are overwriting unrelated knowledge.")
    return warnings


@dataclass
class HealthReport:
    """Health before and after a ledger's edits, with the drift warnings (what the app shows)."""

    unedited: Health
    edited: Health | None  # None when the ledger is empty
    edits: int
    warnings: list[str] = field(default_factory=list)

    @property
    def perplexity_ratio(self) -> float | None:
        return None if self.edited is None else self.edited.perplexity / self.unedited.perplexity

    @property
    def collapsed(self) -> str | None:
        return None if self.edited is None else collapse_message(self.unedited, self.edited)

    def to_dict(self) -> dict:
        return {
            "unedited": self.unedited.to_dict(),
            "edited": None if self.edited is None else self.edited.to_dict(),
            "edits": self.edits,
            "perplexity_ratio": self.perplexity_ratio,
            "collapsed": self.collapsed,
            "warnings": list(self.warnings),
            "thresholds": {"perplexity_warning": PERPLEXITY_WARNING, "retention_warning": RETENTION_WARNING,
                           "collapse_ratio": COLLAPSE_RATIO},
        }


_CACHE: OrderedDict[tuple, tuple] = OrderedDict()  # perplexity and retention figures per (what, model, ..., ledger state)
_CACHE_LOCK = threading.Lock()
_CACHE_LIMIT = 256


def _remembered(key: tuple) -> tuple | None:
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    return None


def _remember(key: tuple, value: tuple) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_LIMIT:
            _CACHE.popitem(last=False)


def forget_health_figures() -> None:
    """Forget every remembered perplexity and retention figure (the next measurement computes them again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _state_keys(loaded: LoadedModel, ledger: EditLedger | None, probes: list[KnownFact], corpus: Corpus) -> tuple[tuple, tuple]:
    """The cache keys of a state's perplexity (ledger state only) and retention (also the probe set)."""
    state = tuple(batch.batch_id for batch in ledger) if ledger is not None else ()
    model = model_key(loaded)
    return (("perplexity", model, corpus.digest, PERPLEXITY_TOKENS, state),
            ("retention", model, tuple((fact.prompt, fact.attribute) for fact in probes), state))


def _state_health(
    loaded: LoadedModel, ledger: EditLedger | None, probes: list[KnownFact], corpus: Corpus, progress: Progress | None
) -> Health:
    """Health of the model with `ledger` applied (None: unedited); perplexity and retention cached apart.

    Perplexity depends only on the ledger state; retention also on the probe set (cheap to redo).
    """
    text_key, fact_key = _state_keys(loaded, ledger, probes, corpus)
    text, facts = _remembered(text_key), _remembered(fact_key)
    if text is None or facts is None:
        split = PERPLEXITY_SHARE if text is None else 0.0  # a remembered figure takes no share of the progress
        context = ledger.applied(loaded) if ledger is not None else loaded.lock
        with context:
            if text is None:
                clock = time.perf_counter()
                text = (*perplexity(loaded, held_out_texts(corpus), PERPLEXITY_TOKENS, stage(progress, 0.0, split if facts is None else 1.0)),
                        time.perf_counter() - clock)
                _remember(text_key, text)
            if facts is None:
                clock = time.perf_counter()
                facts = (*retention_with_forgotten(loaded, probes, stage(progress, split, 1.0)), time.perf_counter() - clock)
                _remember(fact_key, facts)
    value, tokens, finite_text, text_seconds = text
    kept, finite_facts, forgotten, fact_seconds = facts
    return Health(value, kept, finite_text and finite_facts, tokens, len(probes), text_seconds + fact_seconds, forgotten)


def health_cost(loaded: LoadedModel, ledger: EditLedger | None, probes: list[KnownFact], corpus: str | Corpus = WIKIPEDIA) -> float:
    """The share of a full measurement that measuring this state still needs: 0 when its figures are remembered."""
    corpus = load_corpus(corpus) if isinstance(corpus, str) else corpus
    text_key, fact_key = _state_keys(loaded, ledger if ledger is not None and len(ledger) else None, probes, corpus)
    text, facts = _remembered(text_key) is None, _remembered(fact_key) is None
    return (PERPLEXITY_SHARE if text else 0.0) + ((1.0 - PERPLEXITY_SHARE) if facts else 0.0)


def original_share(loaded: LoadedModel, ledger: EditLedger | None, probes: list[KnownFact], corpus: str | Corpus = WIKIPEDIA) -> float:
    """Where the original model's measurement ends on a bar shared with `ledger`'s, by what each still costs (1.0
    without a ledger; half-way when both are remembered)."""
    if ledger is None or not len(ledger):
        return 1.0
    first, second = health_cost(loaded, None, probes, corpus), health_cost(loaded, ledger, probes, corpus)
    return first / (first + second) if first + second > 0 else 0.5


def _ledger_subjects(ledger: EditLedger | None) -> list[str]:
    return [request.subject for request in ledger.requests] if ledger is not None else []


def model_health(
    loaded: LoadedModel,
    ledger: EditLedger | None = None,
    progress: Progress | None = None,
    *,
    corpus: str | Corpus = WIKIPEDIA,
    probes: list[KnownFact] | None = None,
) -> HealthReport:
    """Perplexity and retention before and after `ledger`'s edits, with drift warnings; cached per ledger state.

    The probe set (default) leaves out facts about the ledger's subjects. Call with no ledger applied.
    """
    if edits_applied(loaded):
        raise LocusError("model_health measures the unedited model itself: call it outside `ledger.applied`.")
    corpus = load_corpus(corpus) if isinstance(corpus, str) else corpus
    ledger = ledger if ledger is not None and len(ledger) else None
    probes = probes if probes is not None else probe_facts(loaded, _ledger_subjects(ledger))
    split = original_share(loaded, ledger, probes, corpus)
    unedited = _state_health(loaded, None, probes, corpus, stage(progress, 0.0, split))
    edited = _state_health(loaded, ledger, probes, corpus, stage(progress, split, 1.0)) if ledger else None
    if progress is not None:
        progress(1.0, "model health measured")
    if edited is None:
        return HealthReport(unedited, None, 0)
    return HealthReport(unedited, edited, len(ledger.requests), health_warnings(unedited, edited))


def health_history_stream(
    loaded: LoadedModel,
    ledger: EditLedger,
    progress: Progress | None = None,
    *,
    corpus: str | Corpus = WIKIPEDIA,
    probes: list[KnownFact] | None = None,
) -> Iterator[HealthReport]:
    """One HealthReport per batch of `ledger` (the model with batches 1..i applied), yielded as each is measured.

    All reports use one probe set, which leaves out every subject of the ledger; perplexities already
    measured (by `model_health` after each batch) come from the cache, so only retention is measured again.
    """
    if ledger is None or not len(ledger):
        return
    probes = probes if probes is not None else probe_facts(loaded, _ledger_subjects(ledger))
    corpus = load_corpus(corpus) if isinstance(corpus, str) else corpus
    prefixes = []
    for count in range(1, len(ledger) + 1):
        prefix = EditLedger(ledger.model, ledger.base_hashes)
        prefix.batches = list(ledger.batches[:count])
        prefixes.append(prefix)
    costs = [health_cost(loaded, prefix, probes, corpus) for prefix in prefixes]  # a remembered state takes no share
    costs[0] += health_cost(loaded, None, probes, corpus)
    total, done = sum(costs), 0.0
    for prefix, cost in zip(prefixes, costs):
        low, high = (done / total, (done + cost) / total) if total else (0.0, 1.0)
        done += cost
        yield model_health(loaded, prefix, stage(progress, low, high), corpus=corpus, probes=probes)

