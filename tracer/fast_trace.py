"""The fast exact trace engine: the reference's numbers (within float rounding), many times faster.

Exact savings over the reference (one forward of samples + 1 rows per cell):
- the corrupted run is computed once; a cell restoring token t from layer s up only changes
  positions >= t in blocks >= s, so rows join the batch at their first restored block with the
  corrupted run's own block input, compute positions t..T-1 only, and attend to the corrupted
  run's keys/values of positions < t;
- cells at tokens before the subject equal `low` exactly; the LM head runs at the last position only;
- all cells of a token (every kind and layer) share one growing batch, chunked to bound memory
  (`core.memory` sizes the chunks from free memory; an out-of-memory error halves them and retries);
- scores leave the device once per chunk (no host synchronisation per cell);
- a head cell restores one head's slice of the attention output projection's input in one layer, at
  the last token (its rows compute that position only) or at every token from the subject on.

The corruption (noise, or swapped subject tokens) is the problem's (`TraceProblem.corrupt_` on the
corrupted rows' ids), and every score is `TraceProblem.metric_values` of the final logits.

The per-block call arguments (masks, rotary embeddings, position ids) are the model's own: its
forward runs once per token on `input_ids[:, t:]` over a prefix cache with every decoder block's
`forward` replaced by a stub that records its arguments (restored in `finally`).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, field

import torch

from core.block_calls import BlockCall, PrefixKeyValues, cache_argument, new_dynamic_cache, stubbed_blocks
from core.hooks import capture_inputs, forward_hooks, forward_pre_hooks, output_tensor, sequence_view
from core.kinds import HEADS
from core.loading import LoadedModel
from core.memory import ChunkSize, ModelShape, out_of_memory_as_error, plan
from tracer.problem import TraceProblem, window_layers

log = logging.getLogger(__name__)

CPU_TOKENS_PER_CHUNK = 6144  # rows x query positions per batched block call on CPU (larger runs no faster)
MIN_TOKENS_PER_CHUNK = 256
MEMORY_ADVICE = "Trace with fewer samples, fewer kinds at once, or a shorter prompt."


# --- cells -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One restoration: `kind` at `token`, window of layers [first, end) (hidden: first = end - 1 = layer).

    A head cell (kind "heads") restores `head` in `layer` at positions `token`.. (query position 0 on).
    """

    kind: str
    token: int
    layer: int
    first: int
    end: int
    head: int = -1

    @property
    def key(self) -> tuple[str, int, int]:
        """(kind, row, layer): the row is the token, or the head for head cells."""
        return self.kind, self.head if self.kind == HEADS else self.token, self.layer

    @property
    def start(self) -> int:
        """First block the cell's rows are computed in (a restored hidden state enters the next block)."""
        return self.end if self.kind == "hidden" else self.first


@dataclass
class Step:
    """A batch of cells of one token computed together (or filled without compute when `fill` is set)."""

    token: int
    cells: list[Cell]
    fill: str | None = None  # "low" or "clean": known without a forward pass
    work: float = 0.0

    def describe(self) -> str:
        kinds = "/".join(sorted({cell.kind for cell in self.cells}))
        if self.fill == "low":
            tokens = sorted({cell.token for cell in self.cells})
            where = f"token {tokens[0]}" if len(tokens) == 1 else f"tokens {tokens[0]}-{tokens[-1]}"
            return f"{where}: {len(self.cells)} {kinds} cells equal the corrupted run"
        if self.fill == "clean":
            return f"token {self.token}: the last layer's hidden state equals the clean run"
        if kinds == HEADS:
            return f"{len(self.cells)} single-head cells"
        return f"token {self.token}: {len(self.cells)} {kinds} cells"


def build_cells(kinds: tuple[str, ...], windows: dict[str, int], token: int, num_layers: int) -> list[Cell]:
    """Every (kind, layer) cell of `token`, sorted by the block where its rows start."""
    cells = []
    for kind in kinds:
        for layer in range(num_layers):
            restored = window_layers(layer, windows[kind], num_layers)
            cells.append(Cell(kind, token, layer, restored.start, restored.stop))
    return sorted(cells, key=lambda cell: (cell.start, cell.kind, cell.layer))


def fast_engine_supports(loaded: LoadedModel, length: int) -> bool:
    """False where a sliding-window cache would drop prefix keys (prompt longer than the window)."""
    window = getattr(loaded.model.config, "sliding_window", None)
    return not (isinstance(window, int) and 0 < window <= length)


def tokens_per_chunk(loaded: LoadedModel, kv_length: int) -> int:
    """Rows x query positions per batched block call, from free memory (on a CPU at most CPU_TOKENS_PER_CHUNK)."""
    unit = ModelShape.of(loaded).forward_token_bytes(kv_length)
    return plan(loaded.device, unit, default=CPU_TOKENS_PER_CHUNK, floor=MIN_TOKENS_PER_CHUNK)


# --- the engine --------------------------------------------------------------------------------

@dataclass
class CorruptedStates:
    """The corrupted run: block inputs (S, T, d) and attention keys/values (S, h, T, hd) per layer."""

    block_inputs: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    low: float
    returns_tuple: bool = False


@dataclass
class FastTracer:
    """Computes a trace step by step: `corrupted_run()`, then `run_step(step)` for each of `steps()`."""

    loaded: LoadedModel
    problem: TraceProblem
    corrupted: CorruptedStates | None = None
    work_done: float = 0.0
    work_total: float = 0.0
    _steps: list[Step] = field(default_factory=list)
    _calls_token: int = -1
    _calls: list[BlockCall] = field(default_factory=list)
    _cell_limit: int | None = None  # at most this many cells per block call after an out-of-memory error
    _block_work: float = 0.0  # work of the running step's finished block calls (finer progress)

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.loaded.model.get_submodule(self.loaded.layout.blocks)

    @torch.inference_mode()
    def corrupted_run(self) -> float:
        """Run the S corrupted rows once, keep block inputs and keys/values; returns low."""
        loaded, problem = self.loaded, self.problem
        model, layout = loaded.model, loaded.layout
        input_ids = problem.corruption.input_ids
        cache = new_dynamic_cache(model)
        recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        original_update = cache.update

        def recording_update(key_states, value_states, layer_idx, *args, **kwargs):
            keys, values = original_update(key_states, value_states, layer_idx, *args, **kwargs)
            recorded[layer_idx] = (keys, values)
            return keys, values

        cache.update = recording_update
        returns_tuple = []

        def corrupt(module, args, output):
            problem.corrupt_(output_tensor(output))
            return output

        def note_output_type(module, args, output):
            returns_tuple.append(isinstance(output, tuple))

        block_names = [layout.block(layer) for layer in range(layout.num_layers)]
        with forward_hooks(model, {layout.token_embedding: corrupt, block_names[0]: note_output_type}), capture_inputs(
            model, block_names
        ) as inputs, out_of_memory_as_error("running the corrupted prompt", loaded.device, MEMORY_ADVICE):
            logits = model(input_ids, use_cache=True, **{cache_argument(model): cache}).logits[:, -1]
        low = float(problem.metric_values(logits).mean())
        if len(recorded) != layout.num_layers:
            raise RuntimeError(f"the fast engine saw keys for {len(recorded)} of {layout.num_layers} layers")
        self.corrupted = CorruptedStates(
            block_inputs=[inputs[name] for name in block_names],
            keys=[recorded[layer][0] for layer in range(layout.num_layers)],
            values=[recorded[layer][1] for layer in range(layout.num_layers)],
            low=low,
            returns_tuple=bool(returns_tuple and returns_tuple[0]),
        )
        return low

    def steps(self) -> list[Step]:
        """The plan: constant cells (tokens before the subject, last-layer hidden), then batched chunks."""
        if self._steps:
            return self._steps
        problem, layers = self.problem, self.loaded.layout.num_layers
        settings = problem.settings
        kinds = settings.site_kinds
        windows = {kind: settings.window_for(kind) for kind in kinds}
        begin = problem.subject_range[0]
        length = problem.num_tokens
        steps: list[Step] = []
        before = [cell for token in range(begin) for cell in build_cells(kinds, windows, token, layers)]
        if before:
            steps.append(Step(token=0, cells=before, fill="low"))
        samples = problem.samples
        for token in range(begin, length):
            cells = build_cells(kinds, windows, token, layers)
            computed = [cell for cell in cells if cell.start < layers]
            for cell in cells:
                if cell.start >= layers:  # hidden state after the last block: only the last token matters
                    steps.append(Step(token=token, cells=[cell], fill="clean" if token == length - 1 else "low"))
            query = length - token
            per_chunk = max(1, tokens_per_chunk(self.loaded, length) // (samples * query))
            chunks = -(-len(computed) // per_chunk)
            for offset in range(chunks):  # strided, so every chunk grows alike through the layers
                chunk = computed[offset::chunks]
                work = float(sum(layers - cell.start for cell in chunk) * query * samples)
                steps.append(Step(token=token, cells=chunk, work=work))
        steps += self._head_steps()
        self.work_total = sum(step.work for step in steps) or 1.0
        self._steps = steps
        return steps

    def _head_steps(self) -> list[Step]:
        """Head cells (every layer x head), chunked: at the last token, or from the first subject token on
        (before the subject the corrupted run equals the clean one, so restoring there changes nothing)."""
        problem, layout = self.problem, self.loaded.layout
        if HEADS not in problem.settings.kinds:
            return []
        token = max(problem.head_positions().start, problem.subject_range[0])
        cells = [Cell(HEADS, token, layer, layer, layer + 1, head) for layer in range(layout.num_layers) for head in range(layout.num_heads)]
        query, samples = problem.num_tokens - token, problem.samples
        per_chunk = max(1, tokens_per_chunk(self.loaded, problem.num_tokens) // (samples * query))
        chunks = -(-len(cells) // per_chunk)
        steps = []
        for offset in range(chunks):
            chunk = cells[offset::chunks]
            steps.append(Step(token=token, cells=chunk, work=float(sum(layout.num_layers - cell.start for cell in chunk) * query * samples)))
        return steps

    def fraction_done(self) -> float:
        return min(1.0, (self.work_done + self._block_work) / self.work_total) if self.work_total else 0.0

    def run_step(self, step: Step) -> dict[tuple[str, int, int], float]:
        """Scores {(kind, token, layer): restored probability} of the step's cells."""
        parts = self.step_parts(step)
        while True:
            try:
                next(parts)
            except StopIteration as finished:
                return finished.value

    @torch.inference_mode()
    def step_parts(self, step: Step) -> Generator[int, None, dict[tuple[str, int, int], float]]:
        """`run_step` in parts: yields each block it has run, with none of the step's hooks on the model; returns the scores."""
        if self.corrupted is None:
            self.corrupted_run()
        if step.fill == "low":
            return {cell.key: self.corrupted.low for cell in step.cells}
        if step.fill == "clean":
            return {cell.key: self._last_hidden_score() for cell in step.cells}
        scores = yield from self._scores(step.token, step.cells)
        self.work_done += step.work
        self._block_work = 0.0
        return {cell.key: score for cell, score in zip(step.cells, scores)}

    def _scores(self, token: int, cells: list[Cell]) -> Generator[int, None, list[float]]:
        """Scores of `cells` in order, one device-to-host copy per block call; halved on out-of-memory errors."""
        limit = self._cell_limit or len(cells)
        pending = [cells[start : start + limit] for start in range(0, len(cells), limit)]
        scores: list[float] = []
        while pending:
            piece = pending.pop(0)
            try:
                scores.extend((yield from self._run_chunk(token, piece)).tolist())
            except Exception as error:  # an out-of-memory error halves the piece; ChunkSize re-raises the rest
                chunk = ChunkSize(len(piece), 1, f"tracing token {token}", "cells", self.loaded.device, MEMORY_ADVICE)
                chunk.halve(error)
                self._cell_limit = chunk.size
                pending[:0] = [piece[start : start + chunk.size] for start in range(0, len(piece), chunk.size)]
        return scores

    def _last_hidden_score(self) -> float:
        """Restoring the last block's output at the last token: the clean final state, for every sample."""
        layout = self.loaded.layout
        clean = self.problem.clean_states[layout.block(layout.num_layers - 1)][:, -1]
        return float(self.problem.metric_values(layout.final_logits(self.loaded.model, clean))[0])

    def block_calls(self, token: int) -> list[BlockCall]:
        """The model's own per-block arguments for query positions token..T-1 over a prefix of `token`."""
        if self._calls_token == token:
            return self._calls
        model = self.loaded.model
        prefix = new_dynamic_cache(model)
        if token > 0:
            for layer, (keys, values) in enumerate(zip(self.corrupted.keys, self.corrupted.values)):
                prefix.update(keys[:1, :, :token], values[:1, :, :token], layer)
        base = getattr(model, "base_model", model)
        with stubbed_blocks(self.blocks, self.corrupted.returns_tuple) as calls:
            base(self.problem.input_ids[:, token:], use_cache=True, **{cache_argument(base): prefix})
        missing = [index for index, call in enumerate(calls) if call is None]
        if missing:
            raise RuntimeError(f"blocks {missing} were not called by the model's forward")
        self._calls_token, self._calls = token, calls
        return calls

    def _run_chunk(self, token: int, cells: list[Cell]) -> Generator[int, None, torch.Tensor]:
        """Mean restored probability per cell (len(cells),), computing positions token.. from each cell's start.

        Yields after each block call: the hooks of a block are registered around its call only, so the
        model holds nothing of the chunk between two blocks (the batch lives here).
        """
        loaded, problem, corrupted = self.loaded, self.problem, self.corrupted
        model, layout = loaded.model, loaded.layout
        samples = problem.samples
        calls = self.block_calls(token)
        batch = BatchState(problem.num_tokens - token)
        rows = restoration_rows(cells, samples, layout.num_layers, loaded.device)
        hooks = restoration_hooks(layout, problem.clean_states, token, rows, batch)
        pre_hooks = head_restoration_hooks(layout, problem.clean_head_inputs, token, cells, samples, batch)
        cache = PrefixKeyValues()
        for layer in range(cells[0].start, layout.num_layers):
            joining = [cell for cell in cells[batch.cells :] if cell.start == layer]
            if joining:
                batch.join(self._joining_rows(token, layer, joining))
                batch.cells += len(joining)
            cache.set(
                layer,
                corrupted.keys[layer][:, :, :token].repeat(batch.cells, 1, 1, 1),
                corrupted.values[layer][:, :, :token].repeat(batch.cells, 1, 1, 1),
            )
            sites = block_sites(layout, layer)
            with forward_hooks(model, _within(hooks, sites)), forward_pre_hooks(model, _within(pre_hooks, sites)):
                batch.hidden = output_tensor(calls[layer].call(self.blocks[layer], batch.hidden, cache))
            self._block_work += batch.cells * samples * batch.query
            yield layer
        logits = layout.final_logits(model, batch.hidden[:, -1])
        return problem.metric_values(logits).view(len(cells), samples).mean(dim=1)

    def _joining_rows(self, token: int, layer: int, joining: list[Cell]) -> torch.Tensor:
        """Corrupted block-`layer` inputs at positions token.. for each joining cell (S rows each), (n*S, q, d).

        A hidden cell restoring block `layer - 1` joins here with the clean block output at position 0.
        """
        samples, layout = self.problem.samples, self.loaded.layout
        rows = self.corrupted.block_inputs[layer][:, token:].repeat(len(joining), 1, 1)
        for index, cell in enumerate(joining):
            if cell.kind == "hidden":
                restored = self.problem.clean_states[layout.block(cell.layer)][0, token]
                rows[index * samples : (index + 1) * samples, 0] = restored.to(rows.device)
        return rows


@dataclass
class BatchState:
    """The growing batch of one chunk: hidden states (rows, q, d) and how many cells have joined."""

    query: int
    hidden: torch.Tensor | None = None
    cells: int = 0

    @property
    def rows(self) -> int:
        return 0 if self.hidden is None else int(self.hidden.shape[0])

    def join(self, rows: torch.Tensor) -> None:
        self.hidden = rows if self.hidden is None else torch.cat([self.hidden.to(rows.device), rows])


def block_sites(layout, layer: int) -> set[str]:
    """Names of the modules of block `layer` that restoration hooks attach to."""
    heads = {layout.attention_output_projection(layer)} if layout.supports_heads else set()
    return {layout.site("mlp", layer), layout.site("attn", layer), *heads}


def _within(hooks: dict, names: set[str]) -> dict:
    return {name: hook for name, hook in hooks.items() if name in names}


def restoration_rows(
    cells: list[Cell], samples: int, layers: int, device: torch.device | None = None
) -> dict[str, list[torch.Tensor | None]]:
    """{kind: per layer, the batch rows whose mlp/attn output at query position 0 is restored (or None)}.

    The index tensors are views of one tensor copied to `device` once (not one copy per kind and layer).
    """
    row_index = torch.arange(len(cells) * samples).view(len(cells), samples)
    rows: dict[str, list[torch.Tensor | None]] = {kind: [None] * layers for kind in ("mlp", "attn")}
    pieces, spans, offset = [], {}, 0
    for kind in rows:
        for layer in range(layers):
            chosen = [index for index, cell in enumerate(cells) if cell.kind == kind and cell.first <= layer < cell.end]
            if chosen:
                pieces.append(row_index[chosen].reshape(-1))
                spans[(kind, layer)] = (offset, offset + pieces[-1].numel())
                offset += pieces[-1].numel()
    if pieces:
        flat = torch.cat(pieces)
        flat = flat.to(device) if device is not None else flat
        for (kind, layer), (start, end) in spans.items():
            rows[kind][layer] = flat[start:end]
    return rows


def restoration_hooks(layout, clean_states: dict[str, torch.Tensor], token: int, rows_by_kind, batch: BatchState) -> dict:
    """Forward hooks {module name: hook} that write the clean output of `token` into the restored rows."""

    def make_restore(name: str, rows: torch.Tensor):
        value = clean_states[name][0, token]

        def restore(module, args, output):
            states = sequence_view(output_tensor(output), batch.rows, batch.query)
            states[rows.to(states.device), 0] = value.to(states.device)
            return output

        return restore

    return {
        layout.site(kind, layer): make_restore(layout.site(kind, layer), rows)
        for kind, per_layer in rows_by_kind.items()
        for layer, rows in enumerate(per_layer)
        if rows is not None
    }


def head_restoration_hooks(layout, clean_inputs: dict[int, torch.Tensor], token: int, cells: list[Cell], samples: int,
                           batch: BatchState) -> dict:
    """Forward pre-hooks {attention output projection: hook} that write the clean slice of each head cell's head
    into its rows' projection input, at every query position (token..)."""
    row_index = torch.arange(len(cells) * samples).view(len(cells), samples)
    by_layer: dict[int, list[tuple[torch.Tensor, slice]]] = {}
    for index, cell in enumerate(cells):
        if cell.kind == HEADS:
            by_layer.setdefault(cell.layer, []).append((row_index[index], layout.head_slice(cell.head)))

    def make_restore(layer: int, chosen: list[tuple[torch.Tensor, slice]]):
        clean = clean_inputs[layer][0, token:]

        def restore(module, args):
            states = sequence_view(args[0], batch.rows, batch.query)
            for rows, columns in chosen:
                states[rows.to(states.device), :, columns] = clean[:, columns].to(states.device)

        return restore

    return {layout.attention_output_projection(layer): make_restore(layer, chosen) for layer, chosen in by_layer.items()}


def fast_scores(loaded: LoadedModel, problem: TraceProblem) -> tuple[float, dict[tuple[str, int, int], float]]:
    """(low, {(kind, token, layer): score}) for every cell of the problem, without streaming."""
    tracer = FastTracer(loaded, problem)
    with loaded.lock:
        low = tracer.corrupted_run()
        scores: dict[tuple[str, int, int], float] = {}
        for step in tracer.steps():
            scores.update(tracer.run_step(step))
    return low, scores

