"""Command line: `python -m tracer {predict,trace,average,cache-model} ...`.

The trace and average commands live in tracer/trace_cli.py, next to what they run.
"""

from __future__ import annotations

import argparse

from core.cli import add_model_arguments, load_from_arguments, run_parsed
from core.errors import InputError
from tracer.trace_cli import register_commands


def command_predict(arguments: argparse.Namespace) -> int:
    if not arguments.prompt.strip():  # fail before the (slow) model load
        raise InputError("The prompt is empty: type a sentence that the model should complete.")
    from core.predict import generate_greedy, predict_next_tokens  # lazy: torch; --help must stay instant

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
    from core.embedded import ensure_embedded_cache  # lazy: torch; --help must stay instant

    folder = ensure_embedded_cache(force=arguments.force)
    print(f"Embedded model cache: {folder}")
    return 0


def build_parser(prog: str = "python -m tracer") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
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

    register_commands(commands)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m tracer") -> int:
    return run_parsed(build_parser(prog), argv)
