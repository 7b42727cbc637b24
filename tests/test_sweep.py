"""`editor.studies.sweep`: edit quality against the covariance budget and lambda, targets optimized once."""

from __future__ import annotations

import pytest

from core.cli import parse_numbers
from core.errors import InputError
from editor.edits.weights import weights_hash
from editor.evaluation.counterfact import load_records
from editor.methods.memit import Memit
from editor.methods.rome import Rome
from editor.studies.sweep import sweep_records
from tests.test_editor_support import TEST_TOKENS, editing_hparams, shared_covariances
from tests.test_evaluate import DEVSET, _cli


def test_sweep_scores_every_setting_and_restores_the_weights(embedded):
    records = load_records(DEVSET)[:2]
    hparams = editing_hparams(embedded, steps=10)
    shared_covariances(embedded)
    before = weights_hash(embedded, list(hparams.layers))
    result = sweep_records(embedded, records, Memit(hparams), [TEST_TOKENS, 2000], [15000.0, 1500.0], use_cache=False)
    assert weights_hash(embedded, list(hparams.layers)) == before
    assert [(row.cov_tokens, row.mom2_weight) for row in result.rows] == [
        (2000, 15000.0), (2000, 1500.0), (TEST_TOKENS, 15000.0), (TEST_TOKENS, 1500.0)
    ]
    for row in result.rows:
        assert row.scores.n == 2 and row.scores.ES >= result.unedited.ES
        assert 0 < row.residual_left < result.residual_before
    for weak, strong in (result.rows[0:2], result.rows[2:4]):  # a smaller lambda writes more of z - h
        assert strong.residual_left < weak.residual_left
    table = result.table()
    assert "unedited" in table and "15000" in table and "1500" in table and f"{TEST_TOKENS:,}" in table
    assert result.to_dict()["rows"][0]["lambda"] == 15000.0


def test_sweep_refuses_rome_and_bad_lists(embedded):
    with pytest.raises(InputError, match="ROME"):
        sweep_records(embedded, load_records(DEVSET)[:1], Rome.for_model(embedded.layout), [2000], [1.0])
    assert parse_numbers("25000, 10000,10000", int, "--tokens") == [10000, 25000]
    for text in ("", "ten", "0,100", "-5", "inf", "1e400"):
        with pytest.raises(InputError, match="--tokens"):
            parse_numbers(text, int, "--tokens")
    for text in ("nan", "1,inf"):  # a float list: no infinite or undefined lambda, scale or threshold either
        with pytest.raises(InputError, match="--lambda"):
            parse_numbers(text, float, "--lambda")


def test_cli_sweep_rejects_a_bad_budget_before_loading():
    result = _cli("sweep", "--data", str(DEVSET), "--tokens", "lots")
    assert result.returncode == 2 and "error: --tokens" in result.stderr and "Traceback" not in result.stderr
