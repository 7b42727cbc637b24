"""Teacher-forced scoring of objects after prompts, batched (logits only where a target token is predicted).

Rows per forward pass come from `core.memory` (at most `batch_rows` on a CPU, what fits on a GPU); an
out-of-memory error halves them and retries. Log-probabilities are float32 whatever the model's dtype.
"""

from __future__ import annotations

import torch

from core.hooks import capture_outputs
from core.loading import LoadedModel
from core.memory import ChunkSize
from core.progress import Progress, safe_point
from core.tokens import target_token_ids
from editor.passes.forward import pad_id, pad_right, row_batches_within_memory, rows_per_batch, run_until


@torch.inference_mode()
def teacher_forced(
    loaded: LoadedModel,
    pairs: list[tuple[str, str]],
    batch_rows: int = 64,
    progress: Progress | None = None,
    first_token: bool = False,
) -> list[tuple[float, bool]] | list[tuple[float, bool, int]]:
    """For each (prompt, object): mean NLL of the object's tokens and whether greedy argmax reproduces them all.

    `first_token`: each tuple also holds the greedy first token after the prompt (the argmax where the
    object's first token is predicted: the first step of greedy decoding from the prompt alone).
    """
    tokenizer, layout = loaded.tokenizer, loaded.layout
    rows: list[list[int]] = []
    row_of: dict[tuple[int, ...], int] = {}
    spans = []  # per pair: (row, first position, target ids)
    for prompt, target in pairs:
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        target_ids = target_token_ids(tokenizer, target, prompt=prompt)
        ids = tuple(prompt_ids + target_ids[:-1])
        if ids not in row_of:  # single-token objects after the same prompt share one row
            row_of[ids] = len(rows)
            rows.append(list(ids))
        spans.append((row_of[ids], len(prompt_ids) - 1, target_ids))
    pairs_of_row: list[list[int]] = [[] for _ in rows]
    for pair, (row, _, _) in enumerate(spans):
        pairs_of_row[row].append(pair)
    results: list[tuple | None] = [None] * len(pairs)
    fill = pad_id(tokenizer)
    last_block = layout.block(layout.num_layers - 1)
    done = 0

    def score_batch(batch: list[int]) -> list[tuple[int, float, bool, int]]:
        """(pair, mean NLL, argmax hit, first argmax) of every pair of the batch's rows (changes nothing)."""
        ids, mask = pad_right([rows[i] for i in batch], fill, loaded.device)
        with capture_outputs(loaded.model, [last_block]) as outputs:
            run_until(loaded, layout.num_layers - 1, input_ids=ids, attention_mask=mask, use_cache=False)
        final = outputs[last_block]
        gather_rows, gather_positions, targets, owners = [], [], [], []
        for position, row in enumerate(batch):
            for pair in pairs_of_row[row]:
                _, start, target_ids = spans[pair]
                gather_rows += [position] * len(target_ids)
                gather_positions += list(range(start, start + len(target_ids)))
                targets += target_ids
                owners.append((pair, len(target_ids)))
        states = final[torch.tensor(gather_rows, device=final.device), torch.tensor(gather_positions, device=final.device)]
        log_probs = torch.log_softmax(layout.final_logits(loaded.model, states).float(), dim=-1)
        target_tensor = torch.tensor(targets, device=log_probs.device)
        token_nll = -log_probs.gather(-1, target_tensor.unsqueeze(-1)).squeeze(-1)
        argmax = log_probs.argmax(-1)
        hits = argmax == target_tensor
        scored, offset = [], 0
        for pair, count in owners:
            scored.append((pair, token_nll[offset : offset + count].mean(), hits[offset : offset + count].all(), argmax[offset]))
            offset += count
        if not scored:
            return []
        means = torch.stack([mean for _, mean, _, _ in scored]).tolist()  # one device-to-host copy per batch
        alls = torch.stack([hit for _, _, hit, _ in scored]).tolist()
        firsts = torch.stack([first for _, _, _, first in scored]).tolist()
        return [(pair, mean, hit, first) for (pair, _, _, _), mean, hit, first in zip(scored, means, alls, firsts)]

    longest = max((len(row) for row in rows), default=1)
    chunk = ChunkSize(
        rows_per_batch(loaded, longest, batch_rows, len(rows), 4 * layout.vocab_size * 4), 1,
        f"scoring {len(pairs)} prompt/object pair(s)", "rows", loaded.device, "Score fewer records at once.",
    )
    for batch, scored in row_batches_within_memory([len(row) for row in rows], chunk, score_batch):
        for pair, mean, hit, first in scored:
            results[pair] = (mean, bool(hit), int(first)) if first_token else (mean, bool(hit))
        done += len(batch)
        if progress is not None:
            progress(done / len(rows), f"scoring prompts: {done}/{len(rows)} sequences")
            safe_point(progress)
    return results  # type: ignore[return-value]
