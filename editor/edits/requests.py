"""Edit requests: "{subject} ... -> new object", validated before any weight is touched."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from core.errors import InputError
from core.tokens import find_subject, target_token_ids

PLACEHOLDER = "{}"


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: `prompt` is a template with "{}" where `subject` goes (or a prompt containing it)."""

    subject: str
    prompt: str
    target_new: str
    target_true: str | None = None

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace(PLACEHOLDER, self.subject, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EditRequest:
        return cls(
            subject=data["subject"],
            prompt=data["prompt"],
            target_new=data["target_new"],
            target_true=data.get("target_true"),
        )

    def validated(self) -> EditRequest:
        """This request normalized (template with one "{}", trimmed targets), or an InputError saying why not."""
        subject = (self.subject or "").strip()
        if not subject:
            raise InputError("The subject is empty: name the subject whose fact should change (e.g. 'Eiffel Tower').")
        prompt = self.prompt or ""
        if not prompt.strip():
            raise InputError("The prompt is empty: write a prompt such as '{} is located in the city of'.")
        count = prompt.count(PLACEHOLDER)
        if count > 1:
            raise InputError(f"The prompt template {prompt!r} has {count} '{{}}' placeholders; use exactly one for the subject.")
        if count == 0:
            if subject not in prompt:
                find_subject(prompt, subject)  # raises with a "did you mean" hint
            prompt = prompt.replace(subject, PLACEHOLDER, 1)
        prompt = prompt.rstrip()
        if prompt.endswith(PLACEHOLDER) and len(prompt) == len(PLACEHOLDER):
            raise InputError("The prompt is only the subject: add the words that lead to the object (e.g. '{} is located in').")
        target_new = (self.target_new or "").strip()
        if not target_new:
            raise InputError(f"The new object for {subject!r} is empty: type what the model should say instead.")
        target_true = self.target_true.strip() if self.target_true else None
        if target_true is not None and target_true.casefold() == target_new.casefold():
            raise InputError(
                f"The new object {target_new!r} is the same as the current one for {subject!r}: nothing to edit."
            )
        return EditRequest(subject=subject, prompt=prompt, target_new=target_new, target_true=target_true or None)

    def target_ids(self, tokenizer) -> list[int]:
        """Token ids of the new object as the model would write it after the filled-in prompt."""
        return target_token_ids(tokenizer, self.target_new, prompt=self.text)


def validate_requests(
    requests: Iterable[EditRequest | dict], tokenizer=None, max_tokens: int | None = None
) -> list[EditRequest]:
    """Validated copies of `requests`; the first problem raises an InputError naming the request."""
    checked: list[EditRequest] = []
    items = list(requests)
    if not items:
        raise InputError("There is nothing to edit: give at least one request.")
    for index, item in enumerate(items):
        request = EditRequest.from_dict(item) if isinstance(item, dict) else item
        label = f"Request {index + 1}" if len(items) > 1 else "The request"
        try:
            request = request.validated()
            if tokenizer is not None:
                ids = request.target_ids(tokenizer)
                if max_tokens is not None:
                    length = len(tokenizer(request.text)["input_ids"]) + len(ids)
                    if length > max_tokens:
                        raise InputError(
                            f"The prompt and new object take {length} tokens; at most {max_tokens} are allowed. Shorten them."
                        )
        except InputError as error:
            raise InputError(f"{label} ({request.subject!r} -> {request.target_new!r}): {error}") from None
        checked.append(request)
    return checked
