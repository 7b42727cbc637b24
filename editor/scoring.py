"""Teacher-forced scoring of objects after prompts, batched (logits only where a target token is predicted)."""

from __future__ import annotations

import torch

from core.hooks import capture_outputs
from core.loading import LoadedModel
from core.progress import Progress
from core.tokens import target_token_ids
from editor.forward import pad_id, pad_right, row_batches, run_until


@torch.inference_mode()
def teacher_forced(
    loaded: LoadedModel,
    pairs: list[tuple[str, str]],
    batch_rows: int = 64,
    progress: Progress | None = None,
) -> list[tuple[float, bool]]:
    """For each (prompt, object): mean NLL of the object's tokens and whether greedy argmax reproduces them all."""
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
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    fill = pad_id(tokenizer)
    last_block = layout.block(layout.num_layers - 1)
    done = 0
    for batch in row_batches([len(row) for row in rows], batch_rows):
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
        states = final[torch.tensor(gather_rows, device=ids.device), torch.tensor(gather_positions, device=ids.device)]
        log_probs = torch.log_softmax(layout.final_logits(loaded.model, states).float(), dim=-1)
        target_tensor = torch.tensor(targets, device=ids.device)
        token_nll = -log_probs.gather(-1, target_tensor.unsqueeze(-1)).squeeze(-1)
        hits = log_probs.argmax(-1) == target_tensor
        offset = 0
        for pair, count in owners:
            results[pair] = (float(token_nll[offset : offset + count].mean()), bool(hits[offset : offset + count].all()))
            offset += count
        done += len(batch)
        if progress is not None:
            progress(done / len(rows), f"scoring prompts: {done}/{len(rows)} sequences")
    return results  # type: ignore[return-value]
