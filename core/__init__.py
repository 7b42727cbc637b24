"""Locus core: what every package stands on (loading, layouts, hooks, tokens, predictions, errors, progress).

Runs on workers must not depend on how many threads a process uses: on CPU, MKL splits float32
reductions by thread count (a trace differs by ~1e-6 between 1 and 2 threads). So a process started
with `--workers`/`--ray` (the driver, and every Ray worker through its environment) or with
LOCUS_REPRODUCIBLE=1 asks MKL for conditional numerical reproducibility before its first matrix
product; then one process, 1 worker and N workers give bit-identical results (core.distributed relies
on it). It costs about 15% of the fast trace engine's speed on a 2-core CPU, so a plain one-process run
does not ask. A user's own MKL_CBWR is respected.
"""

import os
import sys

REPRODUCIBLE_ARITHMETIC = "AUTO,STRICT"  # MKL_CBWR: the same bits whatever the thread count
DISTRIBUTED_FLAGS = ("--workers", "--ray")


def _asks_for_reproducible_arithmetic(arguments: list[str]) -> bool:
    """True when the command runs on workers (or the environment asks for it)."""
    if os.environ.get("LOCUS_REPRODUCIBLE") == "1":
        return True
    return any(argument.split("=", 1)[0] in DISTRIBUTED_FLAGS for argument in arguments)


if _asks_for_reproducible_arithmetic(sys.argv[1:]):
    os.environ.setdefault("MKL_CBWR", REPRODUCIBLE_ARITHMETIC)
