"""Architecture layouts: where the blocks, embeddings, MLPs and attention of each model family live.

This module is the one place that knows model families. Everything else asks a `ModelLayout` for
module names (`layout.mlp(12)` -> "model.layers.12.mlp") and never tests a model's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import LayoutError
from core.kinds import KINDS


@dataclass(frozen=True)
class FamilyLayout:
    """Module paths of one model family; block-relative paths are relative to `blocks.<l>`."""

    family: str
    model_types: tuple[str, ...]
    blocks: str
    token_embedding: str
    final_norm: str | None
    lm_head: str
    attention: str
    mlp: str
    mlp_output_projection: str
    attention_output_projection: str | None = None  # its input is the heads' outputs side by side (head-level traces)
    output_projection_transposed: bool = False  # GPT-2's Conv1D stores W as (m, d)
    final_projection: str | None = None  # OPT's project_out
    logit_softcap_config: str | None = None  # config attribute of a final tanh soft-cap
    parallel_attention_mlp: bool = False  # attention and MLP read the same input (GPT-J, NeoX)
    mlp_output_norm: str | None = None  # block-relative norm between the MLP output and the residual (Gemma 2/3)
    examples: str = ""


def _llama_like(family: str, model_types: tuple[str, ...], examples: str, **changes) -> FamilyLayout:
    base = FamilyLayout(
        family=family,
        model_types=model_types,
        blocks="model.layers",
        token_embedding="model.embed_tokens",
        final_norm="model.norm",
        lm_head="lm_head",
        attention="self_attn",
        mlp="mlp",
        mlp_output_projection="mlp.down_proj",
        attention_output_projection="self_attn.o_proj",
        examples=examples,
    )
    return dataclasses.replace(base, **changes)


FAMILY_LAYOUTS: tuple[FamilyLayout, ...] = (
    FamilyLayout(
        family="gpt2",
        model_types=("gpt2",),
        blocks="transformer.h",
        token_embedding="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        attention="attn",
        mlp="mlp",
        mlp_output_projection="mlp.c_proj",
        attention_output_projection="attn.c_proj",
        output_projection_transposed=True,
        examples="GPT-2, GPT-2 XL",
    ),
    FamilyLayout(
        family="gptj",
        model_types=("gptj",),
        blocks="transformer.h",
        token_embedding="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        attention="attn",
        mlp="mlp",
        mlp_output_projection="mlp.fc_out",
        attention_output_projection="attn.out_proj",
        parallel_attention_mlp=True,
        examples="GPT-J 6B",
    ),
    FamilyLayout(
        family="gpt_neox",
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        token_embedding="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",  # "embed_out" before transformers 5
        attention="attention",
        mlp="mlp",
        mlp_output_projection="mlp.dense_4h_to_h",
        attention_output_projection="attention.dense",
        parallel_attention_mlp=True,
        examples="Pythia, GPT-NeoX 20B",
    ),
    _llama_like(
        "llama",
        ("llama", "mistral", "smollm3", "olmo", "olmo2", "granite"),
        "Llama 2/3, SmolLM2 (embedded), Mistral 7B, OLMo",
    ),
    _llama_like("qwen", ("qwen2", "qwen3"), "Qwen2, Qwen2.5, Qwen3"),
    _llama_like(
        "gemma",
        ("gemma", "gemma2", "gemma3_text"),
        "Gemma, Gemma 2, Gemma 3 (text)",
        logit_softcap_config="final_logit_softcapping",
        mlp_output_norm="post_feedforward_layernorm",  # Gemma 2/3 only; resolved per model
    ),
    _llama_like("phi3", ("phi3",), "Phi-3, Phi-3.5 mini"),
    FamilyLayout(
        family="opt",
        model_types=("opt",),
        blocks="model.decoder.layers",
        token_embedding="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm",
        lm_head="lm_head",
        attention="self_attn",
        mlp="fc2",  # OPT has no MLP module: fc2's output is the MLP output
        mlp_output_projection="fc2",
        attention_output_projection="self_attn.out_proj",
        final_projection="model.decoder.project_out",
        examples="OPT 125M ... 66B",
    ),
)

_BY_MODEL_TYPE = {model_type: entry for entry in FAMILY_LAYOUTS for model_type in entry.model_types}


@dataclass(frozen=True)
class ModelLayout:
    """A family layout resolved against one loaded model, with its sizes."""

    family: str
    model_type: str
    blocks: str
    token_embedding: str
    final_norm: str | None
    lm_head: str
    attention_path: str
    mlp_path: str
    mlp_output_projection_path: str
    output_projection_transposed: bool
    final_projection: str | None
    logit_softcap: float | None
    parallel_attention_mlp: bool
    num_layers: int
    hidden_size: int  # d, the residual stream width
    mlp_size: int  # m, the input width of the MLP output projection (the MEMIT key size)
    vocab_size: int
    discovered: bool = False  # True when found by discovery rather than the family table
    mlp_output_norm: str | None = None  # set when a norm sits between the MLP output and the residual
    attention_output_projection_path: str | None = None  # None: head-level traces are not available
    num_heads: int = 0  # attention (query) heads per block; 0 when unknown
    head_dim: int = 0  # width of one head's slice of the attention output projection's input

    def block(self, layer: int) -> str:
        """Name of decoder block `layer`; its output is the residual stream after the block."""
        return f"{self.blocks}.{self._check(layer)}"

    def attention(self, layer: int) -> str:
        return f"{self.block(layer)}.{self.attention_path}"

    def mlp(self, layer: int) -> str:
        return f"{self.block(layer)}.{self.mlp_path}"

    def mlp_output_projection(self, layer: int) -> str:
        return f"{self.block(layer)}.{self.mlp_output_projection_path}"

    def attention_output_projection(self, layer: int) -> str:
        """The module whose input holds the heads' outputs side by side: (rows, T, num_heads * head_dim)."""
        if not self.supports_heads:
            raise LayoutError(f"The attention output projection of {self.model_type!r} is not known: head-level traces are not available.")
        return f"{self.block(layer)}.{self.attention_output_projection_path}"

    @property
    def supports_heads(self) -> bool:
        return bool(self.attention_output_projection_path) and self.num_heads > 0 and self.head_dim > 0

    def head_slice(self, head: int) -> slice:
        """Columns of head `head` in the attention output projection's input (heads are side by side)."""
        if not 0 <= head < self.num_heads:
            raise IndexError(f"head {head} out of range: the model has {self.num_heads} heads per layer (0..{self.num_heads - 1})")
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def site(self, kind: str, layer: int) -> str:
        """Module whose output a trace of `kind` ("hidden", "mlp" or "attn") restores at `layer`."""
        if kind == "hidden":
            return self.block(layer)
        if kind == "mlp":
            return self.mlp(layer)
        if kind == "attn":
            return self.attention(layer)
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")

    def sites(self, kind: str) -> list[str]:
        return [self.site(kind, layer) for layer in range(self.num_layers)]

    def _check(self, layer: int) -> int:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range: the model has {self.num_layers} layers (0..{self.num_layers - 1})")
        return layer

    # --- weights -------------------------------------------------------------------------------
    def output_projection_weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """W of the MLP output projection at `layer` as a (d, m) view (transposed back for Conv1D)."""
        weight = model.get_submodule(self.mlp_output_projection(layer)).weight
        return weight.T if self.output_projection_transposed else weight

    # --- head ----------------------------------------------------------------------------------
    def final_logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from residual states after the last block: (..., d) -> (..., vocab)."""
        if self.final_norm is not None:
            hidden = model.get_submodule(self.final_norm)(hidden)
        if self.final_projection is not None:
            hidden = model.get_submodule(self.final_projection)(hidden)
        logits = model.get_submodule(self.lm_head)(hidden)
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def describe(self) -> dict:
        """Plain dict for display (model panel, JSON)."""
        return {
            "family": self.family,
            "model_type": self.model_type,
            "layers": self.num_layers,
            "d_model": self.hidden_size,
            "mlp_size": self.mlp_size,
            "vocab_size": self.vocab_size,
            "blocks": self.blocks,
            "token_embedding": self.token_embedding,
            "mlp_output_projection": f"{self.blocks}.<l>.{self.mlp_output_projection_path}",
            "attention_heads": self.num_heads,
            "head_dim": self.head_dim,
            "discovered": self.discovered,
        }


def _find(model: nn.Module, name: str | None) -> nn.Module | None:
    if not name:
        return None
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return module


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def resolve_layout(model: nn.Module) -> ModelLayout:
    """The layout of `model`: its family's table entry, else discovery, else a LayoutError."""
    model_type = _model_type(model)
    entry = _BY_MODEL_TYPE.get(model_type)
    if entry is not None:
        missing = _missing_parts(model, entry)
        if not missing:
            return _build(model, entry, model_type, discovered=False)
        discovered = _discover(model)
        if isinstance(discovered, str):
            raise LayoutError(
                f"Model type {model_type!r} is in the {entry.family} family table, but these parts "
                f"were not found: {', '.join(missing)}."
            )
        return _build(model, discovered, model_type, discovered=True)
    discovered = _discover(model)
    if isinstance(discovered, str):
        raise LayoutError(
            f"Model type {model_type!r} is not in Locus's family table and discovery failed: {discovered}. "
            f"Supported families: {', '.join(entry.family for entry in FAMILY_LAYOUTS)}."
        )
    return _build(model, discovered, model_type, discovered=True)


def _missing_parts(model: nn.Module, entry: FamilyLayout) -> list[str]:
    missing = []
    for part in ("blocks", "token_embedding", "lm_head"):
        if _find(model, getattr(entry, part)) is None:
            missing.append(f"{part} ({getattr(entry, part)})")
    blocks = _find(model, entry.blocks)
    if blocks is not None and len(blocks) > 0:
        for part in ("attention", "mlp", "mlp_output_projection"):
            if _find(blocks[0], getattr(entry, part)) is None:
                missing.append(f"{part} ({entry.blocks}.0.{getattr(entry, part)})")
    return missing


def _build(model: nn.Module, entry: FamilyLayout, model_type: str, discovered: bool) -> ModelLayout:
    blocks = model.get_submodule(entry.blocks)
    projection = blocks[0].get_submodule(entry.mlp_output_projection)
    weight = projection.weight
    if entry.output_projection_transposed:
        mlp_size, hidden_size = weight.shape
    else:
        hidden_size, mlp_size = weight.shape
    head = model.get_submodule(entry.lm_head)
    vocab_size = head.weight.shape[0]
    config = getattr(model, "config", None)
    softcap = getattr(config, entry.logit_softcap_config, None) if entry.logit_softcap_config else None
    heads_path, num_heads, head_dim = _heads(blocks[0], entry.attention_output_projection, config)
    return ModelLayout(
        family=entry.family,
        model_type=model_type,
        blocks=entry.blocks,
        token_embedding=entry.token_embedding,
        final_norm=entry.final_norm if _find(model, entry.final_norm) is not None else None,
        lm_head=entry.lm_head,
        attention_path=entry.attention,
        mlp_path=entry.mlp,
        mlp_output_projection_path=entry.mlp_output_projection,
        output_projection_transposed=entry.output_projection_transposed,
        final_projection=entry.final_projection if _find(model, entry.final_projection) is not None else None,
        logit_softcap=float(softcap) if softcap else None,
        parallel_attention_mlp=entry.parallel_attention_mlp,
        num_layers=len(blocks),
        hidden_size=int(hidden_size),
        mlp_size=int(mlp_size),
        vocab_size=int(vocab_size),
        discovered=discovered,
        mlp_output_norm=entry.mlp_output_norm if _find(blocks[0], entry.mlp_output_norm) is not None else None,
        attention_output_projection_path=heads_path,
        num_heads=num_heads,
        head_dim=head_dim,
    )


def _input_width(module: nn.Module) -> int | None:
    """Input features of a projection: nn.Linear's in_features, GPT-2 Conv1D's nx (weight (in, out))."""
    for name in ("in_features", "nx"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _heads(block: nn.Module, path: str | None, config) -> tuple[str | None, int, int]:
    """(attention output projection path, heads, head width), or (None, 0, 0) when they cannot be told."""
    projection = _find(block, path)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    width = _input_width(projection) if projection is not None else None
    if projection is None or not isinstance(heads, int) or heads <= 0 or not width or width % heads:
        return None, 0, 0
    return path, heads, width // heads


# --- discovery for models outside the table -----------------------------------------------------

_MLP_NAMES = ("mlp", "feed_forward", "ffn", "ff")
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
_ATTENTION_OUTPUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo")


def _name_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


def _is_projection(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, nn.Embedding)


def _discover(model: nn.Module) -> FamilyLayout | str:
    """Guess the layout of an unknown decoder; returns an explanation string when it cannot."""
    config = getattr(model, "config", None)
    expected_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    if expected_layers:
        candidates = [c for c in candidates if len(c[1]) == expected_layers] or candidates
    if not candidates:
        return "no list of decoder blocks (an nn.ModuleList of identical modules) was found"
    blocks_name, blocks = max(candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))
    embedding_name = _name_of(model, model.get_input_embeddings()) if hasattr(model, "get_input_embeddings") else None
    if not embedding_name:
        return "no token embedding (get_input_embeddings) was found"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = _name_of(model, head)
    if not head_name:
        return "no LM head (get_output_embeddings) was found"
    block = blocks[0]
    attention_name = next(
        (n for n, m in block.named_children() if "attn" in n.lower() or "attention" in type(m).__name__.lower()), None
    )
    if attention_name is None:
        return f"no attention module in {blocks_name}.0"
    mlp_name = next(
        (n for n, m in block.named_children() if n.lower() in _MLP_NAMES or "mlp" in type(m).__name__.lower()), None
    )
    if mlp_name is None:
        return f"no MLP module in {blocks_name}.0 (looked for {', '.join(_MLP_NAMES)})"
    mlp = block.get_submodule(mlp_name)
    projections = [(n, m) for n, m in mlp.named_modules() if _is_projection(m)]
    if not projections:
        return f"no output projection inside {blocks_name}.0.{mlp_name}"
    projection_name, projection = projections[-1]
    transposed = type(projection).__name__ == "Conv1D"
    attention = block.get_submodule(attention_name)
    attention_projections = [name for name, module in attention.named_modules() if _is_projection(module)]
    named = [name for name in attention_projections if name.rsplit(".", 1)[-1] in _ATTENTION_OUTPUT_NAMES]
    attention_output = (named or attention_projections[-1:] or [None])[0]
    final_norm = None
    block_prefix = blocks_name + "."
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if short in _NORM_NAMES and not name.startswith(block_prefix) and "norm" in type(module).__name__.lower():
            final_norm = name
    return FamilyLayout(
        family="discovered",
        model_types=(_model_type(model),),
        blocks=blocks_name,
        token_embedding=embedding_name,
        final_norm=final_norm,
        lm_head=head_name,
        attention=attention_name,
        mlp=mlp_name,
        mlp_output_projection=f"{mlp_name}.{projection_name}",
        attention_output_projection=f"{attention_name}.{attention_output}" if attention_output else None,
        output_projection_transposed=transposed,
    )
