"""Next-token predictions and greedy generations for a prompt."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from core.loading import LoadedModel
from core.tokens import encode_prompt


@dataclass(frozen=True)
class TokenProbability:
    """One candidate next token."""

    token: str
    token_id: int
    probability: float

    def to_dict(self) -> dict:
        return asdict(self)


def ids_tensor(loaded: LoadedModel, input_ids: list[int]) -> torch.Tensor:
    """A (1, T) LongTensor of `input_ids` on the model's input device."""
    return torch.tensor([input_ids], dtype=torch.long, device=loaded.device)


@torch.inference_mode()
def next_token_probabilities(loaded: LoadedModel, prompt: str, *, chat: bool = False) -> torch.Tensor:
    """Softmax over the vocabulary at the last position of `prompt`: (vocab,) float32 on CPU."""
    encoded = encode_prompt(loaded.tokenizer, prompt, chat=chat, max_tokens=loaded.max_length)
    logits = loaded.model(ids_tensor(loaded, encoded.input_ids), logits_to_keep=1).logits[0, -1]
    return torch.softmax(logits.float(), dim=-1).cpu()


def top_tokens(loaded: LoadedModel, probabilities: torch.Tensor, top: int = 5) -> list[TokenProbability]:
    """The `top` most probable tokens of a (vocab,) distribution."""
    values, indices = probabilities.topk(max(1, min(top, probabilities.numel())))
    return [
        TokenProbability(loaded.tokenizer.decode([int(i)]), int(i), float(v))
        for v, i in zip(values.tolist(), indices.tolist())
    ]


def predict_next_tokens(loaded: LoadedModel, prompt: str, top: int = 5, *, chat: bool = False) -> list[TokenProbability]:
    """The `top` most probable next tokens after `prompt`."""
    return top_tokens(loaded, next_token_probabilities(loaded, prompt, chat=chat), top)


@torch.inference_mode()
def generate_greedy(loaded: LoadedModel, prompt: str, max_new_tokens: int = 20, *, chat: bool = False) -> str:
    """The greedy continuation of `prompt` (the new text only)."""
    encoded = encode_prompt(loaded.tokenizer, prompt, chat=chat, max_tokens=loaded.max_length)
    input_ids = ids_tensor(loaded, encoded.input_ids)
    output = loaded.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return loaded.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
