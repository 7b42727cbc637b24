"""Many independent items (facts, records, sweep cells, corpus shards): here, in order, or on a pool of workers.

A work function `work(loaded, shared, item) -> result` is a module-level function, so that a worker
imports it by name; `shared` is what every item needs (settings, covariances, targets) and reaches each
worker once. `run_items` runs the items in this process, in order, or hands them to a pool
(`core.ray_pool.RayPool`: one model per worker) that yields (index, result) in order of completion.
A result depends on its item and `shared` only (seeds come from the item or the settings, never from
the worker), so any number of workers gives the numbers of one process; callers that reduce results
put them back in item order first (`in_item_order`, or by index).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from core.loading import LoadedModel, load_model

Work = Callable[[LoadedModel, Any, Any], Any]


@dataclass(frozen=True)
class ModelSpec:
    """What every worker loads: the driver's model spec, device type and dtype (a worker sees its own GPU as "cuda")."""

    spec: str
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, trust_remote_code: bool = False) -> ModelSpec:
        return cls(loaded.spec, loaded.device.type, str(loaded.dtype).replace("torch.", ""), trust_remote_code)

    @property
    def wants_gpu(self) -> bool:
        """True when the workers should each hold a GPU ("cuda", or "auto" on a cluster that has GPUs)."""
        return self.device.startswith("cuda")

    def load(self) -> LoadedModel:
        return load_model(self.spec, self.device, self.dtype, self.trust_remote_code)

    def to_dict(self) -> dict:
        return asdict(self)


class WorkerPool(Protocol):
    """Workers that each hold one model: `run` yields (index, result) as items finish, in any order."""

    workers: int

    def run(self, work: Work, items: Iterable, shared: Any = None, *, window: int | None = None) -> Iterator[tuple[int, Any]]:
        ...


def run_items(
    work: Work,
    items: Iterable,
    shared: Any = None,
    *,
    loaded: LoadedModel | None = None,
    pool: WorkerPool | None = None,
    window: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """(index, work(model, shared, item)) for every item: in this process on `loaded`, in order, or on `pool`.

    `window` (pool only) bounds how far dispatch runs ahead of the oldest unfinished item, which bounds
    what a caller must buffer to reduce results in item order.
    """
    if pool is not None:
        yield from pool.run(work, items, shared, window=window)
        return
    if loaded is None:
        raise ValueError("run_items needs a loaded model or a pool")
    for index, item in enumerate(items):
        yield index, work(loaded, shared, item)


def in_item_order(results: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """Reorder (index, result) pairs that arrive in any order into index order 0, 1, 2... (buffering the early ones)."""
    waiting: dict[int, Any] = {}
    expected = 0
    for index, result in results:
        waiting[index] = result
        while expected in waiting:
            yield expected, waiting.pop(expected)
            expected += 1
    if waiting:
        raise RuntimeError(f"results {sorted(waiting)[:5]} arrived without result {expected}")
