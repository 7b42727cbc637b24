"""Token rows for the editor: prefix + prompt (+ target) with the subject's last token located."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InputError
from core.tokens import encode_prompt
from editor.edits.requests import PLACEHOLDER, EditRequest


@dataclass(frozen=True)
class PromptRow:
    """One sequence fed to the model for request `request`; `subject_last` indexes `ids`."""

    request: int
    prefix: int  # index into the context prefixes (0 = the empty prefix); -1 for the essence (KL) prompt
    ids: tuple[int, ...]
    subject_last: int
    target_positions: tuple[int, ...] = ()  # positions whose next-token logits must produce target_ids
    target_ids: tuple[int, ...] = ()

    @property
    def is_kl(self) -> bool:
        return self.prefix < 0


def locate_subject(tokenizer, prefix: str, template: str, subject: str) -> tuple[list[int], int]:
    """Token ids of prefix + template(subject) and the index of the subject's last token."""
    text = prefix + template.replace(PLACEHOLDER, subject, 1)
    start = len(prefix) + template.index(PLACEHOLDER)
    end = start + len(subject)
    encoded = encode_prompt(tokenizer, text)
    covering = [
        index
        for index, (token_start, token_end) in enumerate(encoded.offsets)
        if token_end > token_start and token_start < end and token_end > start
    ]
    if not covering:
        raise InputError(f"The subject {subject!r} covers no token of the prompt {text!r}.")
    return list(encoded.input_ids), covering[-1]


def key_rows(tokenizer, requests: list[EditRequest], prefixes: list[str]) -> list[PromptRow]:
    """Rows prefix + prompt cut after the subject's last token (all a key or h at that token needs)."""
    rows = []
    for index, request in enumerate(requests):
        for prefix_index, prefix in enumerate(prefixes):
            ids, last = locate_subject(tokenizer, prefix, request.prompt, request.subject)
            rows.append(PromptRow(index, prefix_index, tuple(ids[: last + 1]), last))
    return rows


def target_rows(
    tokenizer, requests: list[EditRequest], prefixes: list[str], kl_prompt: str
) -> list[PromptRow]:
    """Per request: one teacher-forced row per prefix (prefix + prompt + new object) and one essence row."""
    rows = []
    for index, request in enumerate(requests):
        target = request.target_ids(tokenizer)
        for prefix_index, prefix in enumerate(prefixes):
            ids, last = locate_subject(tokenizer, prefix, request.prompt, request.subject)
            positions = tuple(range(len(ids) - 1, len(ids) - 1 + len(target)))
            rows.append(PromptRow(index, prefix_index, tuple(ids + target[:-1]), last, positions, tuple(target)))
        ids, last = locate_subject(tokenizer, "", kl_prompt, request.subject)
        rows.append(PromptRow(index, -1, tuple(ids[: last + 1]), last, (last,)))
    return rows
