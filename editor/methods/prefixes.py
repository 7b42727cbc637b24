"""Context prefixes (SPEC 3 step 1): "" plus short texts the model writes from a few start words, each + ". "."""

from __future__ import annotations

import re
import threading

from core.loading import LoadedModel
from editor.methods.settings import EditSettings
from editor.passes.generation import generate_ids

_CACHE: dict[tuple, list[str]] = {}
_CACHE_LOCK = threading.Lock()


def context_prefixes(loaded: LoadedModel, settings: EditSettings) -> list[str]:
    """The prefixes put before every prompt: the empty prefix first, then one text per start word.

    Each generated text has `settings.prefix_tokens` tokens (start word included), sampled top-k 5 with a fixed seed
    by default (as MEMIT did; greedy text from this model degenerates into dashes),
    and ends with ". ". Generated once per model object and settings, then reused.
    """
    key = (id(loaded.model), tuple(settings.prefix_starts), settings.prefix_tokens, settings.prefix_sampling, settings.seed)
    with _CACHE_LOCK:
        if key in _CACHE:
            return list(_CACHE[key])
    tokenizer = loaded.tokenizer
    starts = [list(tokenizer(word)["input_ids"]) for word in settings.prefix_starts]
    texts = []
    with loaded.lock:
        for index, start in enumerate(starts):
            new = max(0, settings.prefix_tokens - len(start))
            top_k = 5 if settings.prefix_sampling == "sample" else None
            generated = generate_ids(loaded, [start], new, top_k=top_k, seed=settings.seed + index)[0]
            texts.append(tokenizer.decode(start + generated, skip_special_tokens=True))
    prefixes = [""] + [clean_prefix(text) + ". " for text in texts]
    with _CACHE_LOCK:
        _CACHE[key] = prefixes
    return list(prefixes)


def clean_prefix(text: str) -> str:
    """One line of text without braces (so it never looks like a template)."""
    text = text.replace("{", " ").replace("}", " ")
    return re.sub(r"\s+", " ", text).strip()
