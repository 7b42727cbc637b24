"""The lifelong set: 1,000+ CounterFact-format records for sequential editing, built from the CounterFact rewrites.

Records are CounterFact's own rewrites (cases 0-999 first, then further cases from CounterFact's
sentences until the set is full), whether or not a model knows the fact: ES/PS compare the new object
with the true one either way. Paraphrase and neighbourhood prompts are made by the dev set's builder
(`editor.studies.devset.build_records`): paraphrases are other templates of the same relation, neighbours are
other subjects with the same relation and true object in the rewrite template, and no subject is both
a record and a neighbour (in a sequential run every record is edited in the end).

CounterFact's rewrites carry no relation id, so each case gets one: the relation of the known_1000
fact with the same subject and object when there is one; otherwise the relation its template votes
for (known_1000 templates vote for their relation; a template also collects the relations of the
known_1000 facts among its cases), where a template with several relations (CounterFact's "{}, the"
serves instruments, sports and positions) picks the one whose known objects hold the case's object
most often; a template with no vote takes the relation whose objects are most alike (cosine of the
object counts, at least MIN_SIMILARITY), else its cases are left out. Regenerate with
`python -m editor lifelong-set`.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from core.facts import ASSETS, KnownFact, load_known_facts
from editor.evaluation.counterfact import CounterFactRecord
from editor.studies.devset import COUNTERFACT_FILE, build_records, relation_templates, write_devset

SENTENCES_FILE = ASSETS / "data" / "counterfact_sentences.jsonl"
LIFELONG_FILE = ASSETS / "lifelong_counterfact.json"
DEFAULT_RECORDS = 1100
MIN_SIMILARITY = 0.5
ID_OFFSET = 1_000_000  # known_id of a CounterFact case inside build_records: case_id + ID_OFFSET (never a known_1000 id)
ATTRIBUTION = (
    "Built by `python -m editor lifelong-set` from counterfact_rewrites_0-999.json and counterfact_sentences.jsonl "
    "(CounterFact, Meng et al. 2022, MIT license) and known_1000.json (ROME dataset, Meng et al. 2022, MIT license): "
    "CounterFact rewrites with paraphrase and neighbourhood prompts made as the dev set makes them."
)


@dataclass(frozen=True)
class CounterFactCase:
    """One CounterFact rewrite: `template.format(subject)` is completed by `target_true`; the rewrite asks `target_new`."""

    case_id: int
    template: str
    subject: str
    target_true: str
    target_new: str


def rewrite_cases(path: Path = COUNTERFACT_FILE) -> list[CounterFactCase]:
    """The cases of a CounterFact rewrites file (a list of {case_id, requested_rewrite})."""
    cases = []
    for item in json.loads(Path(path).read_text(encoding="utf-8")):
        rewrite = item["requested_rewrite"]
        cases.append(CounterFactCase(int(item["case_id"]), rewrite["prompt"], rewrite["subject"],
                                     rewrite["target_true"]["str"], rewrite["target_new"]["str"]))
    return cases


def split_sentence(correct: str, incorrect: str, templates: list[str]) -> tuple[str, str, str, str] | None:
    """(template, subject, true object, new object) of a sentence pair, trying `templates` in order; None if none fits."""
    for template in templates:
        before, after = template.split("{}")
        if not after or not correct.startswith(before) or not incorrect.startswith(before):
            continue
        rest_correct, rest_incorrect = correct[len(before):], incorrect[len(before):]
        position = rest_correct.find(after + " ")
        while position > 0:
            subject = rest_correct[:position]
            if rest_incorrect.startswith(subject + after + " "):
                start = position + len(after) + 1
                return template, subject, rest_correct[start:], rest_incorrect[start:]
            position = rest_correct.find(after + " ", position + 1)
    return None


def sentence_cases(path: Path = SENTENCES_FILE, templates: list[str] | None = None) -> list[CounterFactCase]:
    """CounterFact cases recovered from its sentences ({case_id, correct, incorrect}) with known templates."""
    if not Path(path).is_file():
        return []
    ordered = sorted(set(templates or []), key=lambda template: (-len(template), template))  # longest match first
    cases = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        found = split_sentence(item["correct"], item["incorrect"], ordered)
        if found is not None and found[2] != found[3]:
            cases.append(CounterFactCase(int(item["case_id"]), *found))
    return cases


def cosine(first: Counter, second: Counter) -> float:
    """Cosine similarity of two count vectors (0 when either is empty)."""
    dot = sum(count * second[key] for key, count in first.items())
    norms = math.sqrt(sum(c * c for c in first.values()) * sum(c * c for c in second.values()))
    return dot / norms if norms else 0.0


def label_relations(cases: list[CounterFactCase], facts: list[KnownFact]) -> dict[int, str]:
    """case_id -> relation id for the cases that can be labelled (see the module docstring for the rules)."""
    fact_relation = {(fact.subject, fact.attribute): fact.relation_id for fact in facts}
    votes: dict[str, Counter] = defaultdict(Counter)
    for relation, templates in relation_templates(facts).items():
        for template in templates:
            votes[template][relation] += 1000  # a known_1000 template belongs to its relation
    template_objects: dict[str, Counter] = defaultdict(Counter)
    for case in cases:
        template_objects[case.template][case.target_true] += 1
        relation = fact_relation.get((case.subject, case.target_true))
        if relation:
            votes[case.template][relation] += 1
    objects: dict[str, Counter] = defaultdict(Counter)
    for fact in facts:
        objects[fact.relation_id][fact.attribute] += 1
    for template, counts in template_objects.items():
        if len(votes[template]) == 1:
            objects[next(iter(votes[template]))].update(counts)
    for template, counts in template_objects.items():
        if not votes[template]:
            score, relation = max((cosine(counts, objects[r]), r) for r in sorted(objects))
            if score >= MIN_SIMILARITY:
                votes[template][relation] += 1
    labels = {}
    for case in cases:
        relation = fact_relation.get((case.subject, case.target_true))
        candidates = votes.get(case.template)
        if relation is None and candidates:
            relation = max(sorted(candidates), key=lambda r: ((objects[r][case.target_true] + 1) * candidates[r], r))
        if relation:
            labels[case.case_id] = relation
    return labels


def case_fact(case: CounterFactCase, relation: str) -> KnownFact:
    """A case as a fact for the dev set's builder (its known_id is case_id + ID_OFFSET)."""
    return KnownFact(case.case_id + ID_OFFSET, case.subject, case.target_true, case.template,
                     case.template.format(case.subject), relation)


def overlaps(subject: str, others: set[str]) -> bool:
    """True when `subject` equals, contains or is contained in one of `others`."""
    return any(subject in other or other in subject for other in others)


def build_lifelong_records(
    rewrites: list[CounterFactCase],
    extra: list[CounterFactCase],
    facts: list[KnownFact],
    *,
    max_records: int = DEFAULT_RECORDS,
    max_paraphrases: int = 3,
    max_neighbors: int = 5,
) -> list[CounterFactRecord]:
    """Records from `rewrites` first, topped up from `extra` (other cases) to `max_records`; case ids 'cf-<case>'."""
    labels = label_relations(rewrites + extra, facts)
    by_id = {case.case_id: case for case in rewrites + extra}
    pool = facts + [case_fact(case, labels[case.case_id]) for case in by_id.values() if case.case_id in labels]
    targets = {(case.subject, case.target_true): (case.case_id, case.target_new) for case in reversed(rewrites + extra)}
    options = dict(max_paraphrases=max_paraphrases, max_neighbors=max_neighbors, per_relation=max_records,
                   counterfact=targets)
    first = [case_fact(case, labels[case.case_id]) for case in rewrites if case.case_id in labels]
    records = build_records(first, pool, max_records=max_records, **options)
    if len(records) < max_records:
        # The second round must not break the first round's rule: no record subject is another record's neighbour.
        chosen = {record.subject for record in records}
        neighbours = {prompt for record in records for prompt in record.neighborhood_prompts}
        taken = {case.subject for case in rewrites} | chosen
        more = [case_fact(case, labels[case.case_id]) for case in extra if case.case_id in labels
                and case.subject not in taken and not overlaps(case.subject, chosen)
                and not any(case.subject in prompt for prompt in neighbours)]
        rest_pool = [fact for fact in pool if not overlaps(fact.subject, chosen)]
        records += build_records(more, rest_pool, max_records=max_records - len(records), **options)
    for record in records:
        case_id, _ = targets[(record.subject, record.target_true)]
        record.case_id = f"cf-{case_id}"
        record.generation_prompts = []
    return records


def build_lifelong_set(out: str | Path | None = None, max_records: int = DEFAULT_RECORDS) -> tuple[Path, list[CounterFactRecord]]:
    """Build the lifelong set from assets/data and write it (default assets/lifelong_counterfact.json)."""
    facts = load_known_facts()
    rewrites = rewrite_cases()
    templates = sorted({case.template for case in rewrites} | {t for ts in relation_templates(facts).values() for t in ts})
    extra = [case for case in sentence_cases(templates=templates) if case.case_id not in {c.case_id for c in rewrites}]
    records = build_lifelong_records(rewrites, extra, facts, max_records=max_records)
    path = Path(out) if out else LIFELONG_FILE
    description = (f"Lifelong set: {len(records)} CounterFact-format records for sequential editing "
                   f"({sum(1 for r in records if int(r.case_id[3:]) < 1000)} of them from CounterFact cases 0-999).")
    write_devset(records, path, "any model", description=description, attribution=ATTRIBUTION)
    return path, records
