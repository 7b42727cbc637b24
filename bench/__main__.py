"""Run the benchmarks: every module `bench/bench_*.py` with a `main(argv) -> int`.

`python -m bench` runs them all; `python -m bench trace` runs bench/bench_trace.py only, and any
further arguments go to it (`python -m bench edit --n 20`, `python -m bench trace --help`).
Each benchmark prints its own timings, the ratio against a baseline measured in the same run,
and a correctness figure (max abs difference or quality metrics).

`python -m bench results` is not a benchmark (`python -m bench` does not run it): it runs the
commands behind the figures in the docs and writes docs/RESULTS.md (bench/results.py; `--help`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# Commands that are not benchmarks: `python -m bench NAME` runs them, `python -m bench` (every benchmark) does not.
COMMANDS = {"results": "bench.results"}


def main(argv: list[str]) -> int:
    names = sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if info.name.startswith("bench_")
    )
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(f"available: {', '.join(names)}; and {', '.join(COMMANDS)}")
        return 0
    if argv and argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    if argv and argv[0] not in names:
        print(f"no benchmark named {argv[0]!r}; available: {', '.join(names)}; and {', '.join(COMMANDS)}")
        return 2
    if not argv:  # every benchmark, each in a fresh process: its own threads, caches and arithmetic settings
        status = 0
        for name in names:
            status |= subprocess.run([sys.executable, "-m", "bench", name], check=False).returncode
        return status
    name, passed = argv[0], argv[1:]
    if name == "soak" and "--with-trace" in passed:  # predictions while another visitor traces: bench preempt
        name, passed = "preempt", [argument for argument in passed if argument != "--with-trace"]
    print(f"\n=== bench {name} ===", flush=True)
    module = importlib.import_module(f"bench.bench_{name}")
    return module.main(passed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
