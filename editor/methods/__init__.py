"""The editing methods (MEMIT, ROME, AlphaEdit, ENCORE) and what they share: targets, keys, solves."""
