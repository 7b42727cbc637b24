"""Run the benchmarks: every module `bench/bench_*.py` with a `main(argv) -> int`.

`python -m bench` runs them all; `python -m bench trace` runs bench/bench_trace.py only.
Each benchmark prints its own timings, the ratio against a baseline measured in the same run,
and a correctness figure (max abs difference or quality metrics).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(argv: list[str]) -> int:
    names = sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if info.name.startswith("bench_")
    )
    chosen = [name for name in names if not argv or name in argv]
    if not chosen:
        print(f"no benchmark matches {argv}; available: {', '.join(names)}")
        return 2
    status = 0
    for name in chosen:
        print(f"\n=== bench {name} ===", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        status |= module.main([])
    return status


raise SystemExit(main(sys.argv[1:]))
