"""Locus core: what every package stands on (loading, layouts, hooks, tokens, predictions, errors, progress)."""
