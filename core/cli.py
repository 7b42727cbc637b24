"""What the command lines share: model options, loading from them, file output, and one runner.

`python -m tracer` and `python -m editor` build their parsers on these. Heavy modules (torch,
transformers) are imported only inside the command that needs them, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import InputError, LocusError

MAX_WORKERS = 4096


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model/--device/--dtype/--trust-remote-code, shared by every command that loads a model."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct), a local folder, or a hub id")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    group.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU) | float32 | bfloat16 | float16")
    group.add_argument(
        "--trust-remote-code", action="store_true", help="allow a hub model to run its own code (off by default)"
    )


def load_from_arguments(arguments: argparse.Namespace):
    """The model named by --model/--device/--dtype/--trust-remote-code."""
    from core.loading import load_model  # lazy: torch and transformers take ~1.5 s; --help must not pay it

    return load_model(arguments.model, arguments.device, arguments.dtype, arguments.trust_remote_code)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers/--ray, shared by every command that runs many facts, records, cells or corpus shards."""
    group = parser.add_argument_group("workers (Ray)")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run on N workers of a local Ray cluster started and stopped by this command (one model each; "
                            "on CPU each gets its share of the cores)")
    group.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run on an existing Ray cluster: auto, host:port or ray://host:10001 (--workers: how many; "
                            "default one per GPU, else one per node)")


def check_worker_arguments(arguments: argparse.Namespace) -> None:
    """Bounds of --workers/--ray, before the model load and without importing Ray (the pool checks GPUs itself)."""
    workers, address = getattr(arguments, "workers", None), getattr(arguments, "ray", None)
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise InputError(f"--workers must be a whole number from 1 to {MAX_WORKERS}, got {workers}.")
    if address is not None and not address.strip():
        raise InputError("--ray needs a cluster address: auto, host:port, or ray://host:10001.")
    cores = os.cpu_count() or 1
    if address is None and workers is not None and arguments.device == "cpu" and workers > cores:
        raise InputError(f"--workers {workers}: this machine has {cores} CPU core(s), give at most {cores} "
                         "(or --ray ADDRESS to use a cluster).")


@contextmanager
def worker_pool(arguments: argparse.Namespace) -> Iterator[object | None]:
    """The pool that --workers/--ray ask for (each worker loads --model/--device/--dtype), or None; closed on exit."""
    if getattr(arguments, "workers", None) is None and getattr(arguments, "ray", None) is None:
        yield None
        return
    # lazy: Ray and torch (~3 s); only --workers/--ray pay them
    from core.distributed import ModelSpec
    from core.progress import tqdm_progress
    from core.ray_pool import RayPool

    model = ModelSpec(arguments.model, arguments.device, arguments.dtype, arguments.trust_remote_code)
    report, close = tqdm_progress("starting workers")
    try:
        pool = RayPool(model, workers=arguments.workers, address=arguments.ray, progress=report)
    finally:
        close()
    try:
        print(f"workers: {pool.describe()}")
        yield pool
    finally:
        pool.close()
        if pool.retried:
            print(f"workers: {pool.retried} item(s) were retried after a worker died ({pool.replaced} worker(s) replaced)")


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` atomically (temporary file, then rename); InputError with a plain message on failure."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    except OSError as error:
        raise InputError(f"Cannot write {path}: {error.strerror or error}.") from None
    return target


def write_json(path: str | Path, data: dict) -> None:
    """Write `data` as indented JSON and say so."""
    print(f"wrote {write_text(path, json.dumps(data, indent=1) + chr(10))}")


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None, interrupted: str = "interrupted") -> int:
    """Parse `argv`, run the chosen handler; a LocusError prints one line and exits 2, Ctrl-C exits 130."""
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(message)s")
    try:
        return arguments.handler(arguments)
    except LocusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def parse_numbers(text: str, kind: type, name: str) -> list:
    """'10000,25000' -> [10000, 25000] (positive, finite, de-duplicated, sorted); a clear error otherwise."""
    try:
        values = sorted({kind(float(part)) for part in text.split(",") if part.strip()})
    except (ValueError, OverflowError):  # OverflowError: int('inf')
        raise InputError(f"{name} must be a comma-separated list of numbers, got {text!r}.") from None
    if not values or not all(0 < value < float("inf") for value in values):  # also refuses nan
        raise InputError(f"{name} needs at least one value, all positive and finite, got {text!r}.")
    return values
