"""The three kinds of site a trace restores (kept torch-free so the CLI's --help stays fast)."""

KINDS = ("hidden", "mlp", "attn")  # block output, MLP output, attention output
