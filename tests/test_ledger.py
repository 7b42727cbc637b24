"""The edit ledger: batches in sequence, exact undo, safetensors round trip, another model's ledger refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from core.errors import InputError
from core.loading import from_parts
from editor.edits.ledger import METADATA_KEY, EditLedger, edits_applied, edits_suspended
from editor.edits.requests import EditRequest
from editor.edits.weights import hold_weights, projection_weight, release_weights
from editor.methods.memit import Memit, MemitSettings
from editor.statistics.covariance import layer_covariances
from tests.tiny_models import tiny_model

HPARAMS = MemitSettings(layers=(1, 2), cov_tokens=300, steps=3, prefix_tokens=4)


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    """A private tiny model (the ledger tests change and restore its weights many times)."""
    return from_parts(tiny_model("llama"), tokenizer, spec="tiny-llama-ledger")


@pytest.fixture(scope="module")
def two_batches(tiny_llama):
    covariances = layer_covariances(tiny_llama, [1, 2], HPARAMS.cov_tokens)
    first = Memit(HPARAMS).compute(tiny_llama, [EditRequest("Eiffel Tower", "The {} is in", "Rome")], covariances=covariances)
    ledger = EditLedger.for_model(tiny_llama)
    ledger.add(first, tiny_llama)
    second = Memit(HPARAMS.replace(layers=(2,))).compute(tiny_llama, [EditRequest("Colosseum", "{} is in", "London"), EditRequest("Louvre", "The {} is in", "Berlin")], ledger=ledger, covariances=covariances,
    )
    return first, second


def weights_of(loaded, layers=(1, 2)):
    return {layer: loaded.layout.output_projection_weight(loaded.model, layer).detach().clone() for layer in layers}


def test_sequence_undo_and_reset_are_exact(tiny_llama, two_batches):
    first, second = two_batches
    original = weights_of(tiny_llama)
    ledger = EditLedger.for_model(tiny_llama)
    ledger.add(first, tiny_llama)
    ledger.add(second, tiny_llama)
    with ledger.applied(tiny_llama):
        both = weights_of(tiny_llama)
        assert torch.equal(both[1], original[1] + first.deltas[1])
        assert torch.equal(both[2], (original[2] + first.deltas[2]) + second.deltas[2])
    assert all(torch.equal(weights_of(tiny_llama)[layer], original[layer]) for layer in (1, 2))
    ledger.undo(first.batch_id)  # undo a batch in the middle: the rest is re-applied from the originals
    with ledger.applied(tiny_llama):
        only_second = weights_of(tiny_llama)
        assert torch.equal(only_second[1], original[1])
        assert torch.equal(only_second[2], original[2] + second.deltas[2])
    ledger.reset()
    with ledger.applied(tiny_llama):
        assert all(torch.equal(weights_of(tiny_llama)[layer], original[layer]) for layer in (1, 2))
    with pytest.raises(InputError, match="nothing to undo|no edit to undo"):
        ledger.undo()
    with pytest.raises(InputError, match="already in the ledger"):
        ledger.add(first)
        ledger.add(first)


def same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[layer], second[layer]) for layer in first)


def test_suspended_edits_are_the_original_weights_and_come_back_bit_for_bit(tiny_llama, two_batches):
    first, second = two_batches
    original = weights_of(tiny_llama)
    outer, inner = EditLedger.for_model(tiny_llama), EditLedger.for_model(tiny_llama)
    outer.add(first, tiny_llama)
    inner.add(second, tiny_llama)
    with inner.applied(tiny_llama):
        inner_alone = weights_of(tiny_llama)
    with outer.applied(tiny_llama), inner.applied(tiny_llama):  # nested ledgers, and a held update on top
        held = hold_weights(tiny_llama, [1])
        projection_weight(tiny_llama, 1).add_(0.5)
        edited = weights_of(tiny_llama)
        with edits_suspended(tiny_llama):
            assert not edits_applied(tiny_llama) and same(weights_of(tiny_llama), original)
            with inner.applied(tiny_llama):  # another session's work sees an idle model
                assert same(weights_of(tiny_llama), inner_alone)
            assert same(weights_of(tiny_llama), original)
        assert edits_applied(tiny_llama) and same(weights_of(tiny_llama), edited)
        release_weights(tiny_llama, held)
    assert same(weights_of(tiny_llama), original) and not edits_applied(tiny_llama)


def test_save_and_load_round_trip(tiny_llama, two_batches, tmp_path):
    first, second = two_batches
    ledger = EditLedger.for_model(tiny_llama)
    ledger.add(first, tiny_llama)
    ledger.add(second, tiny_llama)
    path = ledger.save(tmp_path / "edits.safetensors")
    with safe_open(str(path), framework="pt") as handle:  # a plain safetensors file with JSON metadata
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    assert metadata["model"] == ledger.model and len(metadata["batches"]) == 2
    loaded = EditLedger.load(path, tiny_llama)
    assert [b.batch_id for b in loaded] == [first.batch_id, second.batch_id]
    assert [r.to_dict() for r in loaded.requests] == [r.to_dict() for r in ledger.requests]
    assert loaded.batches[1].request_diagnostics[0].losses == second.request_diagnostics[0].losses
    for mine, theirs in zip(ledger, loaded):
        assert mine.deltas.keys() == theirs.deltas.keys()
        assert all(torch.equal(mine.deltas[layer], theirs.deltas[layer]) for layer in mine.deltas)
    with ledger.applied(tiny_llama):
        expected = ledger.weights_hash(tiny_llama)
    with loaded.applied(tiny_llama):
        assert loaded.weights_hash(tiny_llama) == expected


def test_another_models_ledger_is_refused(tiny_llama, two_batches, tiny, tmp_path, tokenizer):
    ledger = EditLedger.for_model(tiny_llama)
    ledger.add(two_batches[0], tiny_llama)
    path = ledger.save(tmp_path / "edits.safetensors")
    with pytest.raises(InputError, match="made for model 'tiny-llama-ledger-3L'.*loaded model is 'tiny-gpt2-3L'"):
        EditLedger.load(path, tiny("gpt2"))
    # same name and shapes, other weights: refused too
    impostor = from_parts(tiny_model("llama", seed=1), tokenizer, spec="tiny-llama-ledger")
    with pytest.raises(InputError, match="different weights"):
        EditLedger.load(path, impostor)
    with pytest.raises(InputError, match="not a Locus edit ledger|Cannot read"):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"not a safetensors file")
        EditLedger.load(bad)
