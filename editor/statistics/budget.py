"""The largest covariance budget a corpus allows: how many tokens it gives a model (computed once, cached)."""

from __future__ import annotations

import json
from typing import Any

from core.embedded import cache_root
from core.errors import InputError
from core.facts import model_key
from core.loading import LoadedModel
from editor.statistics.corpus import Corpus, load_corpus

BATCH_TEXTS = 512  # texts tokenized per call


def corpus_tokens(loaded: LoadedModel, corpus: str | Corpus = "wikipedia", tokenizer: Any = None) -> int:
    """Tokens the covariance pass can read from `corpus`: each text tokenized and cut to the model's context
    (the held-out texts at the end of the corpus's order, kept for perplexity, are not counted).

    `tokenizer`: a copy of the model's tokenizer to use instead of `loaded.tokenizer` (the model itself
    is not run, so this may be called outside the thread that runs the model).
    """
    tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
    corpus = load_corpus(corpus) if isinstance(corpus, str) else corpus
    path = cache_root() / "corpus_tokens" / f"{model_key(loaded)}-{corpus.digest}-held{corpus.held_out}.json"
    try:
        return int(json.loads(path.read_text())["tokens"])
    except (OSError, ValueError, KeyError):
        pass
    total = 0
    readable = corpus.texts[: corpus.statistics_texts]
    for start in range(0, len(readable), BATCH_TEXTS):
        encoded = tokenizer(list(readable[start : start + BATCH_TEXTS]))["input_ids"]
        total += sum(min(len(ids), loaded.max_length) for ids in encoded)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"tokens": total, "corpus": corpus.describe(), "model": loaded.name}))
        temporary.replace(path)
    except OSError:
        pass  # a read-only cache: counted again next time
    return total


def check_budget(tokens: int, available: int, corpus_name: str = "the corpus") -> int:
    """`tokens`, or InputError when the corpus cannot give that many (the figure in the message)."""
    if tokens < 1:
        raise InputError(f"The covariance token budget must be at least 1, got {tokens:,}.")
    if tokens > available:
        raise InputError(
            f"The covariance budget of {tokens:,} tokens is more than {corpus_name} holds ({available:,} tokens for this "
            f"model): choose at most {available:,}."
        )
    return tokens
