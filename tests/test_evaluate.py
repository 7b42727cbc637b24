"""CounterFact evaluation: metric functions, record validation, the dev set, and `python -m editor evaluate`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InputError
from core.facts import KnownFact, load_known_facts
from editor.evaluation.counterfact import load_records
from editor.evaluation.evaluate import evaluate_records, summarize
from editor.evaluation.metrics import PairScore, harmonic_mean, ngram_entropy, record_scores
from editor.methods.memit import Memit
from editor.studies.devset import build_records
from tests.test_editor_support import TEST_TOKENS, editing_hparams, shared_covariances

ROOT = Path(__file__).resolve().parents[1]
DEVSET = ROOT / "assets" / "devset_smollm2-135m-instruct.json"


def test_record_metrics_follow_the_definitions():
    rewrite = PairScore(nll_new=0.5, nll_true=2.0, argmax_new=True, argmax_true=False)
    paraphrases = [PairScore(1.0, 3.0, False, False), PairScore(4.0, 1.0, False, True)]
    neighbors = [PairScore(5.0, 0.2, False, True), PairScore(0.1, 0.3, True, False), PairScore(2.0, 1.0, False, False)]
    scores = record_scores(rewrite, paraphrases, neighbors)
    assert (scores.es, scores.ps, scores.ns) == (1.0, 0.5, pytest.approx(2 / 3))
    assert scores.efficacy_accuracy == 1.0 and scores.neighborhood_accuracy == pytest.approx(1 / 3)
    summary = summarize([scores, record_scores(PairScore(3, 1, False, True), [], neighbors)], [5.0, 7.0])
    assert summary.ES == 50.0 and summary.PS == 50.0 and summary.NS == pytest.approx(200 / 3)
    assert summary.S == pytest.approx(harmonic_mean([50.0, 50.0, 200 / 3]))
    assert summary.GE == pytest.approx(600.0) and summary.n == 2
    assert harmonic_mean([100, 0, 50]) == 0.0 and harmonic_mean([2, 2]) == 2.0


def test_ngram_entropy():
    assert ngram_entropy("a a a a a a") == 0.0
    # 8 distinct words: 7 distinct bigrams, 6 distinct trigrams, all once
    expected = (2 / 3 * math.log2(7) + 4 / 3 * math.log2(6)) / 2
    assert ngram_entropy("one two three four five six seven eight") == pytest.approx(expected)


def test_malformed_records_name_the_index_and_field():
    good = json.loads(DEVSET.read_text())["records"][0]
    broken = json.loads(json.dumps(good))
    del broken["requested_rewrite"]["target_new"]
    with pytest.raises(InputError, match=r"Record 1 .*requested_rewrite\.target_new\.str"):
        load_records([good, broken])
    with pytest.raises(InputError, match=r"Record 0 .*'neighborhood_prompts' must be a list"):
        load_records([dict(good, neighborhood_prompts="not a list")])
    with pytest.raises(InputError, match=r"Record 0 .*exactly one"):
        load_records([dict(good, requested_rewrite=dict(good["requested_rewrite"], prompt="no placeholder"))])


def test_devset_is_built_from_facts_the_model_knows():
    records = load_records(DEVSET)
    assert len(records) >= 100
    path = ROOT / "assets" / "known_facts_smollm2-135m-instruct-30L.json"
    known = [KnownFact(**fact) for fact in json.loads(path.read_text())["facts"]]
    known_prompts = {(fact.subject, fact.prompt, fact.attribute) for fact in known}
    for record in records:
        assert (record.subject, record.rewrite_prompt, record.target_true) in known_prompts
        assert record.paraphrase_prompts and record.neighborhood_prompts
        assert all(record.subject in prompt for prompt in record.paraphrase_prompts)
        assert not any(record.subject in prompt for prompt in record.neighborhood_prompts)
        assert record.target_new != record.target_true
    assert sum(bool(record.generation_prompts) for record in records) >= 25
    subjects = {record.subject for record in records}  # no record is another record's neighbour
    assert not any(subject in prompt for record in records for prompt in record.neighborhood_prompts for subject in subjects)
    rebuilt = build_records(known, load_known_facts())
    assert [r.to_dict() for r in rebuilt] == [r.to_dict() for r in records]  # the asset is reproducible


def test_evaluate_records_batch_on_the_embedded_model(embedded):
    records = load_records(DEVSET)[:3]
    hparams = editing_hparams(embedded, steps=12)
    shared_covariances(embedded)  # computed once for all editor tests
    result = evaluate_records(embedded, records, Memit(hparams), mode="batch", generation=False)
    assert result.n == 3 and result.mode == "batch" and result.layers == list(hparams.layers)
    assert result.pre.ES < result.post.ES and result.post.ES >= 2 / 3 * 100
    assert result.pre.NS >= 50
    data = result.to_dict()
    assert {"pre", "post", "n", "layers", "mode", "seconds"} <= set(data)
    assert {"ES", "PS", "NS", "S", "efficacy_accuracy", "neighborhood_accuracy", "GE", "ES_gen", "PS_gen", "NS_gen"} <= set(data["pre"])
    assert "unedited" in result.table() and "edited" in result.table() and "ES-gen" in result.table()
    assert result.pre.ES_gen == 0.0 and result.post.ES_gen is not None and result.post.ES_gen <= result.post.ES
    assert {"es_gen", "ps_gen", "ns_gen"} <= set(data["records"][0]["post"])


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "editor", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cli_reports_a_malformed_record_without_editing(tmp_path):
    good = json.loads(DEVSET.read_text())["records"][0]
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([good, dict(good, paraphrase_prompts=[""])]))
    result = _cli("evaluate", "--data", str(data))
    assert result.returncode == 2
    assert "error: Record 1" in result.stderr and "paraphrase_prompts" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_evaluate_prints_the_table_and_writes_json(tmp_path, embedded):
    shared_covariances(embedded)  # so the subprocess finds C in the cache
    out = tmp_path / "metrics.json"
    result = _cli("evaluate", "--data", str(DEVSET), "--limit", "2", "--mode", "batch", "--tokens", str(TEST_TOKENS),
                  "--no-generation", "--device", "cpu", "--set", "steps=6", "--out", str(out))  # few steps: the CLI is under test
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unedited" in result.stdout and "edited" in result.stdout and "n=2" in result.stdout
    assert "ES-gen" in result.stdout and "NS-gen" in result.stdout
    metrics = json.loads(out.read_text())
    assert metrics["pre"]["ES_gen"] is not None and metrics["post"]["NS_gen"] is not None
    assert metrics["n"] == 2 and metrics["mode"] == "batch" and metrics["layers"] == [2, 3, 4, 5, 6]
    assert metrics["pre"]["ES"] is not None and metrics["post"]["ES"] >= metrics["pre"]["ES"]
