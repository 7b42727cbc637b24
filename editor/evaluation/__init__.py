"""Judging edits: CounterFact records and scores, model health, damage to known facts."""
