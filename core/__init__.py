"""Locus core: what every package stands on (loading, layouts, hooks, tokens, predictions, errors, progress).

Reproducibility, as it really is: a run is bit-identical to another run of the same command on the same
machine with the same torch thread count. Across thread counts, processes (Ray workers) and CPUs, float32
reductions may be split and ordered differently (MKL and oneDNN choose by thread count and instruction
set), so results agree within float32 rounding instead: `python -m bench scale` prints the largest
difference between one process and its workers (docs/DISTRIBUTED.md).
"""
