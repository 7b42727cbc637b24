"""Locus tracer: causal traces (exact and preview), averages over known facts, and the recommended R."""
