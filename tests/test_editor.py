"""MEMIT on the real embedded model: edits flip predictions, weights come back bit for bit, batched = serial."""

from __future__ import annotations

import pytest
import torch

from core.predict import predict_next_tokens
from editor.edits.ledger import EditLedger
from editor.edits.requests import EditRequest
from editor.edits.weights import weights_hash
from editor.evaluation.by_generation import generation_checks
from editor.evaluation.counterfact import CounterFactRecord
from editor.evaluation.evaluate import score_records
from editor.methods.memit import Memit
from editor.methods.prefixes import context_prefixes
from editor.methods.targets import compute_targets
from tests.test_editor_support import editing_hparams, shared_covariances

THREE_EDITS = [
    EditRequest("Eiffel Tower", "The {} is located in the city of", "Rome", "Paris"),
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    EditRequest("Colosseum", "The {} is located in the city of", "London", "Rome"),
]


def top_token(loaded, prompt: str) -> str:
    return predict_next_tokens(loaded, prompt, 1)[0].token.strip()


@pytest.fixture(scope="module")
def three_edit_batch(embedded):
    hparams = editing_hparams(embedded)
    return Memit(hparams).compute(embedded, THREE_EDITS, covariances=shared_covariances(embedded))


def test_three_edits_flip_predictions_and_undo_restores_weights(embedded, three_edit_batch):
    batch = three_edit_batch
    before = {r.text: top_token(embedded, r.text) for r in THREE_EDITS}
    assert before == {r.text: r.target_true for r in THREE_EDITS}  # the model knows the facts
    ledger = EditLedger.for_model(embedded)
    ledger.add(batch, embedded)
    original = ledger.weights_hash(embedded)
    with ledger.applied(embedded):
        edited_hash = ledger.weights_hash(embedded)
        after = {r.text: top_token(embedded, r.text) for r in THREE_EDITS}
        unrelated = top_token(embedded, "The Louvre is located in the city of")
    assert after == {r.text: r.target_new for r in THREE_EDITS}
    assert unrelated == "Paris"
    assert edited_hash != original
    assert ledger.weights_hash(embedded) == original  # restored bit for bit on exit
    assert {r.text: top_token(embedded, r.text) for r in THREE_EDITS} == before
    ledger.undo(batch.batch_id)
    assert not ledger.batches
    with ledger.applied(embedded):  # an empty ledger applies nothing
        assert weights_hash(embedded, batch.layers) == original
    # the diagnostics describe the edit
    assert [d.layer for d in batch.layer_diagnostics] == list(batch.layers)
    assert all(0 < d.relative_update < 1 for d in batch.layer_diagnostics)
    assert batch.final_residual_norm < batch.layer_diagnostics[0].residual_norm
    assert all(d.losses[-1] < d.losses[0] and d.final_probability > 0.5 for d in batch.request_diagnostics)
    assert any("Layer 2" in w and "outlier" in w for w in batch.warnings)
    assert not any("wrote only" in w for w in batch.warnings)  # the default lambda carries the edit


def test_applied_restores_weights_after_an_exception_and_a_closed_generator(embedded, three_edit_batch):
    ledger = EditLedger.for_model(embedded)
    ledger.add(three_edit_batch, embedded)
    original = ledger.weights_hash(embedded)
    with pytest.raises(RuntimeError, match="boom"):
        with ledger.applied(embedded):
            assert ledger.weights_hash(embedded) != original
            raise RuntimeError("boom")
    assert ledger.weights_hash(embedded) == original

    def stream():
        with ledger.applied(embedded):
            yield top_token(embedded, THREE_EDITS[0].text)
            yield "never"

    generator = stream()
    assert next(generator) == "Rome"
    assert ledger.weights_hash(embedded) != original  # still inside
    generator.close()
    assert ledger.weights_hash(embedded) == original


def test_second_batch_is_computed_on_top_of_the_first(embedded, three_edit_batch):
    ledger = EditLedger.for_model(embedded)
    ledger.add(three_edit_batch, embedded)
    original = ledger.weights_hash(embedded)
    hparams = editing_hparams(embedded)
    second = Memit(hparams).compute(embedded, [EditRequest("Eiffel Tower", "The {} is located in the city of", "London", "Rome")],
        ledger=ledger, covariances=shared_covariances(embedded),
    )
    assert ledger.weights_hash(embedded) == original  # computing left the shared weights alone
    ledger.add(second, embedded)
    with ledger.applied(embedded):
        assert top_token(embedded, THREE_EDITS[0].text) == "London"
        assert top_token(embedded, THREE_EDITS[1].text) == "English"
        both = ledger.weights_hash(embedded)
    ledger.undo(second.batch_id)
    with ledger.applied(embedded):
        assert top_token(embedded, THREE_EDITS[0].text) == "Rome"
        assert ledger.weights_hash(embedded) != both
    assert ledger.weights_hash(embedded) == original


def test_success_by_generation_before_and_after_the_edits(embedded, three_edit_batch):
    """SPEC 6 on the three known facts: greedy decoding says the true objects before, the new ones after."""
    records = [CounterFactRecord(index, r.subject, r.prompt, r.target_new, r.target_true) for index, r in enumerate(THREE_EDITS)]
    records[0].neighborhood_prompts = ["The Louvre is located in the city of"]  # Paris, and stays Paris
    before, _ = score_records(embedded, records, generation=False)
    assert [s.es_gen for s in before] == [0.0, 0.0, 0.0] and before[0].ns_gen == 1.0
    assert generation_checks(embedded, [(r.text, r.target_true) for r in THREE_EDITS]) == [True, True, True]
    ledger = EditLedger.for_model(embedded)
    ledger.add(three_edit_batch, embedded)
    with ledger.applied(embedded):
        after, _ = score_records(embedded, records, generation=False)
    assert [s.es_gen for s in after] == [1.0, 1.0, 1.0] and after[0].ns_gen == 1.0
    assert all(s.ps_gen is None for s in after) and [s.ns_gen for s in after[1:]] == [None, None]  # no such prompts


def test_batched_targets_equal_serial_targets(embedded):
    hparams = editing_hparams(embedded, steps=6)
    prefixes = context_prefixes(embedded, hparams)
    requests = THREE_EDITS[:2]
    together = compute_targets(embedded, requests, hparams, prefixes)
    for index, request in enumerate(requests):
        alone = compute_targets(embedded, [request], hparams, prefixes, engine="full")
        scale = float(alone.targets[0].norm())
        assert torch.allclose(together.targets[index], alone.targets[0], atol=1e-4 * scale)
        assert torch.allclose(together.hidden[index], alone.hidden[0], atol=1e-5 * scale)
        assert together.diagnostics[index].losses == pytest.approx(alone.diagnostics[0].losses, rel=1e-3, abs=1e-4)


def test_first_step_goes_down_the_gradient_to_a_fraction_of_the_clamp_radius(embedded):
    """first_step > 0: after one step ||delta|| = first_step x clamp_norm x ||h|| and the loss has fallen; 0: Adam's own step."""
    hparams = editing_hparams(embedded, steps=2, loss_stop=0.0, first_step=0.5)
    prefixes = context_prefixes(embedded, hparams)
    requests = THREE_EDITS[:2]
    stepped = compute_targets(embedded, requests, hparams, prefixes)
    lengths = (stepped.targets - stepped.hidden).norm(dim=-1) / stepped.hidden.norm(dim=-1)
    assert torch.allclose(lengths, torch.full_like(lengths, 0.5 * hparams.clamp_norm), rtol=1e-5)  # float32 norms
    assert all(d.steps == 1 and d.losses[1] < d.losses[0] for d in stepped.diagnostics)
    shorter = compute_targets(embedded, requests, hparams.replace(first_step=0.25), prefixes)
    cosine = torch.nn.functional.cosine_similarity(stepped.targets - stepped.hidden, shorter.targets - shorter.hidden, dim=-1)
    assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-5)  # one direction (the gradient at 0), two lengths
    adam = compute_targets(embedded, requests, hparams.replace(first_step=0.0), prefixes)
    adam_lengths = (adam.targets - adam.hidden).norm(dim=-1)
    expected = hparams.lr * (embedded.layout.hidden_size ** 0.5)  # Adam's first step: lr per coordinate, every coordinate
    assert torch.allclose(adam_lengths, torch.full_like(adam_lengths, expected), rtol=1e-3)
