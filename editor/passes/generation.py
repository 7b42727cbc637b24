"""Batched text generation with a KV cache (greedy or seeded top-k sampling), for prefixes and fluency."""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.loading import LoadedModel
from editor.passes.forward import pad_id


@torch.inference_mode()
def generate_ids(
    loaded: LoadedModel,
    prompts: list[list[int]],
    new_tokens: int,
    *,
    top_k: int | None = None,
    seed: int = 0,
    stop: Callable[[list[list[int]]], bool] | None = None,
) -> list[list[int]]:
    """New token ids after each prompt: greedy when `top_k` is None, else top-k sampling seeded by `seed`.

    `stop`, if given, sees every row's new ids after each step; when it returns True the generation ends
    there (fewer than `new_tokens` ids per row).
    """
    if not prompts:
        return []
    device = loaded.device
    width = max(len(p) for p in prompts)
    fill = pad_id(loaded.tokenizer)
    ids = torch.full((len(prompts), width), fill, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: every row's last token is at the end
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    past = None
    step_ids, step_positions = ids, positions
    produced: list[torch.Tensor] = []
    for _ in range(new_tokens):
        output = loaded.model(
            input_ids=step_ids,
            attention_mask=mask,  # the mask covers every position so far (transformers 5 needs it with a cache)
            position_ids=step_positions,
            cache=past,
            use_cache=True,
            logits_to_keep=1,
        )
        past = output.cache
        logits = output.logits[:, -1].float()
        if top_k is None:
            chosen = logits.argmax(-1)
        else:
            values, indices = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
            probabilities = torch.softmax(values, dim=-1).cpu()
            picks = torch.multinomial(probabilities, 1, generator=generator).to(device)
            chosen = indices.gather(-1, picks).squeeze(-1)
        produced.append(chosen)
        if stop is not None and stop(torch.stack(produced, dim=-1).tolist()):
            break
        step_ids = chosen.unsqueeze(-1)
        step_positions = step_positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=-1)
    return torch.stack(produced, dim=-1).tolist()


def generate_texts(
    loaded: LoadedModel, prompts: list[str], new_tokens: int, *, top_k: int | None = None, seed: int = 0
) -> list[str]:
    """The continuation text (new tokens only) of each prompt."""
    encoded = [list(loaded.tokenizer(prompt)["input_ids"]) for prompt in prompts]
    outputs = generate_ids(loaded, encoded, new_tokens, top_k=top_k, seed=seed)
    return [loaded.tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
