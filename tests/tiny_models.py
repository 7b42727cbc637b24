"""Tiny random-config models of every supported family, built locally with `from_config`.

They share the embedded SmolLM2 tokenizer (so real prompts can be used) and have 3 blocks of
width 32: large enough to exercise every code path, small enough to build in milliseconds.
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 49152
LAYERS = 3
WIDTH = 32
HEADS = 4
MLP = 64
POSITIONS = 256

FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT2Config", dict(n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, n_inner=MLP, n_positions=POSITIONS)),
    "gptj": ("GPTJConfig", dict(n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, n_inner=MLP, rotary_dim=4, n_positions=POSITIONS)),
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=POSITIONS),
    ),
    "llama": (
        "LlamaConfig",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=MLP, max_position_embeddings=POSITIONS),
    ),
    "mistral": (
        "MistralConfig",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=MLP, max_position_embeddings=POSITIONS),
    ),
    "qwen2": (
        "Qwen2Config",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=MLP, max_position_embeddings=POSITIONS),
    ),
    "qwen3": (
        "Qwen3Config",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, num_key_value_heads=2, head_dim=8, intermediate_size=MLP, max_position_embeddings=POSITIONS),
    ),
    "gemma2": (
        "Gemma2Config",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, num_key_value_heads=2, head_dim=8, intermediate_size=MLP, max_position_embeddings=POSITIONS, sliding_window=64),
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, num_key_value_heads=2, head_dim=8, intermediate_size=MLP, max_position_embeddings=POSITIONS, sliding_window=64),
    ),
    "phi3": (
        "Phi3Config",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=MLP, max_position_embeddings=POSITIONS, pad_token_id=0),
    ),
    "opt": (
        "OPTConfig",
        dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, ffn_dim=MLP, word_embed_proj_dim=WIDTH, max_position_embeddings=POSITIONS, pad_token_id=1),
    ),
}

FAMILIES = tuple(FAMILY_CONFIGS)


def tiny_config(model_type: str):
    class_name, kwargs = FAMILY_CONFIGS[model_type]
    kwargs = {"bos_token_id": 0, "eos_token_id": 0, **kwargs}
    config = getattr(transformers, class_name)(vocab_size=VOCAB, **kwargs)
    config.use_cache = True
    return config


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A float32 random-weight causal LM of `model_type` in eval mode."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    return model.eval()
