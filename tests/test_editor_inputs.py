"""Bad input is refused with a plain message and leaves the weights exactly as they were."""

from __future__ import annotations

import pytest
import torch

from core.errors import InputError, LocusError
from editor.edits.requests import EditRequest, validate_requests
from editor.edits.weights import weights_hash
from editor.methods.memit import Memit, MemitSettings
from editor.methods.rome import Rome, RomeSettings
from editor.statistics.covariance import CovarianceSet
from tests.test_editor_support import editing_hparams, shared_covariances

GOOD = EditRequest("Eiffel Tower", "The {} is located in the city of", "Rome", "Paris")


BAD_REQUESTS = [
    (EditRequest("Big Ben", "The Eiffel Tower is located in the city of", "Rome"), "does not occur in the prompt"),
    (EditRequest("Eiffel Tower", "The {} is located in the city of", "   "), "new object .* is empty"),
    (EditRequest("Eiffel Tower", "The {} is located in the city of", "Paris", "Paris"), "same as the current one"),
    (EditRequest("Eiffel Tower", "The {} is in {}", "Rome"), "exactly one"),
    (EditRequest("", "The {} is located in the city of", "Rome"), "subject is empty"),
    (EditRequest("Eiffel Tower", "", "Rome"), "prompt is empty"),
]
LONG_PROMPT = "The {} is located in " + "the very old city of " * 40


def test_bad_input_is_refused_before_anything_runs(embedded):
    """Subject not in prompt, empty/identical target, bad template, too many tokens, bad settings."""
    before = weights_hash(embedded, range(embedded.layout.num_layers))
    hparams = editing_hparams(embedded)
    for request, message in BAD_REQUESTS:
        with pytest.raises(InputError, match=message):
            Memit(hparams).compute(embedded, [request])
        with pytest.raises(InputError, match=message):
            Rome(RomeSettings.from_dict(hparams.to_dict())).compute(embedded, [request])
    with pytest.raises(InputError, match="at most 96"):
        validate_requests([EditRequest("Eiffel Tower", LONG_PROMPT, "Rome")], embedded.tokenizer, 96)
    with pytest.raises(InputError, match="Request 2 .*at most"):
        Memit(hparams).compute(embedded, [GOOD, EditRequest("Eiffel Tower", LONG_PROMPT, "Rome")])
    with pytest.raises(InputError, match="outside"):
        Memit(MemitSettings(layers=(2, 40))).compute(embedded, [GOOD])
    with pytest.raises(InputError, match="lambda"):
        Memit(MemitSettings(mom2_weight=-1)).compute(embedded, [GOOD])
    assert weights_hash(embedded, range(embedded.layout.num_layers)) == before


def test_a_prompt_that_contains_the_subject_becomes_a_template():
    request = EditRequest("Eiffel Tower", "The Eiffel Tower is located in the city of", "Rome").validated()
    assert request.prompt == "The {} is located in the city of" and request.text.startswith("The Eiffel Tower")


def test_nan_in_an_update_is_caught_before_it_is_applied(embedded):
    """A covariance with NaN makes every update NaN: the edit is refused and no weight changes."""
    hparams = editing_hparams(embedded, steps=1)
    real = shared_covariances(embedded)
    poisoned = CovarianceSet({layer: c.clone() for layer, c in real.covariances.items()}, real.diagnostics)
    poisoned.covariances[hparams.layers[0]][0, 0] = float("nan")
    before = weights_hash(embedded, range(embedded.layout.num_layers))
    with pytest.raises(LocusError, match=f"layer {hparams.layers[0]} contains NaN"):
        Memit(hparams).compute(embedded, [GOOD], covariances=poisoned)
    assert weights_hash(embedded, range(embedded.layout.num_layers)) == before
    assert torch.isfinite(real.covariances[hparams.layers[0]]).all()
