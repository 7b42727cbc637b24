"""Noise for causal traces: the reference RNG, the noise level (3 sigma or absolute), sigma per model.

SPEC section 1: noise = nu * eps added to the token-embedding module's output at the subject tokens;
eps ~ N(0, 1) (or U(-1, 1)) of shape (samples, e - b, d) drawn by a fresh
`numpy.random.RandomState(seed)`, so every cell of a trace sees the same noise. nu = 3 sigma by
default, sigma = the std of all elements of the embedding outputs of the known_1000 subjects, each
tokenized on its own (0.11666 for the embedded SmolLM2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy
import torch

from core.embedded import EMBEDDED_SPEC, cache_root
from core.errors import InputError
from core.facts import load_known_facts, model_key
from core.loading import LoadedModel
from core.paths import ASSETS
from core.progress import Progress

NOISE_TYPES = ("gaussian", "uniform")
_MULTIPLE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*[x×]\s*$")


def parse_noise(noise: str | float) -> tuple[str, float]:
    """("sigma", k) for "kx" (k times sigma), ("absolute", nu) for a number; InputError otherwise."""
    if isinstance(noise, bool):
        raise InputError(f"Noise {noise!r} is not understood: use e.g. 3x (three sigma) or an absolute level like 0.35.")
    if isinstance(noise, (int, float)):
        value, kind = float(noise), "absolute"
    else:
        text = str(noise).strip().lower()
        match = _MULTIPLE.match(text)
        try:
            value, kind = (float(match.group(1)), "sigma") if match else (float(text), "absolute")
        except ValueError:
            raise InputError(
                f"Noise {noise!r} is not understood: use e.g. 3x (three sigma) or an absolute level like 0.35."
            ) from None
    if not numpy.isfinite(value) or value < 0:
        raise InputError(f"Noise must be a finite number >= 0, got {noise!r}.")
    return kind, value


def draw_noise(samples: int, length: int, width: int, seed: int = 1, noise_type: str = "gaussian") -> torch.Tensor:
    """Unit noise eps (samples, length, width) float64 from a fresh RandomState(seed), as ROME draws it."""
    if noise_type not in NOISE_TYPES:
        raise InputError(f"Unknown noise type {noise_type!r}: use {' or '.join(NOISE_TYPES)}.")
    generator = numpy.random.RandomState(seed)
    if noise_type == "uniform":
        values = generator.uniform(-1, 1, (samples, length, width))
    else:
        values = generator.randn(samples, length, width)
    return torch.from_numpy(values)


def scaled_noise(level: float, unit: torch.Tensor) -> torch.Tensor:
    """nu * eps in float64, computed as ROME's `noise_fn` does (before it is added in place)."""
    return level * unit


def add_noise_(embeddings: torch.Tensor, noise: torch.Tensor, subject_range: tuple[int, int]) -> torch.Tensor:
    """Add float64 `noise` (rows, e-b, d) in place to `embeddings` (rows, T, d) at [b, e); returns it."""
    begin, end = subject_range
    embeddings[:, begin:end] += noise.to(embeddings.device)
    return embeddings


# --- sigma per model ---------------------------------------------------------------------------

def sigma_cache_path(loaded: LoadedModel) -> Path:
    """assets/ for the embedded model (so a fresh clone has it), else the per-user cache."""
    name = f"embedding_sigma_{model_key(loaded)}.json"
    if loaded.spec == EMBEDDED_SPEC:
        return ASSETS / name
    return cache_root() / "embedding_sigma" / name


@torch.inference_mode()
def measure_embedding_sigma(loaded: LoadedModel, subjects: list[str]) -> float:
    """Std of all elements of the token-embedding module's outputs for each subject tokenized alone."""
    embedding = loaded.model.get_submodule(loaded.layout.token_embedding)
    outputs = []
    for subject in subjects:
        ids = list(loaded.tokenizer(subject)["input_ids"])
        if ids:
            outputs.append(embedding(torch.tensor([ids], device=loaded.device))[0].float())
    return float(torch.cat(outputs).std().item())


def embedding_sigma(loaded: LoadedModel, use_cache: bool = True, progress: Progress | None = None) -> float:
    """Sigma of the model's embeddings over the known_1000 subjects (cached per model)."""
    path = sigma_cache_path(loaded)
    key = model_key(loaded)
    if use_cache and path.is_file():
        try:
            record = json.loads(path.read_text())
            if record.get("model_key") == key:
                return float(record["sigma"])
        except (ValueError, KeyError, OSError):
            pass
    if progress is not None:
        progress(0.0, "measuring the embedding noise level (sigma) over the known_1000 subjects")
    subjects = [fact.subject for fact in load_known_facts()]
    sigma = measure_embedding_sigma(loaded, subjects)
    if use_cache:
        payload = {
            "model_key": key,
            "model": loaded.name,
            "sigma": sigma,
            "subjects": len(subjects),
            "rule": "std of all elements of the token-embedding outputs of the known_1000 subjects, each tokenized alone",
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(payload, indent=1))
            temporary.replace(path)
        except OSError:
            pass  # a read-only checkout still traces; it just measures again next time
    return sigma


def noise_level(loaded: LoadedModel, noise: str | float) -> float:
    """nu for a setting: k * sigma for "kx", else the absolute value."""
    kind, value = parse_noise(noise)
    return value * embedding_sigma(loaded) if kind == "sigma" else value
