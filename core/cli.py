"""What the command lines share: model options, loading from them, file output, and one runner.

`python -m tracer` and `python -m editor` build their parsers on these. Heavy modules (torch,
transformers) are imported only inside the command that needs them, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.errors import InputError, LocusError


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
