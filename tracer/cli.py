"""Command line: `python -m tracer {predict,trace,average,cache-model} ...`."""

from __future__ import annotations

import argparse
import logging
import sys

from tracer.errors import LocusError


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
    from tracer.loading import load_model

    return load_model(arguments.model, arguments.device, arguments.dtype, arguments.trust_remote_code)


def command_predict(arguments: argparse.Namespace) -> int:
    from tracer.errors import InputError

    if not arguments.prompt.strip():  # fail before the (slow) model load
        raise InputError("The prompt is empty: type a sentence that the model should complete.")
    from tracer.predict import generate_greedy, predict_next_tokens

    loaded = load_from_arguments(arguments)
    predictions = predict_next_tokens(loaded, arguments.prompt, arguments.top, chat=arguments.chat)
    print(f"{loaded.name}: top {len(predictions)} next tokens after {arguments.prompt!r}")
    width = max(len(repr(p.token)) for p in predictions)
    for rank, prediction in enumerate(predictions, 1):
        print(f"{rank:>3}. {prediction.token!r:<{width}}  {prediction.probability:8.2%}   (id {prediction.token_id})")
    if arguments.generate:
        print("greedy:", repr(generate_greedy(loaded, arguments.prompt, arguments.generate, chat=arguments.chat)))
    return 0


def command_cache_model(arguments: argparse.Namespace) -> int:
    from tracer.embedded import ensure_embedded_cache

    folder = ensure_embedded_cache(force=arguments.force)
    print(f"Embedded model cache: {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracer",
        description="Locus tracer: read a language model (predictions, causal traces, averaged traces).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", help="print the most probable next tokens after a prompt")
    predict.add_argument("--prompt", required=True, help="text the model should continue")
    predict.add_argument("--top", type=int, default=5, help="how many tokens to list (default 5)")
    predict.add_argument("--generate", type=int, default=0, metavar="N", help="also print a greedy continuation of N tokens")
    predict.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_model_arguments(predict)
    predict.set_defaults(handler=command_predict)

    cache = commands.add_parser("cache-model", help="build the embedded model's safetensors cache if missing")
    cache.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")
    cache.set_defaults(handler=command_cache_model)

    for register in _extra_commands():
        register(commands)
    return parser


def _extra_commands():
    """Commands defined next to the code they run (trace, average), registered if present."""
    registers = []
    try:
        from tracer.trace_cli import register_commands
    except ImportError:
        return registers
    registers.append(register_commands)
    return registers


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


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)
