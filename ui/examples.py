"""The one-click examples of `assets/examples.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.paths import ASSETS

EXAMPLES_FILE = ASSETS / "examples.json"


@dataclass(frozen=True)
class Example:
    """A fact to trace (and a suggested edit of it)."""

    label: str
    prompt: str
    subject: str
    answer: str = ""
    true_object: str = ""
    note: str = ""
    embedded_top: dict = field(default_factory=dict)
    edit: dict = field(default_factory=dict)

    @property
    def edit_fields(self) -> tuple[str, str, str, str, str]:
        """(subject, prompt template, new object, paraphrases, neighborhood prompts) for the Edit tab."""
        return (
            self.subject,
            self.edit.get("prompt", ""),
            self.edit.get("target_new", ""),
            "; ".join(self.edit.get("paraphrases", [])),
            "; ".join(self.edit.get("neighborhood", [])),
        )


def load_examples(path: Path = EXAMPLES_FILE) -> list[Example]:
    """All examples of the file, in order."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    fields = Example.__dataclass_fields__
    return [Example(**{key: value for key, value in item.items() if key in fields}) for item in data["examples"]]
