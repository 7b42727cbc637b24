"""The kinds of site a trace restores (kept torch-free so the CLI's --help stays fast)."""

KINDS = ("hidden", "mlp", "attn")  # block output, MLP output, attention output: a (token x layer) matrix each
HEADS = "heads"  # single attention heads (the head's slice of the attention output projection's input): heads x layers
TRACE_KINDS = (*KINDS, HEADS)
