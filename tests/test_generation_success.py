"""Success by generation (SPEC 6): the text rule, batched greedy decoding against one prompt at a time, the
shortcuts of the scorer against plain decoding, and results of older versions read or recomputed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editor.evaluation import evaluate
from editor.evaluation.by_generation import (
    EXTRA_TOKENS,
    generation_budget,
    generation_checks,
    greedy_continuations,
    settled,
)
from editor.evaluation.counterfact import load_records
from editor.evaluation.evaluate import (
    EvaluationResult,
    RecordOutcome,
    Scores,
    score_records,
    single_mode_cache,
    single_mode_outcomes,
    summarize,
)
from editor.evaluation.metrics import (
    GenerationHits,
    PairScore,
    RecordScores,
    generation_success,
    record_scores,
)
from editor.evaluation.result_cache import digest
from editor.methods.memit import Memit, MemitSettings
from editor.studies.figures import sequential_figures
from editor.studies.sequential import SequentialRun

DEVSET = Path(__file__).resolve().parents[1] / "assets" / "devset_smollm2-135m-instruct.json"
OLD_RECORD = {"es": 1.0, "ps": 0.0, "ns": 1.0, "efficacy_accuracy": 1.0, "neighborhood_accuracy": 0.0}  # before *_gen


def test_the_text_rule_is_the_specs_taken_literally():
    assert generation_success(" Rome, the capital", "Rome")
    assert generation_success("\n\n  Rome", "Rome")  # leading whitespace of any kind is stripped
    assert generation_success("Rome", " Rome ")  # and the object's own
    assert generation_success(" New York City", "New York")
    # "starts with the object's string": a longer word that begins with it counts too (Romeo for Rome)
    assert generation_success(" Romeo and Juliet", "Rome")
    assert not generation_success(" rome", "Rome")  # case-sensitive
    assert not generation_success(" the city of Rome", "Rome")  # the object must come first
    assert not generation_success(" Ro", "Rome") and not generation_success("", "Rome") and not generation_success(" ", "Rome")


def test_a_check_is_settled_once_more_text_cannot_change_it():
    assert settled(" Rome", "Rome") and settled(" Romeo", "Rome")  # a success stays one
    assert settled(" Paris", "Rome") and settled(" the", "Rome")  # so does a text that has left the object
    assert not settled(" Ro", "Rome") and not settled(" New", "New York")  # on the way to the object
    assert not settled("", "Rome") and not settled("\n ", "Rome")  # nothing yet but whitespace
    assert not settled(" \ufffd", "Rome")  # a character cut in two: not decided yet


def test_record_scores_and_means_by_generation():
    rewrite = PairScore(0.5, 2.0, True, False)
    paraphrases = [PairScore(1.0, 3.0, False, False), PairScore(4.0, 1.0, False, True)]
    neighbors = [PairScore(5.0, 0.2, False, True), PairScore(0.1, 0.3, True, False), PairScore(2.0, 1.0, False, False)]
    measured = record_scores(rewrite, paraphrases, neighbors, GenerationHits(True, [False, False], [True, True, False]))
    assert (measured.es_gen, measured.ps_gen, measured.ns_gen) == (1.0, 0.0, pytest.approx(2 / 3))
    assert (measured.es, measured.ps) == (1.0, 0.5)  # the teacher-forced scores are unchanged beside them
    unmeasured = record_scores(PairScore(3, 1, False, True), [], neighbors)
    assert (unmeasured.es_gen, unmeasured.ps_gen, unmeasured.ns_gen) == (None, None, None)
    no_paraphrase = record_scores(rewrite, [], neighbors, GenerationHits(False, [], [True, True, True]))
    assert no_paraphrase.ps_gen is None and no_paraphrase.es_gen == 0.0
    summary = summarize([measured, unmeasured, no_paraphrase], [])
    assert (summary.ES_gen, summary.PS_gen, summary.NS_gen) == (50.0, 0.0, pytest.approx(100 * 5 / 6))  # over measured records
    assert summary.ES == pytest.approx(200 / 3) and summary.n == 3
    nothing = summarize([unmeasured], [])
    assert (nothing.ES_gen, nothing.PS_gen, nothing.NS_gen) == (None, None, None)


def test_results_of_older_versions_read_with_none():
    old_scores = {"ES": 10.0, "PS": 20.0, "NS": 90.0, "S": 18.0, "efficacy_accuracy": 0.0, "neighborhood_accuracy": 50.0,
                  "GE": None, "n": 3}
    scores = Scores.from_dict(old_scores)
    assert scores.ES == 10.0 and (scores.ES_gen, scores.PS_gen, scores.NS_gen) == (None, None, None)
    assert not evaluate.has_generation_success(old_scores) and Scores(1, 2, 3, 2, None, None, None, 4).NS_gen is None
    outcome = RecordOutcome.from_dict({"pre": OLD_RECORD, "pre_entropies": [], "post": OLD_RECORD, "post_entropies": [],
                                       "edit_seconds": 1.0, "warnings": []})
    assert outcome.post.es_gen is None and not outcome.has_generation_success
    old_result = {"pre": old_scores, "post": old_scores, "n": 3, "layers": [1], "mode": "batch", "method": "memit",
                  "method_settings": "", "cov_tokens": 1, "seconds": 1.0, "edit_seconds": 1.0}
    table = EvaluationResult.from_dict(old_result).table()
    assert "ES-gen" in table and "NS-gen" in table  # shown as dashes
    old_run = SequentialRun.from_dict({"settings": {}, "unedited": {"ES": 1.0, "PS": 2.0, "NS": 90.0, "perplexity": 9.0, "retention": 99},
                                       "batches": [], "unedited_records": [[0.0, 0.0, 1.0, 0.0, 1.0]]})
    assert "ES-gen" in old_run.table() and "     -" in old_run.table().splitlines()[1]
    from editor.studies.sequential import _record_score
    assert _record_score(old_run.unedited_records[0]).es_gen is None


def test_the_sequential_figure_draws_es_gen_beside_es_when_a_run_has_it():
    rows = {"norm_growth": {"2": 1.0}, "perplexity_ratio": 1.0, "retention": 100.0}
    run = {"settings": {"method": "memit"}, "unedited": {"ES": 0.0, "PS": 0.0, "NS": 90.0, "ES_gen": 0.0},
           "batches": [{"edits": 1, "ES": 100.0, "PS": 50.0, "NS": 80.0, "ES_gen": 60.0, **rows}]}
    scores = sequential_figures([run])[0]
    assert [trace.name for trace in scores.data] == ["ES (MEMIT)", "PS (MEMIT)", "NS (MEMIT)", "ES-gen (MEMIT)"]
    assert list(scores.data[3].y) == [0.0, 60.0]
    older = {**run, "unedited": {"ES": 0.0}, "batches": [{key: value for key, value in run["batches"][0].items() if key != "ES_gen"}]}
    assert len(sequential_figures([older])[0].data) == 3  # a run of an older version: no empty line


def _reference_greedy(loaded, prompt: str, budget: int) -> list[int]:
    """transformers' own greedy decoding of one prompt, no padding, cut before a special token."""
    ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]], device=loaded.device)
    with torch.inference_mode():
        output = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
                                       pad_token_id=loaded.tokenizer.pad_token_id)
    new = output[0, ids.shape[1]:].tolist()
    special = set(loaded.tokenizer.all_special_ids)
    return new[: next((i for i, token in enumerate(new) if token in special), len(new))]


def test_batched_greedy_decoding_equals_one_prompt_at_a_time(embedded):
    prompts = ["The Eiffel Tower is located in the city of", "The mother tongue of Danielle Darrieux is",
               "The Eiffel Tower is located in the city of", "In 1905 Albert Einstein published a paper on the photoelectric effect, which",
               "The official religion of Northern Nigeria Protectorate is"]
    budgets = [9, 3, 10, 8, 1]  # different lengths (left padding) and budgets; one prompt twice
    batched = greedy_continuations(embedded, prompts, budgets, batch_rows=3)  # two batches
    single = [greedy_continuations(embedded, [prompt], [budget])[0] for prompt, budget in zip(prompts, budgets)]
    reference = [_reference_greedy(embedded, prompt, budget) for prompt, budget in zip(prompts, budgets)]
    assert batched == single == reference
    assert batched[0] == batched[2][:9] and len(batched[4]) <= 1


def test_the_scorer_gives_the_answers_of_plain_decoding(embedded):
    records = load_records(DEVSET)[:4]
    checks = [(record.rewrite_prompt, record.target_new) for record in records]
    checks += [(prompt, record.target_new) for record in records for prompt in record.paraphrase_prompts]
    checks += [(prompt, record.target_true) for record in records for prompt in record.neighborhood_prompts]
    checks += [(records[0].rewrite_prompt, records[0].target_true)]  # known: greedy decoding says it
    budgets = [generation_budget(embedded, prompt, target) for prompt, target in checks]
    assert all(budget > EXTRA_TOKENS for budget in budgets)
    plain = [generation_success(embedded.tokenizer.decode(ids), target)
             for ids, (_, target) in zip(greedy_continuations(embedded, [p for p, _ in checks], budgets), checks)]
    assert plain[-1] and any(plain) and not all(plain)
    assert generation_checks(embedded, checks) == plain  # stopping once every check is settled changes nothing
    per_record, _ = score_records(embedded, records, generation=False)  # the first token from the teacher-forced pass
    assert [scores.es_gen for scores in per_record] == [float(hit) for hit in plain[: len(records)]]
    neighbors = [(record, p) for record in records for p in record.neighborhood_prompts]
    start = len(checks) - 1 - len(neighbors)
    for record, scores in zip(records, per_record):
        own = [plain[start + index] for index, (owner, _) in enumerate(neighbors) if owner is record]
        assert scores.ns_gen == pytest.approx(sum(own) / len(own))
    off, _ = score_records(embedded, records, generation=False, by_generation=False)
    assert all(scores.es_gen is None for scores in off) and [s.es for s in off] == [s.es for s in per_record]


def test_single_mode_cache_lines_without_generation_success_are_computed_again(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    loaded = tiny("llama")
    records = load_records(DEVSET)[:2]
    method = Memit(MemitSettings(layers=(1, 2), cov_tokens=300, steps=2, prefix_starts=()))
    cache = single_mode_cache(loaded, method, None, False)
    measured = dict(OLD_RECORD, es_gen=1.0, ps_gen=0.0, ns_gen=0.5)
    for record, scores in zip(records, (OLD_RECORD, measured)):  # the first as an older version cached it
        cache.put(digest(record.to_dict()), {"pre": scores, "pre_entropies": [], "post": scores, "post_entropies": [],
                                             "edit_seconds": 1.0, "warnings": []})
    computed = []
    fresh = RecordScores(0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0)

    def fake_record(loaded, context, record, progress=None):
        computed.append(record.case_id)
        return RecordOutcome(fresh, [], fresh, [], 2.0, [])

    monkeypatch.setattr(evaluate, "evaluate_one_record", fake_record)
    monkeypatch.setattr(evaluate, "layer_covariances", lambda *args, **kwargs: None)
    outcomes = single_mode_outcomes(loaded, records, method, None, False, None, None, True, by_generation=True)
    assert computed == [records[0].case_id]  # the older line is computed again, the other read back
    assert outcomes[0].post == fresh and outcomes[1].post.ns_gen == 0.5
    computed.clear()
    outcomes = single_mode_outcomes(loaded, records, method, None, False, None, None, True, by_generation=False)
    assert computed == [] and all(outcome.post.es_gen is None and outcome.pre.es_gen is None for outcome in outcomes)
    assert outcomes[0].post.es == fresh.es


def test_the_test_tab_shows_success_by_generation_after_s():
    from ui.tabs import test_tab  # gradio: only this test needs it

    pre = Scores(0.0, 0.0, 100.0, 0.0, 0.0, 100.0, None, 1, ES_gen=0.0, PS_gen=None, NS_gen=100.0)
    post = Scores(100.0, 100.0, 100.0, 100.0, 100.0, 100.0, None, 1, ES_gen=100.0, PS_gen=None, NS_gen=66.66)
    assert test_tab.METRIC_COLUMNS[:8] == ["model", "ES", "PS", "NS", "S", "ES by generation", "PS by generation",
                                           "NS by generation"]
    rows = test_tab.metrics_rows(pre, post)
    assert [len(row) for row in rows] == [len(test_tab.METRIC_COLUMNS)] * 2 and rows[1][-1] == 1
    assert rows[0][5:8] == [0.0, None, 100.0] and rows[1][5:8] == [100.0, None, 66.7]
