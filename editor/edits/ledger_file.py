"""A ledger file checked before any of its tensors is read: size, header, and tensors the model could hold.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every
tensor's dtype, shape and byte range. Everything here is read from that header alone, so a huge or
forged file is refused before the editor allocates anything for it.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from core.errors import InputError
from core.loading import LoadedModel

MAX_HEADER_BYTES = 16 * 2**20
MAX_TENSORS = 100_000
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def check_ledger_file(path: str | Path, loaded: LoadedModel, max_bytes: int) -> dict:
    """The file's safetensors header, or InputError when the file is too large or not a ledger this model could use."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"The file of edits is {size / 2**20:.1f} MB; at most {max_bytes / 2**20:.0f} MB are accepted.")
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise InputError(f"{path.name} is not a safetensors file of edits exported from Locus.")
        (header_bytes,) = struct.unpack("<Q", prefix)
        if header_bytes > min(MAX_HEADER_BYTES, size - 8):
            raise InputError(f"{path.name} is not a safetensors file of edits exported from Locus (bad header).")
        try:
            header = json.loads(handle.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path.name} is not a safetensors file of edits exported from Locus (unreadable header).") from None
    if not isinstance(header, dict) or len(header) > MAX_TENSORS:
        raise InputError(f"{path.name} is not a file of edits exported from Locus.")
    layout = loaded.layout
    largest_dimension = max(layout.hidden_size, layout.mlp_size)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in ITEM_BYTES or not isinstance(entry.get("shape"), list):
            raise InputError(f"{path.name}: tensor {name!r} is not a tensor Locus writes.")
        shape = entry["shape"]
        if len(shape) > 3 or any(not isinstance(extent, int) or not 0 <= extent <= largest_dimension * 64 for extent in shape):
            raise InputError(f"{path.name}: tensor {name!r} has shape {shape}, which no edit of this model has.")
        begin, end = entry.get("data_offsets", [0, -1])
        if end - begin != math.prod(shape) * ITEM_BYTES[entry["dtype"]] or end > size - 8 - header_bytes:
            raise InputError(f"{path.name}: tensor {name!r} does not fit the file (damaged?).")
    return header
