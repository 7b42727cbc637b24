"""Known facts (ROME's known_1000) and which of them a given model gets right."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.embedded import EMBEDDED_SPEC, cache_root
from core.loading import LoadedModel
from core.paths import ASSETS
from core.tokens import target_token_ids

KNOWN_FACTS_FILE = ASSETS / "data" / "known_1000.json"


@dataclass(frozen=True)
class KnownFact:
    """One fact: `prompt` == `template.format(subject)` should be completed by `attribute`."""

    known_id: int
    subject: str
    attribute: str
    template: str
    prompt: str
    relation_id: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_known_facts(path: str | Path = KNOWN_FACTS_FILE) -> list[KnownFact]:
    """All facts of a known_1000-format JSON file."""
    records = json.loads(Path(path).read_text())
    return [
        KnownFact(
            known_id=int(r["known_id"]),
            subject=r["subject"],
            attribute=r["attribute"],
            template=r["template"],
            prompt=r["prompt"],
            relation_id=r.get("relation_id", ""),
        )
        for r in records
    ]


@torch.inference_mode()
def model_knows(loaded: LoadedModel, fact: KnownFact) -> bool:
    """True when greedy decoding after the prompt reproduces every token of the attribute."""
    prompt_ids = list(loaded.tokenizer(fact.prompt)["input_ids"])
    target = target_token_ids(loaded.tokenizer, fact.attribute, prompt=fact.prompt)
    ids = torch.tensor([prompt_ids + target], device=loaded.device)
    logits = loaded.model(ids).logits[0, len(prompt_ids) - 1 : -1]
    return logits.argmax(-1).tolist() == target


def model_key(loaded: LoadedModel) -> str:
    """A file-name-safe key for per-model caches."""
    base = "smollm2-135m-instruct" if loaded.spec == EMBEDDED_SPEC else loaded.spec
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") + f"-{loaded.layout.num_layers}L"


def known_facts_cache_path(loaded: LoadedModel) -> Path:
    """Where the list of facts this model knows is kept: assets/ for the embedded model, else the cache."""
    name = f"known_facts_{model_key(loaded)}.json"
    if loaded.spec == EMBEDDED_SPEC:
        return ASSETS / name
    return cache_root() / "known_facts" / name


def facts_model_knows(
    loaded: LoadedModel,
    facts: list[KnownFact] | None = None,
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
) -> list[KnownFact]:
    """The facts (of known_1000 by default) that `loaded` completes correctly, cached per model (unedited only)."""
    use_cache = use_cache and not loaded.edits_applied  # an edited model knows other facts: never cached as the model's
    path = known_facts_cache_path(loaded)
    if facts is None and use_cache and path.is_file():
        return [KnownFact(**record) for record in json.loads(path.read_text())["facts"]]
    candidates = facts if facts is not None else load_known_facts()
    known = []
    for index, fact in enumerate(candidates):
        if model_knows(loaded, fact):
            known.append(fact)
        if progress is not None:
            progress(index + 1, len(candidates))
    if facts is None and use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": loaded.name,
            "rule": "greedy decoding after the prompt reproduces every token of the attribute",
            "source": "known_1000.json (ROME, Meng et al. 2022, MIT license)",
            "checked": len(candidates),
            "facts": [fact.to_dict() for fact in known],
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=1))
        temporary.replace(path)
    return known
