"""CounterFact-format records (SPEC section 4): loading with per-record, per-field validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError
from editor.edits.requests import EditRequest

LIST_FIELDS = ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts")


@dataclass
class CounterFactRecord:
    """One case: the rewrite and the prompts that measure it."""

    case_id: int | str
    subject: str
    prompt: str  # template with "{}"
    target_new: str
    target_true: str
    relation_id: str | None = None
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)
    attribute_prompts: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)

    @property
    def rewrite_prompt(self) -> str:
        return self.prompt.replace("{}", self.subject, 1)

    def request(self) -> EditRequest:
        return EditRequest(self.subject, self.prompt, self.target_new, self.target_true)

    def to_dict(self) -> dict:
        rewrite = {
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": {"str": self.target_new},
            "target_true": {"str": self.target_true},
        }
        if self.relation_id:
            rewrite["relation_id"] = self.relation_id
        data = {"case_id": self.case_id, "requested_rewrite": rewrite}
        for name in LIST_FIELDS:
            values = getattr(self, name)
            if values or name in ("paraphrase_prompts", "neighborhood_prompts"):
                data[name] = list(values)
        return data

    @classmethod
    def from_dict(cls, data: dict, index: int = 0) -> CounterFactRecord:
        """A validated record; InputError names the record index and the field that is wrong."""
        where = f"Record {index} (case_id {data.get('case_id', '?')!r})" if isinstance(data, dict) else f"Record {index}"
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object, got {type(data).__name__}.")
        rewrite = data.get("requested_rewrite")
        if not isinstance(rewrite, dict):
            raise InputError(f"{where}: field 'requested_rewrite' is missing or not an object.")
        prompt = _text(rewrite, "prompt", where, "requested_rewrite.prompt")
        subject = _text(rewrite, "subject", where, "requested_rewrite.subject")
        if prompt.count("{}") != 1:
            raise InputError(f"{where}: field 'requested_rewrite.prompt' must contain exactly one '{{}}' for the subject, got {prompt!r}.")
        target_new = _target(rewrite, "target_new", where)
        target_true = _target(rewrite, "target_true", where)
        if target_new.strip().casefold() == target_true.strip().casefold():
            raise InputError(f"{where}: 'target_new' and 'target_true' are both {target_new!r}; there is nothing to edit.")
        lists = {}
        for name in LIST_FIELDS:
            value = data.get(name, [])
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
                raise InputError(f"{where}: field '{name}' must be a list of non-empty strings.")
            if any("{}" in item for item in value) and name != "generation_prompts":
                raise InputError(f"{where}: field '{name}' holds complete prompts; one still contains '{{}}'.")
            lists[name] = list(value)
        return cls(
            case_id=data.get("case_id", index),
            subject=subject,
            prompt=prompt,
            target_new=target_new,
            target_true=target_true,
            relation_id=rewrite.get("relation_id"),
            **lists,
        )


def _text(container: dict, key: str, where: str, label: str) -> str:
    value = container.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field '{label}' is missing or empty.")
    return value


def _target(rewrite: dict, key: str, where: str) -> str:
    value = rewrite.get(key)
    if isinstance(value, dict):
        value = value.get("str")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field 'requested_rewrite.{key}.str' is missing or empty.")
    return value.strip()


def load_records(source: str | Path | list | dict) -> list[CounterFactRecord]:
    """Records from a JSON file (a list, or {"records": [...]}) or from already parsed data; all validated first."""
    data = source
    name = "the records"
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = path.name
        if not path.is_file():
            raise InputError(f"The data file {str(source)!r} does not exist.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InputError(f"{name} is not valid JSON: {error.msg} at line {error.lineno}.") from None
    if isinstance(data, dict) and "records" in data:
        data = data["records"]
    if not isinstance(data, list):
        raise InputError(f"{name}: expected a JSON list of CounterFact records.")
    if not data:
        raise InputError(f"{name} holds no records.")
    return [item if isinstance(item, CounterFactRecord) else CounterFactRecord.from_dict(item, index)
            for index, item in enumerate(data)]
