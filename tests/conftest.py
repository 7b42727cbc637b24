"""Shared fixtures: one embedded model per test session, tiny models per family."""

from __future__ import annotations

import os

# Nothing may reach a hub, and Gradio must not phone home (set before those libraries load).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import pytest  # noqa: E402

from tests.tiny_models import FAMILIES, tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M-Instruct, loaded once for the whole session (CPU, float32)."""
    from core.loading import load_model

    return load_model("embedded", device="cpu")


def weights_fingerprint(model) -> list[int]:
    """An exact-enough fingerprint of every parameter: the int64 sum of its raw bits."""
    import torch

    return [int(p.detach().view(torch.int32).sum(dtype=torch.int64)) if p.dtype == torch.float32
            else int(p.detach().float().view(torch.int32).sum(dtype=torch.int64)) for p in model.parameters()]


@pytest.fixture(autouse=True)
def embedded_left_clean(request):
    """Every test that uses the shared embedded model must leave its weights and hooks as it found them."""
    if "embedded" not in request.fixturenames:
        yield
        return
    from core.hooks import hook_count

    loaded = request.getfixturevalue("embedded")
    before, hooks = weights_fingerprint(loaded.model), hook_count(loaded.model)
    yield
    assert weights_fingerprint(loaded.model) == before, "the test changed the shared model's weights"
    assert hook_count(loaded.model) == hooks, "the test left hooks on the shared model"


@pytest.fixture(scope="session")
def tokenizer(embedded):
    return embedded.tokenizer


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """Factory: the LoadedModel of a tiny random model of a family (cached per family)."""
    from core.loading import from_parts

    built = {}

    def make(model_type: str):
        if model_type not in built:
            built[model_type] = from_parts(tiny_model(model_type), tokenizer, spec=f"tiny-{model_type}")
        return built[model_type]

    return make


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
