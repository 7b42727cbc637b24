"""Target vectors z_i = h_i + delta_i (SPEC 3 step 2), optimized for many requests at once.

Each request's delta is independent of the others', so requests are optimized together: the rows of
a chunk of requests go through the model in one batch, the loss is the sum of the per-request losses
(so each delta gets exactly its own gradient), Adam state is per request, and a request that reached
the stopping loss is frozen and its rows leave the batch. The result equals optimizing the requests
one at a time (tests/test_editor_targets.py), while memory is bounded by the chunk size.

Two engines compute the same loss. "full" runs every row from its first token through every block at
every step (the straightforward way). "cached" uses where delta enters: it is added to block l_R's
output at the subject's last token, so no position before that token changes, and no block up to l_R
changes at any position. Once per chunk it keeps the keys/values of the tokens before the subject's
last token and block l_R's output at the rest; every step then runs blocks l_R+1.. on the rest only
(`core.block_calls` starts the forward pass there with the model's own block arguments).

Chunk sizes (requests per chunk, padded tokens per pass) come from `core.memory`: on a CPU at most the
settings' values, on a GPU as many as fit (all requests in one chunk where they fit). An out-of-memory
error halves both and restarts the chunk (chunks are independent); at the floor it is a LocusError.
The deltas are float32 whatever the model's dtype; each is added to the block output in float32 and
rounded to the model's dtype once. On a float16 model the loss is scaled before the backward pass and
the gradient unscaled in float32 (`LossScale`: smaller after an overflow, larger when a request's gradient
underflows to zero, and a plain error naming the request when no scale works). A request whose delta is
still exactly zero after gradient steps is an error too, never a no-op edit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from core.block_calls import PrefixKeyValues, cache_argument, new_dynamic_cache, stubbed_blocks
from core.errors import LocusError
from core.hooks import forward_hooks, output_tensor, replace_output_tensor
from core.loading import LoadedModel
from core.memory import ChunkSize, ModelShape, plan
from core.progress import Progress, safe_point, stage
from editor.edits.batch import RequestDiagnostics
from editor.edits.requests import EditRequest
from editor.methods.settings import EditSettings
from editor.passes.forward import pad_id, pad_right, row_batches, run_until
from editor.passes.rows import PromptRow, target_rows

ENGINES = ("cached", "full")
MEMORY_ADVICE = "Edit fewer facts at once, or use shorter prompts."
FLOAT16_LOSS_SCALE = 2.0**16  # float16 gradients of a loss near 1 underflow; scaled, then unscaled in float32
LOSS_SCALE_FACTOR = 16.0  # the loss scale moves by this factor after an overflow or an underflow
LARGEST_LOSS_SCALE = 2.0**32  # beyond this a float16 gradient that is still zero is not coming back
HALF_PRECISION_ADVICE = "load the model in bfloat16 or float32 (--dtype bfloat16)"


def request_name(request: EditRequest) -> str:
    """'Eiffel Tower -> Rome': how messages name a request."""
    return f"{request.subject!r} -> {request.target_new!r}"


@dataclass
class LossScale:
    """Dynamic loss scaling of a float16 backward pass: `value` multiplies the loss, `unscale` checks the gradient.

    value 1.0 means no scaling (float32 and bfloat16 models). After an overflow (a non-finite gradient) the
    step is redone with value / 16; after an underflow (an active request's gradient row exactly zero) with
    value x 16, unless that scale overflowed before or exceeds LARGEST_LOSS_SCALE: then a LocusError says
    which request cannot be optimized in float16.
    """

    value: float
    overflowed_at: float = math.inf  # the smallest scale that overflowed so far

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> LossScale:
        return cls(FLOAT16_LOSS_SCALE if dtype == torch.float16 else 1.0)

    def unscale(self, grad: torch.Tensor, active: torch.Tensor, requests: list[EditRequest]) -> torch.Tensor | None:
        """grad (n, d) / value, or None to redo the step at the new `value`; LocusError when no scale works."""
        if self.value == 1.0:
            return grad
        if not bool(torch.isfinite(grad).all()):
            self.overflowed_at = min(self.overflowed_at, self.value)
            self.value /= LOSS_SCALE_FACTOR
            if self.value < 1.0:
                raise LocusError(f"The float16 gradients of the target optimization overflow; {HALF_PRECISION_ADVICE}.")
            return None
        silent = [index for index in active.nonzero().squeeze(-1).tolist() if not bool(grad[index].any())]
        if silent:
            larger = self.value * LOSS_SCALE_FACTOR
            if larger < self.overflowed_at and larger <= LARGEST_LOSS_SCALE:
                self.value = larger
                return None
            names = ", ".join(request_name(requests[index]) for index in silent)
            raise LocusError(
                f"The float16 gradient of the target optimization underflows to zero for {names} (loss scale "
                f"{self.value:g}), so its change would stay zero; nothing was changed. To edit it, {HALF_PRECISION_ADVICE}."
            )
        return grad / self.value


@dataclass
class TargetResult:
    """z (n, d) at block `layer`, the unedited h (n, d), and per-request diagnostics."""

    layer: int
    targets: torch.Tensor
    hidden: torch.Tensor
    diagnostics: list[RequestDiagnostics]


# --- pure pieces --------------------------------------------------------------------------------


def adam_update(
    param: torch.Tensor, grad: torch.Tensor, state: dict, active: torch.Tensor, lr: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> None:
    """One Adam step (torch.optim.Adam's formula) on the rows of `param` (n, d) where `active` (n,) is True."""
    state["step"] = state.get("step", 0) + 1
    step = state["step"]
    exp_avg = state.setdefault("exp_avg", torch.zeros_like(param))
    exp_avg_sq = state.setdefault("exp_avg_sq", torch.zeros_like(param))
    rows = active.nonzero().squeeze(-1)
    g = grad[rows]
    exp_avg[rows] = exp_avg[rows] * betas[0] + g * (1 - betas[0])
    exp_avg_sq[rows] = exp_avg_sq[rows] * betas[1] + g * g * (1 - betas[1])
    bias1 = 1 - betas[0] ** step
    bias2 = 1 - betas[1] ** step
    denom = (exp_avg_sq[rows].sqrt() / math.sqrt(bias2)) + eps
    param[rows] = param[rows] - (lr / bias1) * exp_avg[rows] / denom


def clamp_rows(delta: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """`delta` (n, d) with every row's norm clamped to `limits` (n,)."""
    norms = delta.norm(dim=-1)
    scale = torch.where(norms > limits, limits / norms.clamp(min=1e-12), torch.ones_like(norms))
    return delta * scale.unsqueeze(-1)


def gradient_step_to(grad: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row of -grad (n, d) scaled to its length in `lengths` (n,): a first step straight down the gradient."""
    return -grad * (lengths / grad.norm(dim=-1).clamp(min=1e-12)).unsqueeze(-1)


def kl_divergence(original_log_probs: torch.Tensor, edited_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(original || edited) per row: (rows, vocab) log-probabilities -> (rows,)."""
    return (original_log_probs.exp() * (original_log_probs - edited_log_probs)).sum(-1)


def add_at(hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`hidden` (rows, q, d) with float32 `delta` (n, d) added at (rows, positions), rounded to hidden's dtype once."""
    rows, positions = rows.to(hidden.device), positions.to(hidden.device)
    values = (hidden[rows, positions].float() + delta.to(hidden.device)).to(hidden.dtype)
    return hidden.index_put((rows, positions), values)


def chunk_plan(loaded: LoadedModel, rows: list[PromptRow], count: int, settings: EditSettings, layer: int, engine: str) -> tuple[int, int]:
    """(requests per chunk, padded tokens per pass) for `count` requests: the settings' values on a CPU, what fits on a GPU."""
    shape = ModelShape.of(loaded)
    longest = max(len(row.ids) for row in rows)
    blocks = shape.layers - layer - 1 if engine == "cached" else shape.layers
    token_bytes = shape.training_token_bytes(max(blocks, 1), longest)
    passed = sum(len(row.ids) - (row.subject_last if engine == "cached" else 0) for row in rows)  # every row in one pass
    tokens = plan(loaded.device, token_bytes, default=max(settings.target_batch_tokens, longest), floor=longest, ceiling=passed)
    rows_per_request = -(-len(rows) // max(count, 1))
    request_bytes = rows_per_request * (longest * (shape.cache_token_bytes() + shape.hidden * shape.element) + 4 * shape.vocab)
    requests = plan(
        loaded.device, request_bytes, default=max(1, settings.target_batch_requests), ceiling=count,
        reserved=tokens * token_bytes,
    )
    return min(requests, count), tokens


# --- the optimization ---------------------------------------------------------------------------


def compute_targets(
    loaded: LoadedModel,
    requests: list[EditRequest],
    settings: EditSettings,
    prefixes: list[str],
    *,
    layer: int | None = None,
    engine: str = "cached",
    progress: Progress | None = None,
) -> TargetResult:
    """z for every request at block `layer` (default l_R), in chunks of requests sized by `chunk_plan`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    layer = settings.target_layer if layer is None else layer
    rows = target_rows(loaded.tokenizer, requests, prefixes, settings.kl_prompt)
    planned_requests, planned_tokens = chunk_plan(loaded, rows, len(requests), settings, layer, engine)
    what = f"optimizing the target vectors of {len(requests)} request(s)"
    chunk = ChunkSize(planned_requests, 1, what, "requests", loaded.device, MEMORY_ADVICE)
    passes = ChunkSize(planned_tokens, max(len(row.ids) for row in rows), what, "tokens", loaded.device, MEMORY_ADVICE)
    targets, hidden, diagnostics = [], [], []
    start = 0
    with loaded.lock:
        while start < len(requests):
            indices = list(range(start, min(start + chunk.size, len(requests))))
            chunk_rows = [row for row in rows if start <= row.request < indices[-1] + 1]
            chunk_rows = [PromptRow(row.request - start, *_rest(row)) for row in chunk_rows]

            chunk_progress = stage(progress, start / len(requests), (start + len(indices)) / len(requests))

            try:
                z, h, diag = _optimize_chunk(
                    loaded, [requests[i] for i in indices], chunk_rows, settings, layer, engine, chunk_progress, passes.size
                )
            except Exception as error:  # out of memory: halve the chunk and the passes, start the chunk again
                halved = chunk.size > chunk.floor
                if halved:
                    chunk.halve(error)
                if passes.size > passes.floor or not halved:
                    passes.halve(error)  # raises at the floor (and re-raises any other error)
                continue
            targets.append(z)
            hidden.append(h)
            diagnostics.extend(diag)
            start += len(indices)
    return TargetResult(layer, torch.cat(targets), torch.cat(hidden), diagnostics)


def _rest(row: PromptRow) -> tuple:
    return row.prefix, row.ids, row.subject_last, row.target_positions, row.target_ids


class _RowGroup:
    """Rows that go through the model together (similar lengths), with what the cached engine keeps of them."""

    def __init__(self, rows: list[int]):
        self.rows = rows
        self.position = {row: index for index, row in enumerate(rows)}
        self.prefix_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (rows, h, width, hd)
        self.prefix_mask: torch.Tensor | None = None  # (rows, width)
        self.base_hidden: torch.Tensor | None = None  # block `layer`'s unedited output at the suffix (rows, q, d)
        self.active: tuple[int, ...] = ()  # the rows `prefix` and `stub_cache` were made for
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # their prefix keys/values per layer
        self.stub_cache: DynamicCache | None = None  # the same as a cache, for the stubbed forward (never updated)

    def indices(self, active_rows: list[int], device: torch.device) -> torch.Tensor:
        """Where `active_rows` (chunk row numbers) sit in this group's kept tensors, (len(active_rows),)."""
        return torch.tensor([self.position[i] for i in active_rows], device=device)

    def active_prefix(self, active_rows: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Prefix keys/values of `active_rows` per layer; copied only when the set of active rows changes."""
        if self.prefix_cache is None:
            return None
        if tuple(active_rows) != self.active:
            if active_rows == self.rows:
                self.prefix = list(self.prefix_cache)
            else:
                select = self.indices(active_rows, self.prefix_cache[0][0].device)
                self.prefix = [  # each layer's keys/values on its own device (device_map="auto")
                    (keys[select.to(keys.device)], values[select.to(values.device)]) for keys, values in self.prefix_cache
                ]
            self.active, self.stub_cache = tuple(active_rows), None
        return self.prefix


class _Runner:
    """Evaluates the rows of a chunk with the chosen engine, a group of similar-length rows at a time.

    "full": every step runs each row from its first token through every block. "cached": positions before
    the subject's last token never change (delta enters there), and blocks 0..`layer` never change at any
    position (delta is added to block `layer`'s output), so once per chunk it keeps the prefix keys/values
    and block `layer`'s output at the suffix; every step then runs only blocks `layer`+1.. on the suffix.
    """

    def __init__(self, loaded: LoadedModel, rows: list[PromptRow], layer: int, engine: str, max_tokens: int):
        self.loaded, self.rows, self.layer, self.engine = loaded, rows, layer, engine
        self.cached = engine == "cached"
        self.fill = pad_id(loaded.tokenizer)
        self.returns_tuple = False
        lengths = [len(row.ids) - (row.subject_last if self.cached else 0) for row in rows]
        self.groups = [_RowGroup(batch) for batch in row_batches(lengths, max_rows=len(rows), max_tokens=max_tokens)]
        if self.cached:
            for group in self.groups:
                self._build_prefix_cache(group)
                self._build_base_hidden(group)

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.loaded.model.get_submodule(self.loaded.layout.blocks)

    def _build_prefix_cache(self, group: _RowGroup) -> None:
        """Keys/values of the group's tokens before each subject's last token (one pass, no gradient)."""
        rows = [self.rows[i] for i in group.rows]
        lengths = [row.subject_last for row in rows]
        width = max(lengths)
        if width == 0:
            return
        ids, _ = pad_right([list(row.ids[: row.subject_last]) or [self.fill] for row in rows], self.fill, self.loaded.device)
        # Mask every slot as real here: a row's real tokens come first and are causal, so padding after them
        # cannot change them, and no query is left with nothing to attend to (which would give NaN).
        cache = DynamicCache(config=self.loaded.model.config)
        with torch.no_grad():
            run_until(
                self.loaded, self.loaded.layout.num_layers - 1,
                input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True,
            )
        group.prefix_cache = [(keys.detach(), values.detach()) for keys, values, *_ in cache]
        group.prefix_mask = torch.zeros(len(rows), width, dtype=torch.long, device=ids.device)
        for index, length in enumerate(lengths):
            group.prefix_mask[index, :length] = 1

    def _suffix_inputs(self, group: _RowGroup, active_rows: list[int]) -> tuple[dict, list[int]]:
        """Model inputs for the active rows (no cache yet), and where each row starts.

        "full": each row from its first token. "cached": from its subject's last token, after a prefix
        (the mask covers the prefix, the positions continue it).
        """
        loaded, cached = self.loaded, self.cached
        rows = [self.rows[i] for i in active_rows]
        start = [row.subject_last if cached else 0 for row in rows]
        ids, mask = pad_right([list(row.ids[s:]) for row, s in zip(rows, start)], self.fill, loaded.device)
        inputs: dict = dict(input_ids=ids, use_cache=cached)
        if cached and group.prefix_cache is not None:
            inputs["attention_mask"] = torch.cat([group.prefix_mask[group.indices(active_rows, ids.device)], mask], dim=-1)
            offsets = torch.tensor(start, device=ids.device).unsqueeze(-1)
            inputs["position_ids"] = offsets + torch.arange(ids.shape[1], device=ids.device)
        else:
            inputs["attention_mask"] = mask
            if cached:  # no prefix anywhere: positions start at 0 as in the full engine
                inputs["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand(len(rows), -1)
        return inputs, start

    def _build_base_hidden(self, group: _RowGroup) -> None:
        """Block `layer`'s output at every suffix position of the group's rows, without any delta (no gradient)."""
        layout = self.loaded.layout
        inputs, _ = self._suffix_inputs(group, group.rows)
        prefix = group.active_prefix(group.rows)
        if prefix is not None:  # a fresh cache: the real blocks below append to it
            inputs[cache_argument(self.loaded.model)] = DynamicCache(ddp_cache_data=prefix, config=self.loaded.model.config)
        captured: dict[str, torch.Tensor] = {}

        def keep(module, args, output):
            captured["hidden"] = output_tensor(output).detach()

        def note_output_type(module, args, output):
            self.returns_tuple = isinstance(output, tuple)
            if self.layer == 0:
                keep(module, args, output)

        hooks = {layout.block(0): note_output_type}
        if self.layer != 0:
            hooks[layout.block(self.layer)] = keep
        with torch.no_grad(), forward_hooks(self.loaded.model, hooks):
            run_until(self.loaded, self.layer, **inputs)
        group.base_hidden = captured["hidden"]

    def row_log_probs(
        self, group: _RowGroup, active_rows: list[int], delta: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Log-probabilities at each active row's target positions (list of (positions, vocab)), and h (rows, d)."""
        rows = [self.rows[i] for i in active_rows]
        inputs, start = self._suffix_inputs(group, active_rows)
        ids = inputs["input_ids"]
        row_index = torch.arange(len(rows), device=ids.device)
        edit_positions = torch.tensor([row.subject_last - s for row, s in zip(rows, start)], device=ids.device)
        owners = torch.tensor([row.request for row in rows], device=ids.device)
        if self.cached:
            final, h = self._run_after_layer(group, active_rows, inputs, row_index, edit_positions, delta[owners])
        else:
            final, h = self._run_all_blocks(inputs, row_index, edit_positions, delta[owners])
        gather_rows, gather_positions, splits = [], [], []
        for index, (row, s) in enumerate(zip(rows, start)):
            positions = [p - s for p in row.target_positions]
            gather_rows.extend([index] * len(positions))
            gather_positions.extend(positions)
            splits.append(len(positions))
        states = final[torch.tensor(gather_rows, device=final.device), torch.tensor(gather_positions, device=final.device)]
        log_probs = torch.log_softmax(self.loaded.layout.final_logits(self.loaded.model, states).float(), dim=-1)
        return list(log_probs.split(splits)), h.float()

    def _run_all_blocks(
        self, inputs: dict, row_index: torch.Tensor, edit_positions: torch.Tensor, row_delta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's forward with delta added to block `layer`'s output: last block's output (rows, q, d), h (rows, d)."""
        layout = self.loaded.layout
        captured: dict[str, torch.Tensor] = {}

        def add_delta(module, args, output):
            hidden = output_tensor(output)
            captured["h"] = hidden[row_index.to(hidden.device), edit_positions.to(hidden.device)].detach()
            return replace_output_tensor(output, add_at(hidden, row_index, edit_positions, row_delta))

        def keep_last(module, args, output):
            captured["last"] = output_tensor(output)

        last_block = layout.block(layout.num_layers - 1)
        if last_block == layout.block(self.layer):
            def both(module, args, output):
                output = add_delta(module, args, output)
                keep_last(module, args, output)
                return output
            hooks = {last_block: both}
        else:
            hooks = {layout.block(self.layer): add_delta, last_block: keep_last}
        with forward_hooks(self.loaded.model, hooks):
            run_until(self.loaded, layout.num_layers - 1, **inputs)
        return captured["last"], captured["h"]

    def _run_after_layer(
        self, group: _RowGroup, active_rows: list[int], inputs: dict,
        row_index: torch.Tensor, edit_positions: torch.Tensor, row_delta: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks `layer`+1.. on the kept block-`layer` output plus delta: last block's output (rows, q, d), h (rows, d)."""
        width = inputs["input_ids"].shape[1]
        base = group.base_hidden[group.indices(active_rows, group.base_hidden.device), :width]
        h = base[row_index.to(base.device), edit_positions.to(base.device)]
        hidden = add_at(base, row_index, edit_positions, row_delta)
        num_layers = self.loaded.layout.num_layers
        if self.layer == num_layers - 1:
            return hidden, h
        model = self.loaded.model
        decoder = getattr(model, "base_model", model)
        selected = group.active_prefix(active_rows)
        if selected is None:
            stub_cache = new_dynamic_cache(model)
        else:
            if group.stub_cache is None:
                group.stub_cache = DynamicCache(ddp_cache_data=selected, config=model.config)
            stub_cache = group.stub_cache
        with torch.no_grad(), stubbed_blocks(self.blocks, self.returns_tuple) as calls:  # the blocks' arguments only
            decoder(**inputs, **{cache_argument(decoder): stub_cache})
        prefix = PrefixKeyValues()
        for layer in range(self.layer + 1, num_layers):
            keys, values = selected[layer] if selected is not None else (None, None)
            prefix.set(layer, keys, values)
            hidden = output_tensor(calls[layer].call(self.blocks[layer], hidden, prefix))
        return hidden, h


class _RowLosses:
    """The per-request losses of a chunk's rows at a delta, group by group (losses reach the host once per group)."""

    def __init__(self, runner: _Runner, rows: list[PromptRow], settings: EditSettings, target_ids: dict[int, torch.Tensor],
                 nll_rows: torch.Tensor, original_kl: dict[int, torch.Tensor], hidden: torch.Tensor):
        self.runner, self.rows, self.settings, self.target_ids = runner, rows, settings, target_ids
        self.nll_rows, self.original_kl, self.hidden = nll_rows, original_kl, hidden

    def evaluate(
        self, leaf: torch.Tensor, active: torch.Tensor, step: int, backward_scale: float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(NLL, KL, probability, prompts with the new object on top) per request (CPU float32).

        Back-propagates backward_scale x loss (None: no backward).

        At step 0 it records the unedited next-token distributions (KL rows) and h (the plain prompts' rows).
        """
        rows, settings, count = self.rows, self.settings, len(active)
        nll, kl, probability, on_top = torch.zeros(count), torch.zeros(count), torch.zeros(count), torch.zeros(count)
        for group in self.runner.groups:
            active_rows = [i for i in group.rows if active[rows[i].request]]
            if not active_rows:
                continue
            log_probs, h = self.runner.row_log_probs(group, active_rows, leaf)
            terms, values = [], []  # values: per row the KL, or the NLL and exp(-NLL), detached
            for index, row_index in enumerate(active_rows):
                row = rows[row_index]
                if row.is_kl:
                    if step == 0:
                        self.original_kl[row.request] = log_probs[index].detach()
                    divergence = kl_divergence(self.original_kl[row.request], log_probs[index]).sum()
                    values.append(divergence.detach())
                    terms.append(settings.kl_factor * divergence)
                else:
                    targets = self.target_ids[row_index].to(log_probs[index].device)  # the head's device (device_map)
                    row_nll = -log_probs[index].gather(-1, targets.unsqueeze(-1)).mean()
                    leads = (log_probs[index].detach().argmax(-1) == targets).all().float()
                    values += [row_nll.detach(), torch.exp(-row_nll.detach()), leads]
                    terms.append(row_nll / self.nll_rows[row.request])
                    if step == 0 and row.prefix == 0:
                        self.hidden[row.request] = h[index].to(self.hidden.device)
            if backward_scale is not None:
                total = torch.stack(terms).sum()
                (total * backward_scale if backward_scale != 1.0 else total).backward()
            on_host = iter(torch.stack(values).tolist())
            for row_index in active_rows:
                row = rows[row_index]
                if row.is_kl:
                    kl[row.request] += next(on_host)
                else:
                    nll[row.request] += next(on_host) / float(self.nll_rows[row.request])
                    probability[row.request] += next(on_host) / float(self.nll_rows[row.request])
                    on_top[row.request] += next(on_host)
        return nll, kl, probability, on_top


def _optimize_chunk(
    loaded: LoadedModel,
    requests: list[EditRequest],
    rows: list[PromptRow],
    settings: EditSettings,
    layer: int,
    engine: str,
    progress: Progress | None,
    max_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, list[RequestDiagnostics]]:
    """Optimize the deltas of one chunk of requests; each group of rows is run and back-propagated in turn.

    Losses go to the host once per group of rows (no synchronisation per row on a GPU).
    """
    count = len(requests)
    device = loaded.device
    runner = _Runner(loaded, rows, layer, engine, max_tokens)
    target_ids = {index: torch.tensor(row.target_ids, device=device) for index, row in enumerate(rows) if not row.is_kl}
    delta = torch.zeros(count, loaded.layout.hidden_size, device=device)
    hidden = torch.zeros(count, loaded.layout.hidden_size, device=device)
    original_kl: dict[int, torch.Tensor] = {}
    active = torch.ones(count, dtype=torch.bool)
    state: dict = {}
    diagnostics = [RequestDiagnostics(r.subject, r.target_new) for r in requests]
    nll_rows = torch.zeros(count)
    steps_on_top = [0] * count
    for row in rows:
        if not row.is_kl:
            nll_rows[row.request] += 1
    scale = LossScale.for_dtype(loaded.dtype)
    losses = _RowLosses(runner, rows, settings, target_ids, nll_rows, original_kl, hidden)
    for step in range(settings.steps):
        leaf = delta.clone().requires_grad_(True)
        will_update = step < settings.steps - 1
        while True:  # once, unless a float16 backward overflows or underflows: then again at another loss scale
            nll, kl, probability, on_top = losses.evaluate(leaf, active, step, scale.value if will_update else None)
            if leaf.grad is None:
                break
            unscaled = scale.unscale(leaf.grad, active, requests)
            if unscaled is not None:
                leaf.grad = unscaled
                break
            leaf.grad = None
        hidden_norms = hidden.norm(dim=-1).clamp(min=1e-12)
        decay = settings.weight_decay * leaf.norm(dim=-1) / hidden_norms**2
        loss = nll + settings.kl_factor * kl + decay.detach().cpu()
        finished = []
        for request in active.nonzero().squeeze(-1).tolist():
            diag = diagnostics[request]
            diag.losses.append(float(loss[request]))
            diag.nll.append(float(nll[request]))
            diag.kl.append(float(kl[request]))
            diag.final_probability = float(probability[request])
            if settings.early_stop_steps and float(on_top[request]) >= float(nll_rows[request]):
                steps_on_top[request] += 1  # ENCORE's MPES: the new object leads on every prompt
            if float(loss[request]) < settings.loss_stop or (settings.early_stop_steps and steps_on_top[request] >= settings.early_stop_steps):
                diag.converged = True
                finished.append(request)
            elif not will_update:
                finished.append(request)
        active[finished] = False
        if progress is not None:
            progress((step + 1) / settings.steps, f"target vectors: step {step + 1}/{settings.steps}, {int(active.sum())} of {count} still optimizing")
            safe_point(progress)  # between steps no hook is registered
        if not bool(active.any()):
            break
        still = active.to(device)
        (decay * still).sum().backward()
        with torch.no_grad():
            radius = settings.clamp_norm * hidden_norms
            if step == 0 and settings.first_step > 0:
                stepped = gradient_step_to(leaf.grad, settings.first_step * radius)
            else:
                adam_update(delta, leaf.grad, state, still, settings.lr)  # in place, on the active rows
                stepped = delta
            delta = torch.where(still.unsqueeze(-1), clamp_rows(stepped, radius), delta)
        for request in active.nonzero().squeeze(-1).tolist():
            diagnostics[request].steps += 1
    for request, diag in enumerate(diagnostics):
        diag.delta_norm = float(delta[request].norm())
        diag.hidden_norm = float(hidden[request].norm())
        if diag.steps and diag.delta_norm == 0.0:
            advice = f"; {HALF_PRECISION_ADVICE}" if loaded.dtype in (torch.float16, torch.bfloat16) else ""
            raise LocusError(f"The target optimization for {request_name(requests[request])} took {diag.steps} steps "
                             f"and its change is still zero (its gradient vanished); nothing was changed{advice}.")
    return (hidden + delta).detach().cpu().float(), hidden.detach().cpu().float(), diagnostics
