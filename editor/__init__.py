"""Locus editor: writes a model (covariance statistics, MEMIT/ROME, edit ledger, evaluation)."""
