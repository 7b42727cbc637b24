"""The `locus` command: one entry point for the app and every command line of the tracer and the editor.

`locus app ...` serves the page (as `python app.py ...`); `locus trace ...` is `python -m tracer trace ...`;
`locus edit ...` is `python -m editor edit ...`; and so on for every subcommand listed by `locus --help`.
Nothing heavy is imported before a subcommand runs, so `locus --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable

from editor.cli import build_parser as editor_parser
from editor.cli import main as editor_main
from tracer.cli import build_parser as tracer_parser
from tracer.cli import main as tracer_main
from ui.serve import main as serve_main

APP_HELP = "serve the Locus app on http://127.0.0.1:7860 (the same as python app.py; --help for its options)"
NO_GRADIO = ("the app needs Gradio, which is not installed here: pip install 'locus[app]' "
             "(or pip install 'gradio>=6,<7'); the Python API and the other commands work without it.")


def gradio_installed() -> bool:
    """Whether Gradio can be imported (a folder left behind by `pip uninstall` does not count), without importing it."""
    spec = importlib.util.find_spec("gradio")
    return spec is not None and spec.origin is not None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{name: one-line help} of a command line's subcommands."""
    for action in parser._actions:  # argparse keeps them on its one subparsers action
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {}


def commands() -> dict[str, tuple[Callable[[list[str]], object], str, str]]:
    """{subcommand: (the command line's main, help, the command it is the same as)}."""
    found: dict[str, tuple[Callable[[list[str]], object], str, str]] = {"app": (None, APP_HELP, "python app.py")}  # type: ignore[dict-item]
    for name, text in subcommands(tracer_parser()).items():
        found[name] = (tracer_main, text, "python -m tracer")
    for name, text in subcommands(editor_parser()).items():
        found[name] = (editor_main, text, "python -m editor")
    return found


def usage(table: dict) -> str:
    width = max(len(name) for name in table)
    lines = ["usage: locus COMMAND [options]   (locus COMMAND --help for its options)", "",
             "Locus: find where a fact lives inside a language model, rewrite it there, and prove what changed.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text, _) in table.items()]
    lines += ["", "In Python: import locus (docs/API.md)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `locus --help | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 0


def run(argv: list[str]) -> int:
    """Dispatch `argv` to the app or to the tracer's or editor's command line."""
    table = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(table))
        return 0
    if argv[0] == "--version":
        from locus import __version__  # lazy: the public API imports torch (~3 s); --help must stay instant

        print(f"locus {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"error: unknown command {name!r}; `locus --help` lists them.", file=sys.stderr)
        return 2
    if name == "app":
        if not gradio_installed() and not {"-h", "--help"} & set(rest):
            print(f"error: {NO_GRADIO}", file=sys.stderr)
            return 2
        serve_main(rest, prog="locus app")
        return 0
    runner = table[name][0]
    return int(runner([name, *rest], prog="locus") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
