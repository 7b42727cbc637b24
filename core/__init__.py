"""Locus core: what every package stands on (loading, layouts, hooks, tokens, predictions, errors, progress).

Numbers must not depend on how many threads a process uses: on CPU, MKL splits float32 reductions
by thread count (a trace differs by ~1e-6 between 1 and 2 threads), so every Locus process asks MKL
for conditional numerical reproducibility before its first matrix product. Then one process with
all cores, or N workers with a share each, give bit-identical results (core.distributed relies on
it). A user's own MKL_CBWR is respected.
"""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
