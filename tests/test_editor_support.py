"""Shared settings for the editor tests (no tests here): a small covariance budget, computed once per run.

CI starts from an empty cache, so the covariance the tests need is computed during the run; every test
module asks for it through `shared_covariances`, which the editor keeps in memory after the first call.
"""

from __future__ import annotations

from editor.methods.memit import Memit, MemitSettings
from editor.statistics.covariance import CovarianceSet, layer_covariances

TEST_TOKENS = 4000  # corpus tokens for the tests' C (the real default is much larger)


def editing_hparams(loaded, **changes) -> MemitSettings:
    """The family defaults with the tests' token budget."""
    return Memit.for_model(loaded.layout, cov_tokens=TEST_TOKENS, **changes).settings


def shared_covariances(loaded, layers=None) -> CovarianceSet:
    """C for the default layers (or `layers`) at TEST_TOKENS, computed once per process."""
    layers = list(layers or editing_hparams(loaded).layers)
    return layer_covariances(loaded, layers, TEST_TOKENS)
