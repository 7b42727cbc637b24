"""Prompts as tokens: subject token ranges from character offsets, target strings as token ids.

The subject range [b, e) is found from character offsets, so BOS tokens, leading spaces, words
split into several tokens and chat templates are all handled the same way.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from core.errors import InputError


@dataclass(frozen=True)
class EncodedPrompt:
    """A tokenized prompt with character offsets into `text` (the user's prompt starts at `prompt_start`)."""

    prompt: str
    text: str
    prompt_start: int
    input_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    chat: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    def subject_range(self, subject: str, occurrence: int = 0) -> tuple[int, int]:
        """Token range [b, e) of the `occurrence`-th (0-based) appearance of `subject` in the prompt."""
        start = find_subject(self.prompt, subject, occurrence) + self.prompt_start
        end = start + len(subject)
        covering = [
            index
            for index, (token_start, token_end) in enumerate(self.offsets)
            if token_end > token_start and token_start < end and token_end > start
        ]
        if not covering:
            raise InputError(f"The subject {subject!r} covers no token of the prompt.")
        return covering[0], covering[-1] + 1


def encode_prompt(tokenizer, prompt: str, *, chat: bool = False, max_tokens: int | None = None) -> EncodedPrompt:
    """Tokenize `prompt` (optionally wrapped in the model's chat template) with character offsets."""
    if prompt is None or not prompt.strip():
        raise InputError("The prompt is empty: type a sentence that the model should complete.")
    if chat:
        text, prompt_start = _apply_chat_template(tokenizer, prompt)
        add_special_tokens = False
    else:
        text, prompt_start, add_special_tokens = prompt, 0, True
    input_ids, offsets = _encode_with_offsets(tokenizer, text, add_special_tokens)
    if not input_ids:
        raise InputError("The prompt has no tokens.")
    if max_tokens is not None and len(input_ids) > max_tokens:
        raise InputError(
            f"The prompt is too long: {len(input_ids)} tokens, and at most {max_tokens} are allowed here. Shorten it."
        )
    tokens = [tokenizer.decode([token_id]) for token_id in input_ids]
    return EncodedPrompt(prompt, text, prompt_start, input_ids, tokens, offsets, chat)


def _apply_chat_template(tokenizer, prompt: str) -> tuple[str, int]:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("This model has no chat template; turn the chat-template option off.")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    start = text.rfind(prompt)
    if start < 0:
        raise InputError("The model's chat template changes the prompt text, so the subject cannot be located in it.")
    return text, start


def _encode_with_offsets(tokenizer, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(encoding["input_ids"]), [tuple(map(int, span)) for span in encoding["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError, ValueError):
        pass
    # Slow tokenizers have no offset mapping: rebuild it by decoding growing prefixes.
    input_ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    offsets, position = [], 0
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for index, token_id in enumerate(input_ids):
        if token_id in special:
            offsets.append((position, position))
            continue
        decoded = tokenizer.decode(input_ids[: index + 1], skip_special_tokens=True)
        end = min(len(text), len(decoded))
        offsets.append((position, max(position, end)))
        position = max(position, end)
    return input_ids, offsets


def find_subject(prompt: str, subject: str, occurrence: int = 0) -> int:
    """Character index of the `occurrence`-th appearance of `subject` in `prompt`, or a helpful InputError."""
    if subject is None or not subject.strip():
        raise InputError("The subject is empty: type the words of the prompt that name the subject.")
    starts = [match.start() for match in re.finditer(re.escape(subject), prompt)]
    if not starts:
        near = near_matches(prompt, subject)
        hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
        raise InputError(f"The subject {subject!r} does not occur in the prompt {prompt!r}.{hint}")
    if not 0 <= occurrence < len(starts):
        raise InputError(
            f"The subject {subject!r} occurs {len(starts)} time(s) in the prompt; occurrence {occurrence + 1} does not exist."
        )
    return starts[occurrence]


def subject_occurrences(prompt: str, subject: str) -> int:
    """How many times `subject` occurs in `prompt` (non-overlapping)."""
    return len(re.findall(re.escape(subject), prompt)) if subject else 0


def near_matches(prompt: str, subject: str, count: int = 3) -> list[str]:
    """Spans of the prompt's words that look like `subject` (for "did you mean" hints)."""
    words = prompt.split()
    size = max(1, len(subject.split()))
    candidates = {
        " ".join(words[i : i + n]).strip(".,;:!?\"'")
        for n in (size - 1, size, size + 1)
        if n > 0
        for i in range(len(words) - n + 1)
    }
    lowered = {candidate.lower(): candidate for candidate in candidates if candidate}
    found = difflib.get_close_matches(subject.lower(), list(lowered), n=count, cutoff=0.5)
    return [lowered[item] for item in found]


def target_token_ids(tokenizer, target: str, prompt: str | None = None) -> list[int]:
    """Token ids of `target` as the model would write it right after `prompt` (leading space included)."""
    if target is None or not target.strip():
        raise InputError("The target is empty: type the word(s) the model should produce.")
    ids: list[int] = []
    if prompt:
        separator = "" if prompt[-1].isspace() or target[0].isspace() else " "
        base = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(prompt + separator + target, add_special_tokens=False)["input_ids"])
        if full[: len(base)] == base and len(full) > len(base):
            ids = full[len(base) :]
    if not ids:
        spaced = target if target[0].isspace() else " " + target
        ids = list(tokenizer(spaced, add_special_tokens=False)["input_ids"])
    unknown = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unknown is not None and unknown in ids):
        raise InputError(f"The target {target!r} cannot be tokenized by this model (unknown characters).")
    return ids
