"""The corrupted run's input (SPEC sections 1 and 6): noise on the subject, or the subject's tokens swapped.

- noise: the S rows keep the prompt's tokens; Gaussian (or uniform) noise nu * eps is added to the
  token-embedding module's output at the subject tokens [b, e) (ROME's reference, the default).
- replace: symmetric token replacement (Zhang and Nanda, ICLR 2024): one row whose subject tokens are
  those of a counterfactual subject with the same number of tokens; no noise. `auto` takes a subject
  of the same kind from the known facts (known_1000): of the same relation (the fact's own when the
  subject is a known one, else the relation whose templates read most like the prompt), whose known
  answer is not the traced answer, that takes the subject's tokens exactly; `Corruption.note` says
  which and why.
- resample: S rows, each with the subject swapped for a same-length subject of another known fact,
  drawn by `numpy.random.RandomState(seed)` (the trace's seed, the same for every fact).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy
import torch

from core.errors import InputError
from core.facts import KnownFact, load_known_facts
from core.tokens import EncodedPrompt, find_subject
from tracer.modes import AUTO, CORRUPTIONS
from tracer.noise import add_noise_


@dataclass
class Corruption:
    """The S corrupted rows: input ids (S, T), and noise (S, e-b, d) float64 added to their subject embeddings (or None)."""

    method: str
    input_ids: torch.Tensor
    subject_range: tuple[int, int]
    noise: torch.Tensor | None = None
    replacements: list[str] = field(default_factory=list)  # the subject that replaced the traced one, per row
    note: str = ""  # how an automatic replacement was chosen, in plain words ("" otherwise)

    @property
    def samples(self) -> int:
        return int(self.input_ids.shape[0])

    def apply_(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Add the noise (if any) in place to token-embedding outputs (rows, T, d) of the corrupted rows."""
        if self.noise is not None:
            add_noise_(embeddings, self.noise[: embeddings.shape[0]], self.subject_range)
        return embeddings

    def first(self, rows: int) -> Corruption:
        """The first `rows` corrupted rows (the preview uses a few)."""
        rows = max(1, min(rows, self.samples))
        noise = None if self.noise is None else self.noise[:rows]
        return Corruption(self.method, self.input_ids[:rows], self.subject_range, noise, self.replacements[:rows], self.note)


def noise_corruption(input_ids: torch.Tensor, subject_range: tuple[int, int], noise: torch.Tensor) -> Corruption:
    """ROME's corruption: S = noise.shape[0] copies of the prompt (1, T), noise added at the subject."""
    return Corruption("noise", input_ids.repeat(noise.shape[0], 1), subject_range, noise)


# --- subjects with the same number of tokens ---------------------------------------------------------------------

def replaced_texts(encoded: EncodedPrompt, subject: str, occurrence: int, replacements: list[str]) -> list[str]:
    """The tokenized text (chat template included) with the subject's occurrence swapped for each replacement."""
    start = encoded.prompt_start + find_subject(encoded.prompt, subject, occurrence)
    end = start + len(subject)
    return [encoded.text[:start] + replacement + encoded.text[end:] for replacement in replacements]


def same_length_ids(
    tokenizer, encoded: EncodedPrompt, subject: str, occurrence: int, subject_range: tuple[int, int], candidates: list[str]
) -> list[list[int] | None]:
    """For each candidate: the prompt's ids with the subject's tokens swapped for the candidate's, or None.

    None when the candidate does not take exactly the subject's token positions [b, e) (a different
    number of tokens, or tokens merging across the subject's edges) or leaves every id unchanged.
    """
    if not candidates:
        return []
    texts = replaced_texts(encoded, subject, occurrence, candidates)
    encoded_ids = tokenizer(texts, add_special_tokens=not encoded.chat)["input_ids"]
    begin, end = subject_range
    original = list(encoded.input_ids)
    found: list[list[int] | None] = []
    for ids in encoded_ids:
        ids = list(ids)
        fits = (
            len(ids) == len(original)
            and ids[:begin] == original[:begin]
            and ids[end:] == original[end:]
            and ids[begin:end] != original[begin:end]
        )
        found.append(ids if fits else None)
    return found


# Wikidata's names of known_1000's relations, for the note on an automatic replacement.
RELATION_NAMES = {
    "P17": "located in the country", "P19": "place of birth", "P20": "place of death", "P27": "country of citizenship",
    "P30": "continent", "P36": "capital", "P37": "official language", "P39": "position held", "P101": "field of work",
    "P103": "native language", "P106": "occupation", "P108": "employer", "P127": "owned by", "P131": "located in the region",
    "P136": "genre", "P138": "named after", "P140": "religion", "P159": "headquarters location", "P176": "manufacturer",
    "P178": "developer", "P190": "twin city", "P276": "location", "P364": "original language of a work",
    "P407": "language of a work", "P413": "position played", "P449": "original broadcaster", "P463": "member of",
    "P495": "country of origin", "P641": "sport", "P740": "formed in", "P937": "work location", "P1303": "instrument",
    "P1412": "languages spoken or written",
}
# CounterFact's wordings that known_1000's templates lack, so that its prompts find their relation too.
EXTRA_TEMPLATES = {
    "P103": ("The mother tongue of {} is", "{}'s mother tongue is"),
    "P131": ("{} is located in the city of", "{} is in the city of"),
    "P641": ("{} professionally plays the sport of", "{} plays the sport of"),
}
# What the subjects of each relation are (None: of several kinds): the next best choice when no subject of the
# relation itself fits.
SUBJECT_KINDS = {
    **dict.fromkeys(("P19", "P20", "P27", "P39", "P101", "P103", "P106", "P108", "P136", "P1303", "P1412", "P413", "P641",
                     "P937"), "person"),
    **dict.fromkeys(("P17", "P30", "P36", "P37", "P131", "P190", "P276"), "place"),
    **dict.fromkeys(("P127", "P159", "P740"), "organisation"),
    **dict.fromkeys(("P176", "P178"), "product"),
    **dict.fromkeys(("P364", "P407", "P449", "P495"), "work"),
}
SIMILAR_ENOUGH = 0.5  # a prompt reads like a relation's template when difflib's ratio of their words reaches this


def relation_words(relation: str) -> str:
    """'P17' -> 'P17, located in the country' (the id alone when it has no name here)."""
    name = RELATION_NAMES.get(relation)
    return f"{relation}, {name}" if name else relation


def _words(text: str) -> list[str]:
    return re.findall(r"\{\}|[\w']+", text.lower())


def subject_relation(prompt: str, subject: str, occurrence: int, facts: list[KnownFact]) -> tuple[str | None, str]:
    """(the relation of the traced fact, why) from the known facts: the subject's own fact when it is a known
    subject, else the relation whose templates read most like the prompt with the subject taken out; (None, why)
    when no template is similar enough."""
    key = subject.strip().lower()
    for fact in facts:
        if fact.subject.strip().lower() == key and fact.relation_id:
            return fact.relation_id, f"{subject!r} is a known subject of it"
    start = find_subject(prompt, subject, occurrence)
    template = _words(prompt[:start] + " {} " + prompt[start + len(subject):])
    pairs = [(fact.relation_id, fact.template) for fact in facts if fact.relation_id]
    pairs += [(relation, text) for relation, texts in EXTRA_TEMPLATES.items() for text in texts]
    best: dict[str, tuple[float, str]] = {}
    for relation, text in dict.fromkeys(pairs):
        score = difflib.SequenceMatcher(None, template, _words(text), autojunk=False).ratio()
        if score > best.get(relation, (-1.0, ""))[0]:
            best[relation] = (score, text)
    if not best:
        return None, "the known facts name no relations"
    relation, (score, text) = max(best.items(), key=lambda item: item[1][0])
    if score < SIMILAR_ENOUGH:
        return None, "the prompt reads like none of the known facts' templates"
    return relation, f"the prompt reads like {text!r}"


def _known_candidates(subject: str, answer: str, facts: list[KnownFact] | None = None) -> list[KnownFact]:
    """One fact per distinct subject of known_1000, in file order, other than `subject` and whose known answer is not
    `answer`."""
    seen = {subject.strip().lower()}
    answer = answer.strip().lower()
    chosen = []
    for fact in load_known_facts() if facts is None else facts:
        key = fact.subject.strip().lower()
        if key in seen or (answer and fact.attribute.strip().lower().startswith(answer)):
            continue
        seen.add(key)
        chosen.append(fact)
    return chosen


def automatic_replacement(
    tokenizer, encoded: EncodedPrompt, subject: str, occurrence: int, subject_range: tuple[int, int], answer: str
) -> tuple[str, list[int], str]:
    """(replacement subject, the prompt's ids with it, why it was chosen): the first known subject, in known_1000's
    order, that takes the subject's tokens exactly and whose answer differs, of the traced fact's relation if one
    fits, else of the same kind of subject (a person, a place, ...), else of any kind."""
    facts = load_known_facts()
    count = subject_range[1] - subject_range[0]
    tokens = f"the {count} token{'s' if count != 1 else ''} of {subject!r}"
    relation, why = subject_relation(encoded.prompt, subject, occurrence, facts)
    kind = SUBJECT_KINDS.get(relation) if relation is not None else None
    candidates = _known_candidates(subject, answer, facts)
    groups = [
        ([fact for fact in candidates if relation is not None and fact.relation_id == relation], "relation"),
        ([fact for fact in candidates if kind is not None and fact.relation_id != relation
          and SUBJECT_KINDS.get(fact.relation_id) == kind], "kind"),
        ([fact for fact in candidates if relation is None or (fact.relation_id != relation
          and (kind is None or SUBJECT_KINDS.get(fact.relation_id) != kind))], "any"),
    ]
    for group, level in groups:
        texts = [fact.subject for fact in group]
        for fact, ids in zip(group, same_length_ids(tokenizer, encoded, subject, occurrence, subject_range, texts)):
            if ids is None:
                continue
            chosen = f"auto chose {fact.subject!r}"
            own = f"({relation_words(fact.relation_id)})"
            if level == "relation":
                note = f"{chosen}, of the same relation ({relation_words(relation)}: {why}), with {tokens}"
            elif level == "kind":
                note = (f"{chosen} {own}, a {kind} like the subjects of the prompt's relation ({relation_words(relation)}: "
                        f"{why}), none of which has {tokens}")
            elif relation is not None:
                note = (f"{chosen} {own}, the first known subject with {tokens}: none of the prompt's relation "
                        f"({relation_words(relation)}: {why}){f' or another {kind}' if kind else ''} has them")
            else:
                note = f"{chosen} {own}, the first known subject with {tokens}: {why}"
            return fact.subject, ids, note
    raise InputError(
        f"No subject of the known facts takes the place of {subject!r} ({count} token(s)) token for token in this "
        f"prompt. Name a replacement of {count} token(s), or use noise."
    )


def token_replacement(
    tokenizer,
    encoded: EncodedPrompt,
    subject: str,
    occurrence: int,
    subject_range: tuple[int, int],
    method: str,
    *,
    replacement: str | None,
    samples: int,
    seed: int,
    answer: str,
) -> Corruption:
    """The replace (one row) or resample (`samples` rows) corruption of a prepared prompt; InputError if impossible."""
    begin, end = subject_range
    count = end - begin
    if method == "replace" and replacement is not None and replacement.strip().lower() != AUTO:
        ids = same_length_ids(tokenizer, encoded, subject, occurrence, subject_range, [replacement])[0]
        if ids is None:
            alone = len(tokenizer(replaced_texts(encoded, subject, occurrence, [replacement])[0],
                                  add_special_tokens=not encoded.chat)["input_ids"]) - len(encoded.input_ids) + count
            raise InputError(
                f"The replacement {replacement!r} does not take the place of {subject!r} token for token in this prompt "
                f"({subject!r} is {count} token(s), {replacement!r} gives {alone}, or it merges with the words around it). "
                f"Choose a subject of {count} token(s), or use --replacement auto."
            )
        return Corruption("replace", torch.tensor([ids]), subject_range, None, [replacement])
    if method == "replace":
        text, ids, note = automatic_replacement(tokenizer, encoded, subject, occurrence, subject_range, answer)
        return Corruption("replace", torch.tensor([ids]), subject_range, None, [text], note)
    candidates = [fact.subject for fact in _known_candidates(subject, answer)]
    fitting = [(text, ids) for text, ids in zip(candidates, same_length_ids(tokenizer, encoded, subject, occurrence, subject_range, candidates))
               if ids is not None]
    if not fitting:
        raise InputError(
            f"No subject of the known facts takes the place of {subject!r} ({count} token(s)) token for token in this "
            f"prompt. Name a replacement of {count} token(s), or use noise."
        )
    generator = numpy.random.RandomState(seed)
    drawn = generator.choice(len(fitting), size=samples, replace=len(fitting) < samples)
    chosen = [fitting[int(index)] for index in drawn]
    return Corruption("resample", torch.tensor([ids for _, ids in chosen]), subject_range, None, [text for text, _ in chosen])


def check_corruption(method: str) -> None:
    if method not in CORRUPTIONS:
        raise InputError(f"Unknown corruption {method!r}: use {', '.join(CORRUPTIONS)}.")
