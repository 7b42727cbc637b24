"""Success by generation (SPEC 6; Yang et al., "The Mirage of Model Editing", ACL 2025): no teacher forcing.

Each (prompt, object) check greedily decodes from the prompt alone, up to (the object's tokens) + 8 new
tokens, and succeeds when the continuation, stripped of leading whitespace, starts with the object's
string (`editor.evaluation.metrics.generation_success`).

How it is computed: the prompts go in batches of similar length, left-padded, through
`editor.passes.generation.generate_ids` (one KV-cache pass per batch up to the batch's largest budget,
each row cut to its own); a prompt asked for twice is generated once. A batch stops early once every
check in it is settled (its text starts with the object, or has left it for good): greedy decoding
only appends, so the answer is the one the whole budget gives. The caller may hand over the first
greedy token of each prompt (the teacher-forced pass has it: the argmax where the object's first
token is predicted); a check that this token already settles, which is most of them, costs no
generation at all.
"""

from __future__ import annotations

from core.loading import LoadedModel
from core.memory import ChunkSize, ModelShape
from core.progress import Progress
from core.tokens import target_token_ids
from editor.evaluation.metrics import generation_success
from editor.passes.forward import row_batches_within_memory, rows_per_batch
from editor.passes.generation import generate_ids

EXTRA_TOKENS = 8  # new tokens beyond the object's own (SPEC 6)


def generation_budget(loaded: LoadedModel, prompt: str, target: str) -> int:
    """New tokens for one check: the object's tokens after this prompt, plus EXTRA_TOKENS."""
    return len(target_token_ids(loaded.tokenizer, target, prompt=prompt)) + EXTRA_TOKENS


def settled(text: str, target: str) -> bool:
    """Can no further text change whether `text` (so far), stripped of leading whitespace, starts with `target`?

    True once it starts with the target, or once it holds a character that the target does not have
    there (a text cut inside a character, shown as U+FFFD, is not settled yet).
    """
    text, target = text.lstrip(), target.strip()
    if text.startswith(target):
        return True
    return bool(text) and "\ufffd" not in text and not target.startswith(text)


def greedy_continuations(
    loaded: LoadedModel,
    prompts: list[str],
    budgets: list[int],
    *,
    batch_rows: int = 64,
    progress: Progress | None = None,
) -> list[list[int]]:
    """The token ids greedy decoding writes after each prompt, `budgets[i]` of them (fewer when it ends the text).

    Batched and left-padded: the ids of decoding each prompt on its own. A continuation stops before the
    first special (end-of-text) token.
    """
    encoded = [list(loaded.tokenizer(prompt)["input_ids"]) for prompt in prompts]
    return _generate(loaded, encoded, [[] for _ in prompts], budgets, None, batch_rows, progress)


def generation_checks(
    loaded: LoadedModel,
    checks: list[tuple[str, str]],
    *,
    first_tokens: list[int] | None = None,
    batch_rows: int = 64,
    progress: Progress | None = None,
) -> list[bool]:
    """For each (prompt, object): does greedy decoding from the prompt write the object first (SPEC 6)?

    `first_tokens`, if given, are the greedy first tokens after each prompt (teacher_forced(...,
    first_token=True) has them); decoding goes on from there only where they leave the answer open.
    """
    if first_tokens is not None and len(first_tokens) != len(checks):
        raise ValueError("one first token per check")
    tokenizer = loaded.tokenizer
    budgets = [generation_budget(loaded, prompt, target) for prompt, target in checks]
    targets = [target for _, target in checks]
    prompts = [list(tokenizer(prompt)["input_ids"]) for prompt, _ in checks]
    starts = [[int(token)] for token in first_tokens] if first_tokens is not None else [[] for _ in checks]
    outputs = _generate(loaded, prompts, starts, budgets, targets, batch_rows, progress)
    return [generation_success(tokenizer.decode(ids, skip_special_tokens=True), target) for ids, target in zip(outputs, targets)]


def _generate(
    loaded: LoadedModel,
    prompts: list[list[int]],
    starts: list[list[int]],
    budgets: list[int],
    targets: list[str] | None,
    batch_rows: int,
    progress: Progress | None,
) -> list[list[int]]:
    """Greedy ids after each prompt (beginning with its `start`, already decoded), cut to its budget and
    before a special token; with `targets`, a check whose ids settle it is done (see the module notes)."""
    if not len(prompts) == len(starts) == len(budgets) or (targets is not None and len(targets) != len(prompts)):
        raise ValueError("one start, budget (and target) per prompt")
    tokenizer = loaded.tokenizer
    stops = set(getattr(tokenizer, "all_special_ids", None) or [])

    def cut(ids: list[int], budget: int) -> list[int]:
        ids = ids[:budget]
        return ids[: next((position for position, token in enumerate(ids) if token in stops), len(ids))]

    def done(ids: list[int], budget: int, target: str | None) -> bool:
        """Is one check's answer fixed by its continuation `ids` so far?"""
        own = cut(ids, budget)
        if len(ids) >= budget or len(own) < len(ids):  # at its budget, or the text has ended
            return True
        return target is not None and settled(tokenizer.decode(own, skip_special_tokens=True), target)

    results: list[list[int] | None] = [None] * len(prompts)
    rows: list[list[int]] = []  # prompt + start of each distinct row to decode
    row_of: dict[tuple[int, ...], int] = {}
    row_start: list[list[int]] = []
    row_checks: list[list[int]] = []  # the checks each row answers
    for index, (prompt, start, budget) in enumerate(zip(prompts, starts, budgets)):
        target = None if targets is None else targets[index]
        if start and (target is not None or len(start) >= budget) and done(start, budget, target):
            results[index] = cut(start, budget)
            continue
        key = tuple(prompt + start)
        if key not in row_of:  # the same prompt (e.g. a neighbourhood prompt of two records) is decoded once
            row_of[key] = len(rows)
            rows.append(list(key))
            row_start.append(list(start))
            row_checks.append([])
        row_checks[row_of[key]].append(index)
    if rows:
        row_budget = [max(budgets[index] for index in checks) - len(start) for checks, start in zip(row_checks, row_start)]

        def row_done(row: int, new: list[int]) -> bool:
            ids = row_start[row] + new
            return all(done(ids, budgets[index], None if targets is None else targets[index]) for index in row_checks[row])

        def run(batch: list[int]) -> list[list[int]]:
            stop = (lambda produced: all(row_done(row, new) for row, new in zip(batch, produced))) if targets is not None else None
            return generate_ids(loaded, [rows[row] for row in batch], max(row_budget[row] for row in batch), stop=stop)

        shape = ModelShape.of(loaded)
        longest = max(len(row) + budget for row, budget in zip(rows, row_budget))
        chunk = ChunkSize(
            rows_per_batch(loaded, longest, batch_rows, len(rows),
                           longest * shape.cache_token_bytes() + 8 * loaded.layout.vocab_size),
            1, f"generating after {len(rows)} prompt(s)", "rows", loaded.device, "Score fewer records at once.",
        )
        finished = 0
        for batch, outputs in row_batches_within_memory([len(row) for row in rows], chunk, run):
            for row, new in zip(batch, outputs):
                for index in row_checks[row]:
                    results[index] = cut(row_start[row] + new, budgets[index])
            finished += len(batch)
            if progress is not None:
                progress(finished / len(rows), f"generating: {finished}/{len(rows)} prompts")
    return results  # type: ignore[return-value]
