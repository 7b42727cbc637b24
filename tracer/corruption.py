"""The corrupted run's input (SPEC sections 1 and 6): noise on the subject, or the subject's tokens swapped.

- noise: the S rows keep the prompt's tokens; Gaussian (or uniform) noise nu * eps is added to the
  token-embedding module's output at the subject tokens [b, e) (ROME's reference, the default).
- replace: symmetric token replacement (Zhang and Nanda, ICLR 2024): one row whose subject tokens are
  those of a counterfactual subject with the same number of tokens; no noise. `auto` takes the first
  such subject of the known facts (known_1000) whose known answer is not the traced answer.
- resample: S rows, each with the subject swapped for a same-length subject of another known fact,
  drawn by `numpy.random.RandomState(seed)` (the trace's seed, the same for every fact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy
import torch

from core.errors import InputError
from core.facts import load_known_facts
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
        return Corruption(self.method, self.input_ids[:rows], self.subject_range, noise, self.replacements[:rows])


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


def _known_candidates(subject: str, answer: str) -> list[str]:
    """Distinct subjects of known_1000, in file order, other than `subject` and whose known answer is not `answer`."""
    seen = {subject.strip().lower()}
    answer = answer.strip().lower()
    chosen = []
    for fact in load_known_facts():
        key = fact.subject.strip().lower()
        if key in seen or (answer and fact.attribute.strip().lower().startswith(answer)):
            continue
        seen.add(key)
        chosen.append(fact.subject)
    return chosen


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
    candidates = _known_candidates(subject, answer)
    fitting = [(text, ids) for text, ids in zip(candidates, same_length_ids(tokenizer, encoded, subject, occurrence, subject_range, candidates))
               if ids is not None]
    if not fitting:
        raise InputError(
            f"No subject of the known facts takes the place of {subject!r} ({count} token(s)) token for token in this "
            f"prompt. Name a replacement of {count} token(s), or use noise."
        )
    if method == "replace":
        text, ids = fitting[0]
        return Corruption("replace", torch.tensor([ids]), subject_range, None, [text])
    generator = numpy.random.RandomState(seed)
    drawn = generator.choice(len(fitting), size=samples, replace=len(fitting) < samples)
    chosen = [fitting[int(index)] for index in drawn]
    return Corruption("resample", torch.tensor([ids for _, ids in chosen]), subject_range, None, [text for text, _ in chosen])


def check_corruption(method: str) -> None:
    if method not in CORRUPTIONS:
        raise InputError(f"Unknown corruption {method!r}: use {', '.join(CORRUPTIONS)}.")
