"""Ray scale-out on a local loopback cluster: 1 or 2 workers give the numbers of one process; faults lose nothing.

Workers are other processes, each with one torch thread: their float32 reductions may round differently from
this process's (tests/tolerance.py), so their results are compared within FLOAT32_TINY / FLOAT32_EMBEDDED;
results read back from a cache in this process are compared exactly.

One Ray cluster (2 CPUs) serves the whole module; pools join it instead of starting their own. A tiny
random Llama saved to disk (workers load it by path, as they would on a cluster) covers averages,
corpus-shard statistics and single-mode evaluation on 1 and 2 workers; the embedded model covers the
averages and the CLI, whose driver is killed mid-run and then resumes from the cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.distributed import ModelSpec, in_item_order, run_items
from core.embedded import cache_root, embedded_cache_dir
from core.errors import InputError
from core.facts import facts_model_knows, load_known_facts
from core.loading import load_model
from core.ray_pool import RayPool, ray, start_local_cluster
from editor.evaluation.counterfact import load_records
from editor.evaluation.evaluate import evaluate_records
from editor.methods.memit import Memit, MemitSettings
from editor.statistics.covariance import layer_covariances
from editor.studies.sweep import sweep_records
from tests.test_evaluate import DEVSET
from tests.tiny_models import tiny_model
from tests.tolerance import FLOAT32_EMBEDDED, FLOAT32_TINY, Tolerance, assert_equal_within
from tracer.average import average_cache_path, average_traces, read_records
from tracer.problem import TraceSettings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = TraceSettings(kinds=("hidden", "mlp"), samples=2, window=2)
STATS_TOKENS = 1500  # six corpus groups of 256 tokens (the last one cut inside a text)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray cluster on loopback, shared by every test here (pools join it).

    Six logical CPUs on the 2 real cores: the tiny pools hold three workers (mostly idle) while the CLI's two start.
    """
    yield start_local_cluster(cpus=6)
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    """A tiny random Llama (3 blocks) saved as safetensors, so that workers load the same weights by path."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_loaded(tiny_folder):
    return load_model(str(tiny_folder), device="cpu")


@pytest.fixture(scope="module")
def tiny_pools(ray_address, tiny_folder):
    """{1: a one-worker pool, 2: a two-worker pool} of the tiny model."""
    spec = ModelSpec(str(tiny_folder), "cpu")
    pools = {1: RayPool(spec, workers=1, threads=1), 2: RayPool(spec, workers=2, threads=1)}
    yield pools
    for pool in pools.values():
        pool.close()


def without_elapsed(result) -> dict:
    data = result.to_dict()
    data.pop("elapsed", None)
    data.pop("seconds", None)
    data.pop("edit_seconds", None)
    return data


def test_pool_arguments_are_checked_before_any_start():
    with pytest.raises(InputError, match="--workers"):
        RayPool(ModelSpec("embedded", "cpu"), workers=0)
    with pytest.raises(InputError, match="--ray"):
        RayPool(ModelSpec("embedded", "cpu"), address=" ")
    with pytest.raises(InputError, match="CPU core"):
        RayPool(ModelSpec("embedded", "cpu"), workers=(os.cpu_count() or 1) + 1)


def test_results_come_back_reordered_by_index():
    assert list(in_item_order([(2, "c"), (0, "a"), (1, "b"), (3, "d")])) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]


def test_tiny_average_on_one_and_two_workers_equals_one_process(tiny_loaded, tiny_pools, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    facts = load_known_facts()[:6]  # a random model knows none: any facts trace the same way
    alone = average_traces(tiny_loaded, 6, SETTINGS, facts=facts, use_cache=False)
    for workers, pool in tiny_pools.items():
        pooled = average_traces(tiny_loaded, 6, SETTINGS, facts=facts, use_cache=False, pool=pool)
        assert_equal_within(without_elapsed(pooled), without_elapsed(alone), FLOAT32_TINY, f"{workers} worker(s)")


def test_tiny_statistics_on_one_and_two_workers_equal_one_process(tiny_loaded, tiny_pools):
    alone = layer_covariances(tiny_loaded, [0, 2], STATS_TOKENS, use_cache=False)
    for workers, pool in tiny_pools.items():
        pooled = layer_covariances(tiny_loaded, [0, 2], STATS_TOKENS, use_cache=False, pool=pool)
        for layer in (0, 2):
            # group sums reduced in corpus order, in float64; the keys themselves are float32 forward passes of
            # another process, so C agrees within FLOAT32_TINY (relative to its largest entry)
            scale = float(alone.covariances[layer].abs().max())
            assert torch.allclose(pooled.covariances[layer], alone.covariances[layer], rtol=FLOAT32_TINY.rel,
                                  atol=FLOAT32_TINY.rel * scale), f"layer {layer}, {workers} worker(s)"
            # eigenvalues move by at most ||dC||_2 (Weyl), so within FLOAT32_TINY of the largest; the condition
            # number is their ratio and is not compared on its own
            ours, theirs = pooled.diagnostics[layer], alone.diagnostics[layer]
            spectrum = Tolerance(rel=FLOAT32_TINY.rel, abs=FLOAT32_TINY.rel * theirs.largest_eigenvalue)
            assert (ours.layer, ours.tokens) == (theirs.layer, theirs.tokens)
            for name in ("largest_eigenvalue", "smallest_eigenvalue", "trace"):
                assert_equal_within(getattr(ours, name), getattr(theirs, name), spectrum, name)


def test_tiny_single_mode_evaluation_on_one_and_two_workers_equals_one_process(tiny_loaded, tiny_pools, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    records = load_records(DEVSET)[:3]
    hparams = MemitSettings(layers=(1, 2), cov_tokens=STATS_TOKENS, mom2_weight=1e-4, steps=4, prefix_starts=())
    alone = evaluate_records(tiny_loaded, records, Memit(hparams), mode="single", generation=False, use_cache=False)
    for workers, pool in tiny_pools.items():
        pooled = evaluate_records(tiny_loaded, records, Memit(hparams), mode="single", generation=False, pool=pool, use_cache=False)
        assert_equal_within(without_elapsed(pooled), without_elapsed(alone), FLOAT32_TINY, f"{workers} worker(s)")
    with pytest.raises(InputError, match="single"):
        evaluate_records(tiny_loaded, records, Memit(hparams), mode="batch", pool=tiny_pools[1])


def test_tiny_sweep_on_two_workers_equals_one_process(tiny_loaded, tiny_pools, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    records = load_records(DEVSET)[:2]
    hparams = MemitSettings(layers=(1, 2), mom2_weight=1e-4, steps=4, prefix_starts=())
    alone = sweep_records(tiny_loaded, records, Memit(hparams), [600, 300], [1e-4, 1e-2], use_cache=False).to_dict()
    pooled = sweep_records(tiny_loaded, records, Memit(hparams), [600, 300], [1e-4, 1e-2], pool=tiny_pools[2], use_cache=False).to_dict()
    for data in (alone, pooled):
        data.pop("target_seconds")
        for row in data["rows"]:
            row.pop("seconds")
    assert_equal_within(pooled, alone, FLOAT32_TINY)


def square_after_a_pause(loaded, pause: float, item: int) -> tuple[int, int]:
    """A work item slow enough that a worker can be killed while it holds one."""
    time.sleep(pause)
    return item * item, os.getpid()


def test_a_killed_worker_has_its_items_retried_elsewhere(tiny_loaded, tiny_pools, tmp_path, monkeypatch):
    pool = tiny_pools[2]
    victim = pool.worker_pids()[0]
    results = {}
    for index, (square, _pid) in pool.run(square_after_a_pause, range(8), 0.5):
        if not results:
            os.kill(victim, signal.SIGKILL)  # both workers hold items now
        results[index] = square
    assert results == {index: index * index for index in range(8)} and pool.retried >= 1
    assert victim not in pool.worker_pids()
    # the pool goes on with the survivor and the replacement: a real job still matches one process
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    facts = load_known_facts()[:4]
    alone = average_traces(tiny_loaded, 4, SETTINGS, facts=facts, use_cache=False)
    pooled = average_traces(tiny_loaded, 4, SETTINGS, facts=facts, use_cache=False, pool=pool)
    assert_equal_within(without_elapsed(pooled), without_elapsed(alone), FLOAT32_TINY)


def test_two_runs_share_a_pool_and_a_closed_run_frees_its_workers(tiny_pools):
    pool = tiny_pools[2]
    first, second = pool.run(square_after_a_pause, range(5), 0.01), pool.run(square_after_a_pause, range(5, 10), 0.01)
    pairs = [(one, other) for one, other in zip(first, second)]  # consumed in turn, as two app sessions would
    assert sorted(one[1][0] for one, _ in pairs) == [0, 1, 4, 9, 16]
    assert sorted(other[1][0] for _, other in pairs) == [25, 36, 49, 64, 81]
    abandoned = pool.run(square_after_a_pause, range(20), 0.2)
    next(abandoned)
    abandoned.close()  # its queued items are cancelled and its slots given back
    assert sorted(square for _, (square, _pid) in pool.run(square_after_a_pause, range(3), 0.0)) == [0, 1, 4]


def test_run_items_in_process_is_the_same_function():
    assert list(run_items(square_after_a_pause, [3, 1], 0.0, loaded=object())) == [(0, (9, os.getpid())), (1, (1, os.getpid()))]


def test_cli_average_driver_killed_mid_run_resumes_from_the_cache(embedded, ray_address, tmp_path):
    """`python -m tracer average --ray ADDRESS` killed after its first fact, run again: the rest, same numbers."""
    settings = TraceSettings(kinds=("hidden",), samples=1)
    (tmp_path / "models").mkdir()  # a fresh average cache, the model cache already built
    (tmp_path / "models" / embedded_cache_dir().name).symlink_to(embedded_cache_dir())
    environment = dict(os.environ, LOCUS_CACHE=str(tmp_path))
    out = tmp_path / "average.json"
    command = [sys.executable, "-m", "tracer", "average", "--n", "2", "--kinds", "hidden", "--samples", "1",
               "--device", "cpu", "--ray", ray_address, "--out", str(out)]  # one worker: one per node by default
    cache = tmp_path / average_cache_path(embedded, settings).relative_to(cache_root())
    driver = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not read_records(cache) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    first = len(read_records(cache))
    assert first == 1, driver.stderr.read()[-2000:]
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "workers: 1 worker(s)" in finished.stdout
    assert len(cache.read_text().splitlines()) == 2  # the first run's fact was not traced again
    pooled = json.loads(out.read_text())
    alone = average_traces(embedded, 2, settings, facts=facts_model_knows(embedded)[:2], use_cache=False).to_dict()
    pooled.pop("elapsed"), alone.pop("elapsed")
    assert_equal_within(pooled, json.loads(json.dumps(alone)), FLOAT32_EMBEDDED)  # a worker process: FLOAT32_EMBEDDED


def test_single_mode_evaluation_and_sweep_resume_from_their_caches(tiny_loaded, tmp_path, monkeypatch):
    """A rerun reads the finished records / settings back: a half-finished cache is completed to the same result."""
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    records = load_records(DEVSET)[:2]
    hparams = MemitSettings(layers=(1, 2), cov_tokens=STATS_TOKENS, mom2_weight=1e-4, steps=4, prefix_starts=())
    fresh = without_elapsed(evaluate_records(tiny_loaded, records, Memit(hparams), mode="single", generation=False, use_cache=False))
    assert not list(tmp_path.glob("runs/*/evaluate-single-*.jsonl"))
    evaluate_records(tiny_loaded, records, Memit(hparams), mode="single", generation=False)
    (path,) = tmp_path.glob("runs/*/evaluate-single-*.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    path.write_text(lines[1] + "\n" + '{"key": "torn')  # as if killed after the second record, mid-write of another
    resumed = evaluate_records(tiny_loaded, records, Memit(hparams), mode="single", generation=False)
    assert without_elapsed(resumed) == fresh
    assert len(path.read_text().splitlines()) == 3  # the torn line stays, one record computed again, the other read back
    sweep_hparams = hparams
    first = sweep_records(tiny_loaded, records, Memit(sweep_hparams), [300], [1e-4, 1e-2]).to_dict()
    (sweep_path,) = tmp_path.glob("runs/*/sweep-*.jsonl")
    assert len(sweep_path.read_text().splitlines()) == 3  # the start, then one line per setting
    again = sweep_records(tiny_loaded, records, Memit(sweep_hparams), [300], [1e-4, 1e-2]).to_dict()
    assert again == first and len(sweep_path.read_text().splitlines()) == 3
