"""Lifelong editing: compact ledger with exact undo, AlphaEdit's sequential state, held-out text, health, collapse."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from core.errors import InputError, LocusError
from core.facts import KnownFact, load_known_facts
from core.hooks import edit_outputs
from core.loading import from_parts
from core.tokens import encode_prompt, target_token_ids
from editor.cli import main
from editor.edits.ledger import METADATA_KEY, EditLedger
from editor.edits.requests import EditRequest
from editor.edits.weights import weights_hash
from editor.evaluation.counterfact import load_records
from editor.evaluation.damage import damage_report, random_update_like
from editor.evaluation.health import (
    Health,
    collapse_message,
    forget_health_figures,
    health_cost,
    health_history_stream,
    health_warnings,
    held_out_texts,
    model_health,
    perplexity,
    probe_facts,
    retention,
    retention_with_forgotten,
)
from editor.methods.alphaedit import AlphaEdit, AlphaEditSettings
from editor.methods.encore import Encore, EncoreSettings
from editor.methods.memit import Memit, MemitSettings
from editor.methods.prefixes import context_prefixes
from editor.methods.registry import method_class
from editor.methods.settings import EditSettings
from editor.methods.targets import compute_targets
from editor.methods.updates import memit_factors, memit_update
from editor.statistics.budget import corpus_tokens
from editor.statistics.corpus import HELD_OUT_TEXTS, load_corpus
from editor.statistics.covariance import collect_second_moments, layer_covariances
from editor.studies.figures import sequential_figures
from editor.studies.lifelong import (
    LIFELONG_FILE,
    build_lifelong_records,
    rewrite_cases,
    sentence_cases,
    split_sentence,
)
from editor.studies.sequential import resume_mismatch, run_sequential
from tests.tiny_models import tiny_model
from tracer.figures import figure_caption

HPARAMS = MemitSettings(layers=(1, 2), cov_tokens=300, steps=3, prefix_tokens=4)
BATCHES = [
    [EditRequest("Eiffel Tower", "The {} is in", "Rome"), EditRequest("Louvre", "The {} is in", "Berlin")],
    [EditRequest("Colosseum", "{} is in", "London"), EditRequest("Big Ben", "{} is in", "Tokyo")],
    [EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English")],
]


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    """A private tiny model (these tests change and restore its weights many times)."""
    return from_parts(tiny_model("llama"), tokenizer, spec="tiny-llama-lifelong")


@pytest.fixture(scope="module")
def three_batches(tiny_llama):
    """Three MEMIT batches, each computed on the model with the earlier ones applied."""
    covariances = layer_covariances(tiny_llama, [1, 2], HPARAMS.cov_tokens)
    ledger = EditLedger.for_model(tiny_llama)
    for requests in BATCHES:
        ledger.add(Memit(HPARAMS).compute(tiny_llama, requests, ledger=ledger if len(ledger) else None,
                                 covariances=covariances), tiny_llama)
    return list(ledger)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """1,000 short texts: large enough to hold the last 200 out."""
    path = tmp_path_factory.mktemp("corpus") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": f"Text number {i} is about the city of {['Paris', 'Rome', 'Oslo'][i % 3]}."}) + "\n"
                            for i in range(1000)))
    return path


def weights_of(loaded, layers=(1, 2)):
    return {layer: loaded.layout.output_projection_weight(loaded.model, layer).detach().clone() for layer in layers}


def test_undo_of_a_middle_batch_restores_the_weights_bit_for_bit(tiny_llama, three_batches, tmp_path):
    first, middle, last = three_batches
    original = weights_of(tiny_llama)
    layout = tiny_llama.layout
    for batch in three_batches:  # stored as factors: rank = requests, (d + m) numbers per edit and layer
        for layer in batch.deltas:
            stored = batch.deltas.stored(layer)
            assert stored.rank == len(batch)
            assert stored.nbytes == 4 * len(batch) * (layout.hidden_size + layout.mlp_size)
    ledger = EditLedger.for_model(tiny_llama)
    for batch in three_batches:
        ledger.add(batch, tiny_llama)
    with ledger.applied(tiny_llama):
        assert all(torch.equal(weights_of(tiny_llama)[layer],
                               ((original[layer] + first.deltas[layer]) + middle.deltas[layer]) + last.deltas[layer])
                   for layer in (1, 2))
    ledger.undo(middle.batch_id)
    expected = {layer: (original[layer] + first.deltas[layer]) + last.deltas[layer] for layer in (1, 2)}
    fresh = EditLedger.for_model(tiny_llama)  # no cache: built from the originals
    fresh.add(first)
    fresh.add(last)
    for candidate in (ledger, ledger, fresh):  # rebuilt after the undo, then from the cache, then from scratch
        with candidate.applied(tiny_llama):
            assert all(torch.equal(weights_of(tiny_llama)[layer], expected[layer]) for layer in (1, 2))
    assert all(torch.equal(weights_of(tiny_llama)[layer], original[layer]) for layer in (1, 2))
    loaded = EditLedger.load(ledger.save(tmp_path / "edits.safetensors"), tiny_llama)
    assert [batch.deltas.stored(1).rank for batch in loaded] == [len(first), len(last)]
    with loaded.applied(tiny_llama):
        assert all(torch.equal(weights_of(tiny_llama)[layer], expected[layer]) for layer in (1, 2))
    assert ledger.nbytes()["cache"] == sum(4 * layout.hidden_size * layout.mlp_size for _ in (1, 2))
    # a ledger file of format 1 (dense deltas) still loads and gives the same weights
    old = {f"batch{i}.layer{layer}.{part}": tensor for i, batch in enumerate(ledger) for layer in batch.deltas
           for part, tensor in (("delta", batch.deltas[layer]), ("keys", batch.keys[layer]))}
    save_file(old, str(tmp_path / "old.safetensors"), metadata={METADATA_KEY: json.dumps({**ledger.to_dict(), "format": 1})})
    with EditLedger.load(tmp_path / "old.safetensors", tiny_llama).applied(tiny_llama):
        assert all(torch.equal(weights_of(tiny_llama)[layer], expected[layer]) for layer in (1, 2))


def test_sequential_alphaedit_keeps_earlier_edits_keys_out_of_its_update(tiny, tmp_path):
    loaded = tiny("llama")
    covariances = layer_covariances(loaded, [2], 300)
    values, vectors = torch.linalg.eigh(covariances.covariances[2])
    threshold = float(values[len(values) // 2])  # half the directions preserved, half free
    # the tiny model's keys are small: the ridge term must be smaller still for the keys to count
    alphaedit = AlphaEdit(AlphaEditSettings(layers=(2,), cov_tokens=300, steps=8, prefix_starts=(),
                                            nullspace_threshold=threshold, l2=1e-8))
    first = alphaedit.compute(loaded, BATCHES[0] + BATCHES[2], covariances=covariances)
    ledger = EditLedger.for_model(loaded)
    ledger.add(first, loaded)
    old_keys = first.keys[2].double()
    assert torch.equal(ledger.key_grams([2])[2], old_keys.T @ old_keys)

    def leaks(batch) -> float:
        """How much the update moves the earlier edits' outputs, relative to what it writes for its own keys."""
        delta = batch.deltas[2].double()
        return float((delta @ old_keys.T).norm() / (delta @ batch.keys[2].double().T).norm())

    second = alphaedit.compute(loaded, BATCHES[1], ledger=ledger, covariances=covariances)
    delta = second.deltas[2].double()
    preserved = vectors[:, values >= threshold]
    assert float((delta @ preserved).norm()) < 1e-6 * float(delta.norm())  # the update lives in C's null space
    forgetful = EditLedger.for_model(loaded)  # the same first batch, without the keys AlphaEdit keeps
    forgetful.add(dataclasses.replace(first, keys={}, batch_id="nokeys"), loaded)
    unprotected = alphaedit.compute(loaded, BATCHES[1], ledger=forgetful, covariances=covariances)
    assert leaks(second) < 0.1 * leaks(unprotected)
    # the per-ledger state follows the ledger exactly: add, undo, export/import, reset
    before = ledger.key_grams([2])[2]
    ledger.add(second, loaded)
    both = torch.cat([old_keys, second.keys[2].double()])
    assert torch.equal(ledger.key_grams([2])[2], both.T @ both)
    assert torch.equal(EditLedger.load(ledger.save(tmp_path / "a.safetensors"), loaded).key_grams([2])[2], both.T @ both)
    ledger.undo()
    assert torch.equal(ledger.key_grams([2])[2], before)
    ledger.reset()
    assert ledger.key_grams([2]) == {}


def test_most_probable_early_stop_ends_each_request_soon_after_its_target_leads(embedded):
    """ENCORE's MPES: a request stops once its new object has led on every prompt for N steps, on Adam's same path."""
    requests = [record.request() for record in load_records(LIFELONG_FILE)[:2]]
    hparams = Memit.for_model(embedded.layout, layers=(4,), steps=12, loss_stop=0.0, prefix_starts=("The", "I")).settings
    prefixes = context_prefixes(embedded, hparams)
    loss_only = compute_targets(embedded, requests, hparams, prefixes)
    assert all(d.steps == 11 and not d.converged for d in loss_only.diagnostics)  # nothing else stops it early
    once = compute_targets(embedded, requests, hparams.replace(early_stop_steps=1), prefixes)
    twice = compute_targets(embedded, requests, hparams.replace(early_stop_steps=2), prefixes)
    full = compute_targets(embedded, requests, hparams.replace(early_stop_steps=2), prefixes, engine="full")
    assert [d.steps for d in twice.diagnostics] == [d.steps for d in full.diagnostics]
    for first, second, plain in zip(once.diagnostics, twice.diagnostics, loss_only.diagnostics):
        assert first.converged and first.steps < second.steps < 11
        assert first.losses == pytest.approx(plain.losses[: len(first.losses)], rel=1e-3)  # the same path, cut short
        assert first.final_probability < plain.final_probability
    # where it stopped, the new object leads on the plain prompt (the edit-success criterion, at z)
    for request, z in zip(requests, once.targets):
        prompt = request.prompt.format(request.subject)
        encoded = encode_prompt(embedded.tokenizer, prompt)
        subject_last = encoded.subject_range(request.subject)[1] - 1
        new = target_token_ids(embedded.tokenizer, request.target_new, prompt)[0]

        def write_z(hidden: torch.Tensor, z=z, position=subject_last) -> torch.Tensor:
            hidden = hidden.clone()
            hidden[0, position] = z.to(hidden.dtype)
            return hidden

        with torch.no_grad(), edit_outputs(embedded.model, {embedded.layout.block(4): write_z}):
            logits = embedded.model(torch.tensor([encoded.input_ids])).logits[0, -1]
        assert int(logits.argmax()) == new


def test_encore_keeps_earlier_edits_keys_and_bounds_the_update_norm(tiny):
    """ENCORE's solve: (lambda C + K_p K_p^T + K K^T + norm_lambda I); the kept keys protect earlier edits."""
    generator = torch.Generator().manual_seed(0)
    residual, keys = torch.randn(3, 6, generator=generator), torch.randn(3, 8, generator=generator)
    covariance, previous = torch.eye(8) * 0.5, torch.randn(4, 8, generator=generator)
    left, right = memit_factors(residual, keys, covariance, 2.0, previous.T @ previous, 3.0)
    system = 2.0 * covariance + previous.T @ previous + keys.T @ keys + 3.0 * torch.eye(8)
    assert torch.allclose(left @ right, (residual.T @ keys @ torch.linalg.inv(system.double()).float()).double(), atol=1e-5)
    norms = [float(memit_update(residual, keys, covariance, 2.0) .norm())] + [
        float(torch.linalg.matrix_norm(torch.matmul(*memit_factors(residual, keys, covariance, 2.0, None, weight)))) for weight in (1.0, 10.0)]
    assert norms[0] > norms[1] > norms[2]  # the norm constraint shrinks the update
    loaded = tiny("llama")
    covariances = layer_covariances(loaded, [2], 300)
    encore = Encore(EncoreSettings(layers=(2,), cov_tokens=300, steps=8, prefix_starts=(), mom2_weight=1e-4,
                                   norm_lambda=1e-8, early_stop_steps=0))
    first = encore.compute(loaded, BATCHES[0] + BATCHES[2], covariances=covariances)
    ledger = EditLedger.for_model(loaded)
    ledger.add(first, loaded)
    old_keys = first.keys[2].double()

    def leaks(batch) -> float:
        delta = batch.deltas[2].double()
        return float((delta @ old_keys.T).norm() / (delta @ batch.keys[2].double().T).norm())

    kept = encore.compute(loaded, BATCHES[1], ledger=ledger, covariances=covariances)
    forgetful = EditLedger.for_model(loaded)
    forgetful.add(dataclasses.replace(first, keys={}, batch_id="nokeys"), loaded)
    assert leaks(kept) < 0.5 * leaks(encore.compute(loaded, BATCHES[1], ledger=forgetful, covariances=covariances))
    assert Encore.for_model(loaded.layout).settings.early_stop_steps == 2
    assert Memit.for_model(loaded.layout).settings.early_stop_steps == 0


def test_held_out_texts_never_reach_the_covariance(tiny, small_corpus):
    loaded = tiny("llama")
    corpus = load_corpus(str(small_corpus))
    assert corpus.held_out == HELD_OUT_TEXTS and corpus.held_out_texts() == corpus.texts[-HELD_OUT_TEXTS:]
    state = collect_second_moments(loaded, corpus, [1], budget=10**9)  # a budget larger than the whole corpus
    readable = corpus.texts[: len(corpus) - HELD_OUT_TEXTS]
    assert state.next_text == len(readable)
    assert state.tokens == sum(min(len(loaded.tokenizer(text)["input_ids"]), loaded.max_length) for text in readable)
    assert corpus_tokens(loaded, corpus) == state.tokens  # the budget check allows what the pass can read, no more


def test_perplexity_and_retention_are_what_they_say(embedded):
    texts = held_out_texts()[:1]
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([embedded.tokenizer(text)["input_ids"][:256]])
        with torch.no_grad():
            logits = embedded.model(ids).logits[0].float()
        total += float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    value, tokens, finite = perplexity(embedded, texts)
    assert finite and tokens == count and value == pytest.approx(math.exp(total / count), rel=1e-4)
    probes = probe_facts(embedded, count=8)
    assert len(probes) == 8 and len({fact.relation_id for fact in probes}) > 1
    assert not {fact.subject for fact in probe_facts(embedded, [p.subject for p in probes[:5]], count=8)} & {p.subject for p in probes[:5]}
    swapped = [dataclasses.replace(fact, attribute=probes[(i + 1) % 4].attribute) for i, fact in enumerate(probes[:4])]
    kept = 0
    for fact in probes + swapped:  # a plain greedy check of the first token
        with torch.no_grad():
            logits = embedded.model(torch.tensor([embedded.tokenizer(fact.prompt)["input_ids"]])).logits[0, -1]
        kept += int(logits.argmax()) == target_token_ids(embedded.tokenizer, fact.attribute, prompt=fact.prompt)[0]
    assert retention(embedded, probes + swapped) == (pytest.approx(100.0 * kept / 12), True)
    assert retention(embedded, probes)[0] == 100.0  # facts the model knows keep their first token
    _, _, forgotten = retention_with_forgotten(embedded, probes + swapped)
    assert len(forgotten) == 12 - kept and {fact["prompt"] for fact in forgotten} <= {fact.prompt for fact in swapped}
    for fact in forgotten:  # the answer is the model's own greedy answer: the fact's real attribute begins it
        real = next(p for p in probes if p.prompt == fact["prompt"])
        assert real.attribute.startswith(fact["answer"].strip()) and fact["expected"] != real.attribute


def test_health_thresholds_and_cache(tiny_llama, three_batches, small_corpus):
    base = Health(perplexity=10.0, retention=100.0, finite=True, tokens=100, probes=100)
    assert health_warnings(base, dataclasses.replace(base, perplexity=10.5, retention=95.0)) == []
    drifted = health_warnings(base, dataclasses.replace(base, perplexity=11.5, retention=85.0))
    assert len(drifted) == 2 and "x1.15" in drifted[0] and "85%" in drifted[1]
    assert "collapsed" in collapse_message(base, dataclasses.replace(base, perplexity=25.0))
    assert "non-finite" in collapse_message(base, dataclasses.replace(base, finite=False))
    assert collapse_message(base, dataclasses.replace(base, perplexity=19.0)) is None
    probes = [KnownFact(i, fact.subject, fact.attribute, fact.template, fact.prompt, fact.relation_id)
              for i, fact in enumerate(load_known_facts()[:6])]
    ledger = EditLedger.for_model(tiny_llama)
    ledger.add(three_batches[0], tiny_llama)
    report = model_health(tiny_llama, ledger, corpus=str(small_corpus), probes=probes)
    assert report.edits == 2 and report.edited is not None and report.edited.perplexity != report.unedited.perplexity
    assert report.edited.tokens == report.unedited.tokens > 0 and report.edited.probes == 6
    again = model_health(tiny_llama, ledger, corpus=str(small_corpus), probes=probes)
    assert again.to_dict() == report.to_dict()  # cached per ledger state (a new measurement would take other seconds)
    assert model_health(tiny_llama, None, corpus=str(small_corpus), probes=probes).edited is None
    ledger.add(three_batches[1], tiny_llama)
    history = list(health_history_stream(tiny_llama, ledger, corpus=str(small_corpus), probes=probes))
    assert [item.edits for item in history] == [2, 4]
    assert history[0].edited.perplexity == report.edited.perplexity  # the same ledger state: the cached perplexity
    assert history[1].edited.perplexity != history[0].edited.perplexity
    with ledger.applied(tiny_llama), pytest.raises(LocusError, match="outside"):
        model_health(tiny_llama, ledger, corpus=str(small_corpus), probes=probes)


def test_a_run_that_breaks_the_model_stops_and_keeps_the_last_healthy_ledger(embedded, tmp_path):
    records = load_records(LIFELONG_FILE)[:2]
    texts, probes = held_out_texts()[:3], probe_facts(embedded, count=8)
    memit = Memit.for_model(embedded.layout, layers=(4,), cov_tokens=2000, steps=2)
    run, ledger = run_sequential(embedded, records, memit, 1, 1, probes=probes, texts=texts)
    assert run.stopped is None and len(ledger) == 1 and run.batches[0]["perplexity_ratio"] < 1.5
    healthy = ledger.batches[0].batch_id
    # an absurd edit: no covariance constraint (lambda ~ 0) and a target ~1,000x the hidden state's size
    absurd = memit.replace(mom2_weight=1e-6, clamp_norm=1e4, lr=1e3)
    run, ledger = run_sequential(embedded, records, absurd, 1, 2, run=run, ledger=ledger, probes=probes, texts=texts)
    assert "collapsed" in run.stopped and run.collapse["batch"] == 2
    assert run.collapse["perplexity_ratio"] > 2 or not run.collapse["finite"]
    assert len(run.batches) == 1 and [batch.batch_id for batch in ledger] == [healthy]
    row = run.batches[0]
    assert row["ES_gen"] is not None and row["latest"]["ES_gen"] is not None and row["unedited_so_far"]["NS_gen"] is not None
    assert run.unedited["ES_gen"] is not None and len(run.unedited_records[0]) == 8 and "ES-gen" in run.table()
    figures = sequential_figures([run.to_dict()])
    assert [len(figure.data) for figure in figures] == [4, 1, 1, 1] and all(figure_caption(f) for f in figures)
    assert figures[0].data[3].name.startswith("ES-gen") and figures[0].data[3].y[1] == row["ES_gen"]
    assert figures[1].data[0].y == (1.0, run.batches[0]["perplexity_ratio"])
    six = [dict(run.to_dict(), settings={**run.settings, "label": f"encore+mpes {i}"}) for i in range(6)]
    lines = sequential_figures(six)[1].data  # six runs on one plot stay apart
    assert len({(line.line.dash, line.marker.symbol) for line in lines}) == 6 and lines[0].name == "ENCORE+MPES 0"
    (tmp_path / "run.json").write_text(json.dumps(run.to_dict()))
    assert main(["sequential-plot", str(tmp_path / "run.json"), "--html", str(tmp_path / "run.html")]) == 0
    assert "Sequential editing" in (tmp_path / "run.html").read_text()


def test_damage_report_names_the_lost_facts_and_leaves_the_weights_alone(embedded, tmp_path):
    records = load_records(LIFELONG_FILE)[:2]
    # an edit far too strong (no covariance constraint, a huge target): it certainly breaks known facts
    hparams = Memit.for_model(embedded.layout, layers=(4,), cov_tokens=2000, steps=2).settings.replace(mom2_weight=1e-6, clamp_norm=30.0, lr=20.0)
    ledger = EditLedger.for_model(embedded)
    ledger.add(Memit(hparams).compute(embedded, [record.request() for record in records]), embedded)
    probes = probe_facts(embedded, [record.subject for record in records], count=12)
    before = weights_hash(embedded, [4])
    report = damage_report(embedded, ledger, probes, scales=[1e-6, 1.0], seeds=2)
    assert weights_hash(embedded, [4]) == before
    with ledger.applied(embedded):
        kept, _, forgotten = retention_with_forgotten(embedded, probes)
    assert report.retention == kept < 100 and [fact["prompt"] for fact in report.forgotten] == [fact["prompt"] for fact in forgotten]
    assert all(fact["unedited_margin"] > 0 for fact in report.forgotten) and len(report.unedited_margins) == 12
    assert report.random_retention[1e-6] == [100.0, 100.0] and len(report.random_retention[1.0]) == 2  # a tiny change keeps all
    assert report.change_norms[4] == pytest.approx(float(ledger.batches[0].deltas[4].double().norm()), rel=1e-5)
    assert "Facts lost (unedited margin, now answered)" in report.text() and json.dumps(report.to_dict())
    delta = torch.randn(6, 4, dtype=torch.float64)
    assert float(random_update_like(delta, 2.5, torch.Generator().manual_seed(0)).norm()) == pytest.approx(2.5 * float(delta.norm()))
    with pytest.raises(InputError):
        damage_report(embedded, ledger, probes, scales=[1.0], seeds=11)
    assert main(["damage", "--ledger", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["damage", "--ledger", "x.safetensors", "--scales", "1,2,3,4,5,6,7,8,9"]) == 2


def test_the_lifelong_set(tmp_path):
    records = load_records(LIFELONG_FILE)
    assert len(records) >= 1000 and len({record.case_id for record in records}) == len(records)
    subjects = {record.subject for record in records}
    for record in records:
        assert record.paraphrase_prompts and record.neighborhood_prompts
        before, after = record.prompt.split("{}")
        neighbours = {prompt[len(before): len(prompt) - len(after)] for prompt in record.neighborhood_prompts}
        assert not neighbours & subjects, record.case_id  # no neighbour is ever edited
    assert split_sentence("The mother tongue of Danielle Darrieux is French", "The mother tongue of Danielle Darrieux is English",
                          ["The mother tongue of {} is", "{} is"]) == ("The mother tongue of {} is", "Danielle Darrieux", "French", "English")
    rewrites = rewrite_cases()[:60]
    extra = sentence_cases(templates=sorted({case.template for case in rewrite_cases()}))[1000:1600]
    rebuilt = build_lifelong_records(rewrites, extra, load_known_facts(), max_records=70)
    first = [int(record.case_id[3:]) < 60 for record in rebuilt]  # the rewrites first, then the top-up
    assert len(rebuilt) == 70 and first == sorted(first, reverse=True) and sum(first) >= 30
    assert [record.to_dict() for record in rebuilt[:10]] == [record.to_dict() for record in
                                                            build_lifelong_records(rewrites, extra, load_known_facts(), max_records=70)[:10]]


def test_sequential_refuses_bad_input_before_loading(capsys, tmp_path):
    assert main(["sequential", "--data", str(LIFELONG_FILE), "--batch-size", "100", "--batches", "100"]) == 2
    assert "need 10,000 records" in capsys.readouterr().err
    assert main(["sequential", "--data", str(LIFELONG_FILE), "--batches", "0"]) == 2
    assert main(["sequential", "--data", str(LIFELONG_FILE), "--resume"]) == 2
    assert main(["sequential-plot", "missing.json", "--html", "x.html"]) == 2
    other = tmp_path / "other.json"  # a run on other records: its unedited figures do not belong to this one
    other.write_text(json.dumps({"settings": {"data": "devset.json", "records": 124, "batch_size": 100, "batches": 1},
                                 "unedited": {}, "batches": [], "unedited_records": [[0, 0, 0, 0, 0]]}))
    assert main(["sequential", "--data", str(LIFELONG_FILE), "--unedited-from", str(other)]) == 2
    assert "was a run on other records or another model (data, records, batches, model)" in capsys.readouterr().err
    with pytest.raises(InputError):
        run_sequential(None, load_records(LIFELONG_FILE)[:2], HPARAMS, 1, 3)


def test_resume_compares_the_settings_the_method_uses():
    """A kept run resumes only with the same records, method, layers and settings, except those the method ignores."""
    ultraedit = method_class("ultraedit")
    defaults = ultraedit.Settings().to_dict(complete=True)

    def run(**settings):
        hparams = ultraedit(ultraedit.Settings(layers=(24, 25), **settings)).to_dict()
        return {"data": "lifelong.json", "batch_size": 100, "method": "ultraedit", "layers": hparams["layers"], "hparams": hparams}

    kept = run(cov_tokens=5000, step_size=3e-4)
    asked = run(cov_tokens=50_000, step_size=3e-4, lr=0.1, first_step=0.5)
    assert resume_mismatch(kept, asked, ultraedit.unused_settings, defaults) == []  # no covariance, no optimisation
    assert resume_mismatch(kept, asked, (), defaults) == ["cov_tokens", "lr", "first_step"]  # a method that uses them
    other = {**run(step_size=1e-3), "layers": [1, 2]}
    assert resume_mismatch(kept, other, ultraedit.unused_settings, defaults) == ["layers", "step_size"]  # named once
    older = {**kept, "hparams": {key: value for key, value in kept["hparams"].items() if key != "ridge"}}
    assert resume_mismatch(older, kept, (), defaults) == []  # not recorded then: it had the default
    assert resume_mismatch(older, run(cov_tokens=5000, step_size=3e-4, ridge=2.0), (), defaults) == ["ridge"]
    assert "first_step" not in kept["hparams"]  # a setting added later is recorded only when it is set
    uses = set(EditSettings.field_names()) - set(ultraedit.unused_settings)
    assert uses == {"layers", "max_prompt_tokens"}  # of the shared settings, all UltraEdit reads


def test_health_progress_follows_tokens_and_skips_what_is_remembered(tiny_llama, three_batches, small_corpus):
    """Perplexity's share done is its tokens' share; a state whose figures are remembered takes no share of the bar."""
    probes = [KnownFact(i, fact.subject, fact.attribute, fact.template, fact.prompt, fact.relation_id)
              for i, fact in enumerate(load_known_facts()[:6])]
    texts = held_out_texts(str(small_corpus))[:40] + ("A much longer text about the city of Paris, " * 8,)
    reports = []
    perplexity(tiny_llama, texts, progress=lambda fraction, message: reports.append(fraction))
    tokens = [len(tiny_llama.tokenizer(text)["input_ids"]) for text in texts]
    assert reports == sorted(reports) and reports[-1] == pytest.approx(1.0) and len(reports) >= 2
    assert all(abs(report * sum(tokens) - round(report * sum(tokens))) < 1e-6 for report in reports)  # shares of tokens
    forget_health_figures()
    model_health(tiny_llama, None, corpus=str(small_corpus), probes=probes)  # the original's figures, remembered
    ledger = EditLedger.for_model(tiny_llama)
    ledger.add(three_batches[0], tiny_llama)
    assert health_cost(tiny_llama, None, probes, str(small_corpus)) == 0.0
    assert health_cost(tiny_llama, ledger, probes, str(small_corpus)) == pytest.approx(1.0)
    edited = []
    model_health(tiny_llama, ledger, lambda fraction, message: edited.append(fraction), corpus=str(small_corpus), probes=probes)
    assert edited == sorted(edited) and edited[0] < 0.5 and edited[-1] == pytest.approx(1.0)  # not stuck at 50% first
    assert health_cost(tiny_llama, ledger, probes, str(small_corpus)) == 0.0
