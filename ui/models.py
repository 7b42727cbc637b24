"""The one model in memory, and which models the page may switch between.

The app holds exactly one `LoadedModel`. Each browser session names the model it works on; a job
for another model swaps the one in memory (on the runner thread, so never under a running job).
Loading starts at start-up as the runner's first job, so the page is served while the weights load.
"""

from __future__ import annotations

import copy
import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from core.embedded import EMBEDDED_SPEC
from core.errors import InputError, ModelLoadError
from core.loading import LoadedModel, load_model

log = logging.getLogger("locus.ui")


class ModelManager:
    """Loads and swaps the single model; the runner thread is the only caller of `get`."""

    def __init__(
        self,
        specs: list[str] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        preloaded: LoadedModel | None = None,
    ) -> None:
        ordered = list(dict.fromkeys(spec.strip() for spec in (specs or [EMBEDDED_SPEC]) if spec and spec.strip()))
        self.specs: list[str] = ordered or [EMBEDDED_SPEC]
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self._loaded: LoadedModel | None = preloaded
        self._loaded_spec: str | None = preloaded.spec if preloaded is not None else None
        if preloaded is not None and preloaded.spec not in self.specs:
            self.specs.insert(0, preloaded.spec)
        self._loading_spec: str | None = None
        self._error: str | None = None
        self._tokenizers: dict[str, Any] = {}
        self._status_lock = threading.Lock()

    @property
    def default_spec(self) -> str:
        return self.specs[0]

    def check_allowed(self, spec: str) -> str:
        if spec not in self.specs:
            raise InputError(f"Model {spec!r} is not one this app serves. Choose one of: {', '.join(self.specs)}.")
        return spec

    def get(self, spec: str | None = None, progress: Callable[[float | None, str], None] | None = None) -> LoadedModel:
        """The loaded model for `spec` (default: the first), loading it in place of the current one if needed."""
        spec = self.check_allowed(spec or self.default_spec)
        if self._loaded is not None and self._loaded_spec == spec:
            return self._loaded
        if progress is not None:
            progress(None, f"Loading model {spec}…")
        with self._status_lock:
            previous, self._loaded, self._loaded_spec = self._loaded, None, None
            self._loading_spec, self._error = spec, None
        if previous is not None:  # only the runner thread runs models, so nothing uses it now
            del previous
            self._tokenizers.clear()
            _free_memory()
        try:
            loaded = load_model(spec, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
        except ModelLoadError as error:
            with self._status_lock:
                self._error, self._loading_spec = str(error), None
            raise
        except Exception as error:
            with self._status_lock:
                self._error, self._loading_spec = f"Could not load {spec!r}: {error}", None
            raise
        with self._status_lock:
            self._loaded, self._loaded_spec, self._loading_spec = loaded, spec, None
        log.info("model %s loaded on %s (%s)", loaded.name, loaded.device, loaded.dtype)
        return loaded

    def current(self) -> LoadedModel | None:
        """The model in memory now (None while loading)."""
        return self._loaded

    def status(self) -> dict:
        """What the model panel shows: the loaded model's description, or loading / error."""
        with self._status_lock:
            loaded, spec, loading, error = self._loaded, self._loaded_spec, self._loading_spec, self._error
        if loaded is not None:
            return {"state": "ready", "spec": spec, **loaded.describe()}
        if loading is not None:
            return {"state": "loading", "spec": loading}
        if error is not None:
            return {"state": "error", "error": error}
        return {"state": "waiting"}

    def display_tokenizer(self, spec: str | None = None) -> Any | None:
        """A private copy of the tokenizer of `spec` for checking and highlighting typed text (None if not loaded).

        A copy, because fast tokenizers refuse to be used from two threads at once and model jobs
        tokenize on the runner thread while the page checks and highlights what visitors type; the
        copy is shared by Gradio's threads, so every use of it holds a lock.
        """
        spec = spec or self.default_spec
        if spec in self._tokenizers:
            return self._tokenizers[spec]
        loaded = self._loaded
        if loaded is None or self._loaded_spec != spec:
            return None
        tokenizer = LockedTokenizer(copy.deepcopy(loaded.tokenizer))
        self._tokenizers[spec] = tokenizer
        return tokenizer


class LockedTokenizer:
    """A tokenizer whose calls and methods run one at a time (it is shared by Gradio's worker threads)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._tokenizer, name)
        if not callable(value):
            return value

        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        return locked


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
