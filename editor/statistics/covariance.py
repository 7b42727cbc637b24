"""C_l = E[k k^T]: uncentred second moment of the MLP output projection's inputs over corpus tokens.

One pass over the corpus collects every requested layer (the forward stops after the last of them).
Keys are upcast to float32, products formed per batch of at most a few thousand tokens (sized by
`core.memory`; an out-of-memory error halves the batch and retries it) and summed in float64 on the
device the keys are on, whatever the model's dtype. The sums are cached per model (and dtype, when
not float32), layer, corpus hash and token budget as safetensors under
`core.embedded.cache_root()/covariance/`, written atomically; a running pass leaves a checkpoint
that a later call resumes, and a larger budget continues from the largest finished smaller one.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.distributed import WorkerPool, in_item_order, run_items
from core.embedded import cache_root
from core.errors import InputError
from core.facts import model_key
from core.hooks import capture_inputs, sequence_view
from core.loading import LoadedModel
from core.memory import ChunkSize, ModelShape, out_of_memory_as_error, plan
from core.progress import Progress, safe_point
from editor.passes.forward import pad_id, pad_right, run_until
from editor.statistics.corpus import WIKIPEDIA, Corpus, load_corpus

FORMAT = 1
GROUP_TOKENS = 16384  # at most this many tokens between checkpoint opportunities (at least 8 per pass)
BATCH_TOKENS = 2048  # padded tokens per forward pass on a CPU (a GPU takes what fits, up to a group)
MEMORY_ADVICE = "Use fewer layers at once, or a smaller corpus text length."
CHECKPOINT_SECONDS = 30.0
OUTLIER_RATIO = 10.0  # a layer whose largest eigenvalue is this many times the others' median is flagged
CONDITION_WARNING = 1e4


# --- pure math ----------------------------------------------------------------------------------


def add_second_moment(total: torch.Tensor, keys: torch.Tensor) -> None:
    """total (m, m) float64 += keys^T keys for keys (N, m) of any dtype; the product in float32 for N <= a few thousand."""
    keys = keys.float()
    total.add_(keys.T @ keys)  # float64 accumulation, without a float64 copy of the product


@dataclass
class CovarianceDiagnostics:
    """Spectrum summary of one layer's C (float64 eigenvalues)."""

    layer: int
    tokens: int
    largest_eigenvalue: float
    smallest_eigenvalue: float
    condition_number: float
    trace: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CovarianceDiagnostics:
        return cls(**data)


def spectrum_diagnostics(layer: int, tokens: int, covariance: torch.Tensor) -> CovarianceDiagnostics:
    """Largest/smallest eigenvalue and condition number of a symmetric (m, m) matrix."""
    values = torch.linalg.eigvalsh(covariance.double())
    largest, smallest = float(values[-1]), float(values[0])
    condition = largest / smallest if smallest > 0 else float("inf")
    return CovarianceDiagnostics(layer, tokens, largest, smallest, condition, float(values.sum()))


def covariance_warnings(diagnostics: list[CovarianceDiagnostics]) -> list[str]:
    """Plain-language warnings for layers of R whose key statistics stand out (outlier direction, ill-conditioning)."""
    warnings = []
    largest = sorted(d.largest_eigenvalue for d in diagnostics)
    median = largest[len(largest) // 2] if largest else 0.0
    for item in diagnostics:
        others = [d.largest_eigenvalue for d in diagnostics if d.layer != item.layer]
        reference = sorted(others)[len(others) // 2] if others else median
        if others and reference > 0 and item.largest_eigenvalue >= OUTLIER_RATIO * reference:
            warnings.append(
                f"Layer {item.layer}: the MLP keys have an outlier direction (largest eigenvalue of C "
                f"{item.largest_eigenvalue:.3g}, about {item.largest_eigenvalue / reference:.0f}x the other layers' "
                f"{reference:.3g}; condition number {item.condition_number:.2g}). Updates there are steered away "
                f"from that direction; if edits leak into unrelated facts, try a range without layer {item.layer}."
            )
        elif item.condition_number >= CONDITION_WARNING:
            warnings.append(
                f"Layer {item.layer}: C is ill-conditioned (condition number {item.condition_number:.2g}); "
                "the float64 solve handles it, but the update may be sensitive to lambda."
            )
    return warnings


# --- state and cache files ----------------------------------------------------------------------


@dataclass
class MomentState:
    """Running sums for some layers: texts before `next_text` are done, plus `skip` tokens of that text."""

    sums: dict[int, torch.Tensor]
    tokens: int = 0
    next_text: int = 0
    skip: int = 0
    seconds: float = 0.0

    def position(self) -> tuple[int, int, int]:
        return self.tokens, self.next_text, self.skip


@dataclass(frozen=True)
class CovarianceKey:
    """Identifies one cached statistic."""

    model: str
    corpus: str
    layer: int
    tokens: int

    def folder(self) -> Path:
        return cache_root() / "covariance" / self.model / self.corpus

    def path(self, partial: bool = False) -> Path:
        return self.folder() / f"layer{self.layer:03d}-tokens{self.tokens}{'.partial' if partial else ''}.safetensors"


def _write(path: Path, tensor: torch.Tensor, metadata: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(handle)
    try:
        save_file({"sum": tensor.detach().cpu().contiguous()}, temporary, metadata={k: str(v) for k, v in metadata.items()})
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _read(path: Path) -> tuple[torch.Tensor, dict] | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if int(metadata.get("format", -1)) != FORMAT:
                return None
            return handle.get_tensor("sum"), metadata
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def _metadata(key: CovarianceKey, state: MomentState, corpus: Corpus, loaded: LoadedModel, done: bool) -> dict:
    return {
        "format": FORMAT,
        "model": key.model,
        "model_name": loaded.name,
        "layer": key.layer,
        "corpus": corpus.name,
        "corpus_hash": corpus.digest,
        "budget": key.tokens,
        "tokens": state.tokens,
        "next_text": state.next_text,
        "skip": state.skip,
        "seconds": round(state.seconds, 3),
        "complete": int(done),
    }


# --- collection ---------------------------------------------------------------------------------


def _text_windows(loaded: LoadedModel, corpus: Corpus, state: MomentState, budget: int) -> Iterator[list[tuple[int, list[int], int, int]]]:
    """Groups of (text index, ids, first counted position, end) covering the next tokens up to `budget`."""
    tokenizer = loaded.tokenizer
    limit = loaded.max_length
    tokens, index, skip = state.tokens, state.next_text, state.skip
    group_size = min(GROUP_TOKENS, max(256, budget // 8))
    available = corpus.statistics_texts  # the held-out texts at the end are never read (they measure perplexity)
    while tokens < budget and index < available:
        group, group_tokens = [], 0
        while tokens < budget and index < available and group_tokens < group_size:
            ids = list(tokenizer(corpus.texts[index])["input_ids"])[:limit]
            end = min(len(ids), skip + (budget - tokens))
            if end > skip:
                group.append((index, ids, skip, end))
                tokens += end - skip
                group_tokens += end - skip
            if end < len(ids):  # the budget ran out inside this text
                skip = end
                break
            index, skip = index + 1, 0
        if not group:
            return
        yield group


@torch.inference_mode()
def collect_second_moments(
    loaded: LoadedModel,
    corpus: Corpus,
    layers: list[int],
    budget: int,
    state: MomentState | None = None,
    progress: Progress | None = None,
    checkpoint: Callable[[MomentState], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    pool: WorkerPool | None = None,
) -> MomentState:
    """Sum of k k^T over `budget` corpus tokens for every layer in one pass (continuing `state`; groups on `pool`'s workers)."""
    layout = loaded.layout
    size = layout.mlp_size
    state = state or MomentState({layer: torch.zeros(size, size, dtype=torch.float64, device=loaded.device) for layer in layers})
    names = {layer: layout.mlp_output_projection(layer) for layer in layers}
    started, start_tokens, start_seconds = time.perf_counter(), state.tokens, state.seconds
    last_checkpoint = started
    for group in _summed_groups(loaded, corpus, state, budget, names, pool):
        _advance(state, group)
        elapsed = time.perf_counter() - started
        state.seconds = start_seconds + elapsed
        if checkpoint is not None and state.tokens < budget and time.perf_counter() - last_checkpoint >= checkpoint_seconds:
            checkpoint(state)
            last_checkpoint = time.perf_counter()
        if progress is not None:
            rate = (state.tokens - start_tokens) / max(elapsed, 1e-9)
            left = (budget - state.tokens) / rate if rate > 0 else float("nan")
            progress(state.tokens / budget, f"covariance: {state.tokens:,}/{budget:,} tokens, about {left:.0f} s left")
            safe_point(progress)  # between groups no hook is registered
    return state


def _summed_groups(loaded: LoadedModel, corpus: Corpus, state: MomentState, budget: int, names: dict[int, str],
                   pool: WorkerPool | None) -> Iterator[list]:
    """Each next group of windows once its k^T k is in state.sums: summed here, or on a worker and added in corpus order.

    A worker's group sum starts from zero, so the driver adds float64 sums of float32 products in a different
    grouping than one process does; that is exact while an entry's terms span less than 2^29 (53 - 24 bits),
    which the tests check, and otherwise differs by float64 rounding (~1e-16 relative).
    """
    if pool is None:
        chunk = _batch_chunk(loaded, len(names), budget)  # one for the pass: a halving holds for the later groups
        for group in _text_windows(loaded, corpus, state, budget):
            add_group(loaded, group, names, state.sums, chunk)
            yield group
        return
    groups: dict[int, list] = {}

    def windows() -> Iterator[list]:
        for index, group in enumerate(_text_windows(loaded, corpus, state, budget)):
            groups[index] = group
            yield group

    window = 2 * pool.workers + 2  # group sums buffered until the earlier ones arrive: at most this many
    for index, sums in in_item_order(run_items(shard_second_moments, windows(), sorted(names), pool=pool, window=window)):
        for layer, total in sums.items():
            state.sums[layer] += total.to(state.sums[layer].device)
        yield groups.pop(index)


def shard_second_moments(loaded: LoadedModel, layers: list[int], group: list) -> dict[int, torch.Tensor]:
    """{layer: k^T k (m, m) float64} over one group of (text, ids, first, end) windows, from zero (a worker's item)."""
    layout = loaded.layout
    names = {layer: layout.mlp_output_projection(layer) for layer in layers}
    sums = {layer: torch.zeros(layout.mlp_size, layout.mlp_size, dtype=torch.float64) for layer in layers}
    with loaded.lock, torch.inference_mode():
        add_group(loaded, group, names, sums)
    return sums


def add_group(loaded: LoadedModel, group: list, names: dict[int, str], sums: dict[int, torch.Tensor],
              chunk: ChunkSize | None = None) -> None:
    """sums[layer] += k^T k over one group of (text, ids, first, end) windows, in batches of similar length.

    An out-of-memory error in a batch's forward halves `chunk` and retries that batch (nothing was added yet);
    the sums move to the device of their layer's keys.
    """
    chunk = chunk or _batch_chunk(loaded, len(names), GROUP_TOKENS)
    fill, last_layer = pad_id(loaded.tokenizer), max(names)
    pending = token_batches(sorted(group, key=lambda item: len(item[1])), chunk.size)
    while pending:
        batch = pending.pop(0)
        try:
            keys = _batch_keys(loaded, batch, names, fill, last_layer)
        except Exception as error:  # out of memory in the forward: nothing was added yet; halve and retry
            chunk.halve(error, smallest=f"one text of {len(batch[0][1])} tokens" if len(batch) == 1 else None)
            pending[:0] = token_batches(batch, chunk.size)
            continue
        with out_of_memory_as_error(chunk.what, loaded.device, MEMORY_ADVICE):
            for layer, layer_keys in keys.items():
                if sums[layer].device != layer_keys.device:
                    sums[layer] = sums[layer].to(layer_keys.device)
                add_second_moment(sums[layer], layer_keys)
        del keys


def _advance(state: MomentState, group: list) -> None:
    """Move `state`'s position past a group that was added to its sums."""
    last = max(group, key=lambda entry: (entry[0], entry[3]))
    finished_text = last[3] >= len(last[1])
    state.next_text, state.skip = (last[0] + 1, 0) if finished_text else (last[0], last[3])
    state.tokens += sum(end - first for _, _, first, end in group)


def batch_tokens(loaded: LoadedModel, layers: int, budget: int) -> int:
    """Padded tokens per forward pass: BATCH_TOKENS on a CPU (less where RAM is short), what fits on a GPU."""
    shape = ModelShape.of(loaded)
    kv_length = min(loaded.max_length, 1024)
    unit = shape.forward_token_bytes(kv_length) + layers * shape.mlp * shape.element + 4 * shape.mlp
    sums = layers * shape.mlp**2 * 8
    return plan(loaded.device, unit, default=BATCH_TOKENS, floor=64, ceiling=max(GROUP_TOKENS, budget), reserved=sums)


def _batch_chunk(loaded: LoadedModel, layers: int, budget: int) -> ChunkSize:
    """The batch size of a covariance pass, halved by out-of-memory errors."""
    return ChunkSize(batch_tokens(loaded, layers, budget), 1, f"collecting covariance statistics of {layers} layer(s)",
                     "tokens", loaded.device, MEMORY_ADVICE)


def token_batches(items: list, limit: int) -> list[list]:
    """Consecutive items (text index, ids, first, end) in batches of at most `limit` padded tokens (one item at least)."""
    batches, batch = [], []
    for item in items:
        width = max([len(entry[1]) for entry in batch] + [len(item[1])])
        if batch and width * (len(batch) + 1) > limit:
            batches.append(batch)
            batch = []
        batch.append(item)
    if batch:
        batches.append(batch)
    return batches


def _batch_keys(loaded: LoadedModel, batch: list, names: dict[int, str], fill: int, last_layer: int) -> dict[int, torch.Tensor]:
    """The counted tokens' keys (N, m) per layer, on the device of that layer (one forward, no state changed)."""
    ids, attention = pad_right([entry[1] for entry in batch], fill, loaded.device)
    counted = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    for row, (_, _, first, end) in enumerate(batch):
        counted[row, first:end] = True
    with capture_inputs(loaded.model, list(names.values())) as inputs:
        run_until(loaded, last_layer, input_ids=ids, attention_mask=attention, use_cache=False)
    keys = {}
    for layer, name in names.items():
        tensor = sequence_view(inputs[name], ids.shape[0], ids.shape[1])
        keys[layer] = tensor[counted.to(tensor.device)]
    return keys


# --- cached statistics --------------------------------------------------------------------------

_MEMORY: dict[CovarianceKey, tuple[torch.Tensor, CovarianceDiagnostics]] = {}
_MEMORY_LOCK = threading.Lock()
_MEMORY_LIMIT = 16


@dataclass
class CovarianceSet:
    """C for each layer, (m, m) float64, with its diagnostics and where it came from."""

    covariances: dict[int, torch.Tensor]
    diagnostics: dict[int, CovarianceDiagnostics]
    corpus: dict = field(default_factory=dict)
    computed_layers: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def warnings(self) -> list[str]:
        return covariance_warnings([self.diagnostics[layer] for layer in sorted(self.diagnostics)])


def layer_covariances(
    loaded: LoadedModel,
    layers: list[int],
    tokens: int,
    corpus: str | Corpus = WIKIPEDIA,
    progress: Progress | None = None,
    use_cache: bool = True,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    pool: WorkerPool | None = None,
) -> CovarianceSet:
    """C_l for `layers` over `tokens` corpus tokens: from memory, the disk cache, or one pass (on `pool` if given) for the missing ones."""
    started = time.perf_counter()
    use_cache = use_cache and not loaded.edits_applied  # C of edited weights is no statistic of the model's
    corpus = load_corpus(corpus) if isinstance(corpus, str) else corpus
    model = statistics_key(loaded)
    keys = {layer: CovarianceKey(model, corpus.digest, layer, int(tokens)) for layer in sorted(set(layers))}
    result: dict[int, torch.Tensor] = {}
    diagnostics: dict[int, CovarianceDiagnostics] = {}
    missing = []
    for layer, key in keys.items():
        found = _lookup(key) if use_cache else None
        if found is None:
            missing.append(layer)
        else:
            result[layer], diagnostics[layer] = found
    if missing:
        with loaded.lock:
            for start, group in _starting_points(loaded, corpus, [keys[layer] for layer in missing], use_cache):
                state = collect_second_moments(
                    loaded, corpus, [key.layer for key in group], int(tokens), start, progress,
                    checkpoint=(lambda s, g=group: _save_all(g, s, corpus, loaded, done=False)) if use_cache else None,
                    checkpoint_seconds=checkpoint_seconds, pool=pool,
                )
                if state.tokens == 0:
                    raise InputError(f"The corpus {corpus.name!r} produced no tokens.")
                for key in group:
                    covariance = state.sums[key.layer] / state.tokens
                    diag = spectrum_diagnostics(key.layer, state.tokens, covariance)  # on the device of the sums
                    covariance = covariance.cpu()  # kept in RAM; moved to a layer's device for its solve
                    if use_cache:
                        _save_final(key, state, corpus, loaded, diag)
                    _remember(key, covariance, diag)
                    result[key.layer], diagnostics[key.layer] = covariance, diag
    if progress is not None:
        progress(1.0, "covariance statistics ready")
    return CovarianceSet(result, diagnostics, corpus.describe(), missing, time.perf_counter() - started)


def statistics_key(loaded: LoadedModel) -> str:
    """The cache key of a model's statistics: its model key, plus the dtype when that is not float32."""
    key = model_key(loaded)
    return key if loaded.dtype == torch.float32 else f"{key}-{str(loaded.dtype).removeprefix('torch.')}"


def _lookup(key: CovarianceKey) -> tuple[torch.Tensor, CovarianceDiagnostics] | None:
    with _MEMORY_LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    found = _read(key.path())
    if found is None:
        return None
    total, metadata = found
    if metadata.get("complete") != "1" or "diagnostics" not in metadata:
        return None
    covariance = total / int(metadata["tokens"])
    diag = CovarianceDiagnostics.from_dict(json.loads(metadata["diagnostics"]))
    _remember(key, covariance, diag)
    return covariance, diag


def _remember(key: CovarianceKey, covariance: torch.Tensor, diag: CovarianceDiagnostics) -> None:
    with _MEMORY_LOCK:
        if len(_MEMORY) >= _MEMORY_LIMIT:
            _MEMORY.pop(next(iter(_MEMORY)))
        _MEMORY[key] = (covariance, diag)


def _starting_points(
    loaded: LoadedModel, corpus: Corpus, keys: list[CovarianceKey], use_cache: bool
) -> list[tuple[MomentState | None, list[CovarianceKey]]]:
    """Group the missing layers by where their pass can start (a checkpoint, a smaller finished budget, or 0)."""
    groups: dict[tuple, tuple[MomentState | None, list[CovarianceKey]]] = {}
    for key in keys:
        start = _best_start(key) if use_cache else None
        position = start.position() if start else (0, 0, 0)
        if position in groups:
            state, members = groups[position]
            if state is not None and start is not None:
                state.sums.update(start.sums)
            members.append(key)
        else:
            groups[position] = (start, [key])
    return [groups[position] for position in sorted(groups)]


def _best_start(key: CovarianceKey) -> MomentState | None:
    """The furthest usable state for `key`: its own checkpoint, else the largest finished smaller budget."""
    candidates = [key.path(partial=True)]
    folder = key.folder()
    if folder.is_dir():
        prefix = f"layer{key.layer:03d}-tokens"
        smaller = []
        for path in folder.glob(f"{prefix}*.safetensors"):
            stem = path.name[len(prefix) : -len(".safetensors")]
            if stem.isdigit() and int(stem) < key.tokens:
                smaller.append((int(stem), path))
        candidates += [path for _, path in sorted(smaller, reverse=True)]
    best = None
    for path in candidates:
        found = _read(path)
        if found is None:
            continue
        total, metadata = found
        state = MomentState(
            {key.layer: total.double()}, int(metadata["tokens"]), int(metadata["next_text"]), int(metadata["skip"]),
            float(metadata.get("seconds", 0.0)),
        )
        if state.tokens <= key.tokens and (best is None or state.tokens > best.tokens):
            best = state
    return best


def _save_all(keys: list[CovarianceKey], state: MomentState, corpus: Corpus, loaded: LoadedModel, done: bool) -> None:
    for key in keys:
        _write(key.path(partial=True), state.sums[key.layer], _metadata(key, state, corpus, loaded, done))


def _save_final(key: CovarianceKey, state: MomentState, corpus: Corpus, loaded: LoadedModel, diag: CovarianceDiagnostics) -> None:
    metadata = _metadata(key, state, corpus, loaded, done=True)
    metadata["diagnostics"] = json.dumps(diag.to_dict())
    _write(key.path(), state.sums[key.layer], metadata)
    partial = key.path(partial=True)
    if partial.exists():
        partial.unlink(missing_ok=True)


def cached_diagnostics(loaded: LoadedModel, layers: list[int], tokens: int, corpus: str | Corpus = WIKIPEDIA) -> dict[int, CovarianceDiagnostics]:
    """Diagnostics of the layers whose statistics are already cached (nothing is computed)."""
    corpus = load_corpus(corpus) if isinstance(corpus, str) else corpus
    found = {}
    for layer in layers:
        item = _lookup(CovarianceKey(statistics_key(loaded), corpus.digest, layer, int(tokens)))
        if item is not None:
            found[layer] = item[1]
    return found
