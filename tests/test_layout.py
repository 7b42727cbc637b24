"""Architecture layouts on tiny random models of every family, and discovery for unknown ones."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from core.errors import LayoutError
from core.hooks import edit_outputs, hook_count, sequence_view
from core.layout import FAMILY_LAYOUTS, resolve_layout
from tests.tiny_models import HEADS, LAYERS, MLP, WIDTH, tiny_model

PROMPT = "The Eiffel Tower is located in the city of"

EXPECTED_FAMILY = {
    "gpt2": "gpt2", "gptj": "gptj", "gpt_neox": "gpt_neox", "llama": "llama", "mistral": "llama",
    "qwen2": "qwen", "qwen3": "qwen", "gemma2": "gemma", "gemma3_text": "gemma", "phi3": "phi3", "opt": "opt",
}


def _ids(tokenizer):
    return torch.tensor([tokenizer(PROMPT)["input_ids"]])


def test_every_family_resolves_from_the_table(family, tiny):
    loaded = tiny(family)
    layout = loaded.layout
    assert layout.family == EXPECTED_FAMILY[family]
    assert not layout.discovered
    assert (layout.num_layers, layout.hidden_size, layout.mlp_size) == (LAYERS, WIDTH, MLP)
    for layer in range(LAYERS):
        assert layout.output_projection_weight(loaded.model, layer).shape == (WIDTH, MLP)


def test_shapes_at_every_site(family, tiny):
    loaded = tiny(family)
    model, layout = loaded.model, loaded.layout
    ids = _ids(loaded.tokenizer)
    from core.hooks import capture_inputs, capture_outputs

    names = [layout.site(kind, layer) for kind in ("hidden", "mlp", "attn") for layer in range(LAYERS)]
    projections = [layout.mlp_output_projection(layer) for layer in range(LAYERS)]
    with torch.no_grad(), capture_outputs(model, names + [layout.token_embedding]) as outputs, capture_inputs(
        model, projections
    ) as keys:
        model(ids)
    length = ids.shape[1]
    for name in names:
        assert sequence_view(outputs[name], 1, length).shape == (1, length, WIDTH), name
    for name in projections:
        assert sequence_view(keys[name], 1, length).shape == (1, length, MLP), name
    assert outputs[layout.token_embedding].shape[:2] == (1, ids.shape[1])


def test_a_hook_at_each_named_site_changes_the_output(family, tiny):
    loaded = tiny(family)
    model, layout = loaded.model, loaded.layout
    ids = _ids(loaded.tokenizer)
    hooks_before = hook_count(model)
    with torch.no_grad():
        clean = model(ids).logits
    sites = [layout.token_embedding, *(layout.site(kind, layer) for kind in ("hidden", "mlp", "attn") for layer in range(LAYERS))]
    sites += [layout.mlp_output_projection(layer) for layer in range(LAYERS)]
    sites += [name for name in (layout.final_norm, layout.lm_head) if name]
    for site in sites:
        with torch.no_grad(), edit_outputs(model, {site: lambda t: t + 1.0}):
            patched = model(ids).logits
        assert not torch.allclose(patched, clean), f"hook at {site} did not change the logits"
    assert hook_count(model) == hooks_before


def test_final_logits_match_the_model(family, tiny):
    loaded = tiny(family)
    model, layout = loaded.model, loaded.layout
    ids = _ids(loaded.tokenizer)
    from core.hooks import capture_outputs

    with torch.no_grad(), capture_outputs(model, [layout.block(LAYERS - 1)]) as outputs:
        logits = model(ids).logits[0, -1]
    recomputed = layout.final_logits(model, outputs[layout.block(LAYERS - 1)][0, -1])
    torch.testing.assert_close(recomputed, logits, rtol=1e-5, atol=1e-5)


def test_heads_are_slices_of_the_attention_output_projection_input(family, tiny):
    """The projection is the attention's last step (its input zeroed leaves only its bias), the input holds
    num_heads slices of head_dim, and one head's slice changes the output on its own."""
    from core.hooks import capture_inputs, capture_outputs, forward_pre_hooks

    loaded = tiny(family)
    model, layout = loaded.model, loaded.layout
    assert (layout.num_heads, layout.head_dim) == (HEADS, WIDTH // HEADS) and layout.supports_heads
    ids = _ids(loaded.tokenizer)
    names = [layout.attention_output_projection(layer) for layer in range(LAYERS)]
    assert all(name.startswith(layout.attention(layer) + ".") for layer, name in enumerate(names))

    def zero(columns):
        def hook(module, args):
            sequence_view(args[0], 1, ids.shape[1])[..., columns] = 0.0

        return hook

    with torch.no_grad(), capture_inputs(model, names) as inputs:
        clean = model(ids).logits
    for name in names:
        assert sequence_view(inputs[name], 1, ids.shape[1]).shape[-1] == layout.num_heads * layout.head_dim
    attention = layout.attention(1)
    with torch.no_grad(), forward_pre_hooks(model, {names[1]: zero(slice(None))}), capture_outputs(model, [attention]) as out:
        model(ids)
    bias = model.get_submodule(names[1]).bias
    expected = torch.zeros(WIDTH) if bias is None else bias
    torch.testing.assert_close(sequence_view(out[attention], 1, ids.shape[1])[0], expected.expand(ids.shape[1], WIDTH))
    with torch.no_grad(), forward_pre_hooks(model, {names[1]: zero(layout.head_slice(2))}):
        patched = model(ids).logits
    assert not torch.allclose(patched, clean)
    assert hook_count(model) == 0
    with pytest.raises(IndexError, match="4 heads"):
        layout.head_slice(HEADS)


def test_layer_out_of_range_says_how_many_layers(tiny):
    with pytest.raises(IndexError, match="3 layers"):
        tiny("llama").layout.mlp(7)


def test_unknown_family_is_discovered():
    torch.manual_seed(0)
    config = transformers.StableLmConfig(
        vocab_size=1000, num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64
    )
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    layout = resolve_layout(model)
    assert layout.discovered and layout.family == "discovered"
    assert layout.mlp_output_projection(1) == "model.layers.1.mlp.down_proj"
    assert layout.attention(0) == "model.layers.0.self_attn"
    assert layout.attention_output_projection(0) == "model.layers.0.self_attn.o_proj"
    assert (layout.num_heads, layout.head_dim) == (4, 8)
    assert layout.final_norm == "model.norm"
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), edit_outputs(model, {layout.mlp(0): lambda t: t * 0}):
        patched = model(ids).logits
    assert not torch.allclose(patched, model(ids).logits)


class _NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig()
        self.config.model_type = "mystery"
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10)


def test_undiscoverable_model_names_the_missing_part():
    with pytest.raises(LayoutError, match="no list of decoder blocks"):
        resolve_layout(_NoBlocks())


def test_table_lists_the_required_families():
    covered = {model_type for entry in FAMILY_LAYOUTS for model_type in entry.model_types}
    for required in ("gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt"):
        assert required in covered


def test_gpt2_conv1d_is_marked_transposed():
    model = tiny_model("gpt2")
    layout = resolve_layout(model)
    assert layout.output_projection_transposed
    stored = model.get_submodule(layout.mlp_output_projection(0)).weight
    assert stored.shape == (MLP, WIDTH)
    assert layout.output_projection_weight(model, 0).shape == (WIDTH, MLP)
