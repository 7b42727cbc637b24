"""The dev set: CounterFact-format records built from facts a model knows (known_1000 + CounterFact rewrites).

For each known fact: the rewrite prompt is the fact's own prompt (which the model completes correctly);
paraphrases are other templates of the same relation; neighbourhood prompts put other subjects with the
same relation and the same true object into the rewrite template (subjects the model knows that are not
records first). No subject is both a record and a neighbour (nor contains one): in a batch, editing a
record that is another record's neighbour would fail that neighbourhood prompt by construction. The
new object is CounterFact's counterfactual when CounterFact has this subject and true object, else
another object of the same relation (deterministic). Relations are taken in turn, so no relation
dominates. Regenerate with `python -m editor devset`.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from core.embedded import EMBEDDED_SPEC
from core.facts import ASSETS, KnownFact, facts_model_knows, load_known_facts, model_key
from editor.evaluation.counterfact import CounterFactRecord

COUNTERFACT_FILE = ASSETS / "data" / "counterfact_rewrites_0-999.json"
ATTRIBUTION = (
    "Built by `python -m editor devset` from known_1000.json (ROME dataset, Meng et al. 2022, MIT license) and "
    "counterfact_rewrites_0-999.json (CounterFact, Meng et al. 2022, MIT license): the facts the model completes "
    "correctly, with paraphrase and neighbourhood prompts from other known_1000 templates and subjects."
)


def fact_template(fact: KnownFact) -> str:
    """The fact's prompt with its subject replaced by "{}"."""
    return fact.prompt.replace(fact.subject, "{}", 1)


def relation_templates(facts: list[KnownFact]) -> dict[str, list[str]]:
    """Per relation, its distinct clean templates (those whose format(subject) is the prompt), sorted."""
    found: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        if fact.template.format(fact.subject) == fact.prompt and fact.template.count("{}") == 1:
            found[fact.relation_id].add(fact.template)
    return {relation: sorted(templates) for relation, templates in found.items()}


def counterfact_targets(path: Path = COUNTERFACT_FILE) -> dict[tuple[str, str], tuple[int, str]]:
    """(subject, true object) -> (case_id, counterfactual new object) from the CounterFact rewrites."""
    if not path.is_file():
        return {}
    found = {}
    for case in json.loads(path.read_text()):
        rewrite = case["requested_rewrite"]
        found[(rewrite["subject"], rewrite["target_true"]["str"])] = (case["case_id"], rewrite["target_new"]["str"])
    return found


def build_records(
    known: list[KnownFact],
    all_facts: list[KnownFact],
    *,
    max_records: int = 130,
    per_relation: int = 15,
    max_paraphrases: int = 3,
    max_neighbors: int = 5,
    generation_every: int = 4,
    seed: int = 0,
    counterfact: dict[tuple[str, str], tuple[int, str]] | None = None,
) -> list[CounterFactRecord]:
    """Dev-set records from the facts a model knows (see the module docstring for the rules)."""
    counterfact = counterfact if counterfact is not None else counterfact_targets()
    templates = relation_templates(all_facts)
    objects: dict[str, Counter] = defaultdict(Counter)
    by_object: dict[tuple[str, str], list[KnownFact]] = defaultdict(list)
    for fact in all_facts:
        objects[fact.relation_id][fact.attribute] += 1
        by_object[(fact.relation_id, fact.attribute)].append(fact)
    known_subjects = {(fact.subject, fact.relation_id) for fact in known}
    candidates: dict[str, list[CounterFactRecord]] = defaultdict(list)
    seen = set()
    for fact in sorted(known, key=lambda f: f.known_id):
        if (fact.subject, fact.relation_id) in seen:
            continue
        template = fact_template(fact)
        if template.count("{}") != 1:
            continue
        paraphrases = [t.format(fact.subject) for t in templates.get(fact.relation_id, []) if t != template
                       and t.format(fact.subject) != fact.prompt][:max_paraphrases]
        neighbors = [other for other in by_object[(fact.relation_id, fact.attribute)] if other.subject != fact.subject
                     and fact.subject not in other.subject and other.subject not in fact.subject]
        neighbors.sort(key=lambda other: ((other.subject, other.relation_id) not in known_subjects, other.known_id))
        if not paraphrases or not neighbors:
            continue
        case_id, target_new = counterfact.get((fact.subject, fact.attribute), (None, None))
        if target_new is None or target_new == fact.attribute:
            choices = sorted(obj for obj in objects[fact.relation_id] if obj != fact.attribute
                             and obj.lower() not in fact.attribute.lower() and fact.attribute.lower() not in obj.lower())
            if not choices:
                continue
            weights = [objects[fact.relation_id][obj] for obj in choices]
            target_new = random.Random(seed * 100003 + fact.known_id).choices(choices, weights=weights)[0]
            case_id = None
        seen.add((fact.subject, fact.relation_id))
        candidates[fact.relation_id].append((neighbors, CounterFactRecord(
            case_id=f"known-{fact.known_id}" if case_id is None else f"known-{fact.known_id}/cf-{case_id}",
            subject=fact.subject,
            prompt=template,
            target_new=target_new,
            target_true=fact.attribute,
            relation_id=fact.relation_id,
            paraphrase_prompts=paraphrases,
        )))
    # Relations in turn; a subject is either a record or a neighbour, never both (an edit in the same
    # batch would otherwise change another record's neighbourhood prompt on purpose).
    relations = sorted(candidates, key=lambda relation: (-len(candidates[relation]), relation))
    candidate_subjects = {record.subject for items in candidates.values() for _, record in items}
    for items in candidates.values():  # neighbours: known facts that cannot be records first, candidates last
        for neighbors, _ in items:
            neighbors.sort(key=lambda other: (other.subject in candidate_subjects,
                                              (other.subject, other.relation_id) not in known_subjects, other.known_id))
    order = [candidates[relation][index] for index in range(per_relation) for relation in relations
             if index < len(candidates[relation])]
    records: list[CounterFactRecord] = []
    record_subjects: set[str] = set()
    neighbor_subjects: set[str] = set()
    for neighbors, record in order:
        if len(records) >= max_records:
            break
        if any(record.subject in other or other in record.subject for other in neighbor_subjects):
            continue
        usable = [other for other in neighbors
                  if not any(other.subject in chosen or chosen in other.subject for chosen in record_subjects)]
        prompts = list(dict.fromkeys(record.prompt.format(other.subject) for other in usable))[:max_neighbors]
        if not prompts:
            continue
        record.neighborhood_prompts = prompts
        records.append(record)
        record_subjects.add(record.subject)
        neighbor_subjects.update(other.subject for other in usable if record.prompt.format(other.subject) in prompts)
    for index, record in enumerate(records):
        if index % generation_every == 0:
            record.generation_prompts = [record.paraphrase_prompts[0]]
    return records


def devset_path(model: str) -> Path:
    return ASSETS / f"devset_{model}.json"


def devset_file(loaded) -> Path:
    """Where this model's dev set is (assets/ for the embedded model, whose file is named without its layer count)."""
    key = model_key(loaded)
    return devset_path(key.removesuffix("-30L") if loaded.spec == EMBEDDED_SPEC else key)


def write_devset(
    records: list[CounterFactRecord], path: Path, model_name: str, description: str | None = None, attribution: str = ATTRIBUTION
) -> Path:
    """Write the records with their attribution (atomically)."""
    payload = {
        "description": description or f"Dev set for {model_name}: {len(records)} CounterFact-format records of facts the model knows.",
        "attribution": attribution,
        "records": [record.to_dict() for record in records],
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    temporary.replace(path)
    return path


def build_devset(loaded, out: str | Path | None = None, **options) -> tuple[Path, list[CounterFactRecord]]:
    """Build (from the facts `loaded` knows) and write the dev set; returns its path and records."""
    known = facts_model_knows(loaded)
    records = build_records(known, load_known_facts(), **options)
    path = Path(out) if out else devset_file(loaded)
    return write_devset(records, path, loaded.name), records
