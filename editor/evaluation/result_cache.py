"""A resumable cache of many-item runs (single-mode evaluations, sweeps): one JSON line per finished item.

The driver appends each item's result as it arrives (flushed), so a run killed mid-way, rerun with the
same settings, reads the finished items back and computes only the rest. The file is named after a
hash of the run's settings (model, method settings, starting ledger, ...); each line holds one item's
key (a hash of the item itself) and its result. A torn last line is ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.distributed import WorkerPool, run_items
from core.embedded import cache_root
from core.progress import Progress, stage


def digest(payload: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


class ResultCache:
    """{item key: result dict} of one run's settings, read at start and appended to as items finish."""

    def __init__(self, path: Path | None):
        self.path = path  # None: a run that neither reads nor writes a cache
        self.results: dict[str, dict] = {}
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.results[str(entry["key"])] = dict(entry["result"])
                except (ValueError, KeyError, TypeError):
                    continue

    @classmethod
    def for_run(cls, kind: str, model: str, settings: dict, enabled: bool = True) -> ResultCache:
        """The cache of a `kind` run ("evaluate-single", "sweep") of `model` with these settings."""
        if not enabled:
            return cls(None)
        return cls(cache_root() / "runs" / model / f"{kind}-{digest(settings)}.jsonl")

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def __len__(self) -> int:
        return len(self.results)

    def get(self, key: str) -> dict | None:
        return self.results.get(key)

    def put(self, key: str, result: dict) -> None:
        """Remember one finished item (appended and flushed at once when the cache has a file)."""
        self.results[key] = result
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            torn = handle.tell() > 0 and (handle.seek(-1, 2), handle.read(1))[1] != b"\n"  # a line cut by a kill
            line = json.dumps({"key": key, "result": result}) + "\n"
            handle.write((("\n" if torn else "") + line).encode())
            handle.flush()


def compute_missing(
    work: Callable[[Any, Any, Any, Progress | None], Any],
    loaded: Any,
    items: list,
    todo: list[int],
    shared: Any,
    *,
    pool: WorkerPool | None,
    progress: Progress | None,
    span: tuple[float, float],
    message: str,
) -> Iterator[tuple[int, Any]]:
    """(index, work(loaded, shared, items[index], report)) for each index in `todo`: here, in order, or on `pool`, as
    they finish. Progress runs over `span`, counting the items not in `todo` as done; `message` is formatted with
    `finished` and `total` after each item (once the caller has handled it, e.g. cached it)."""
    low, high = span
    total = len(items)
    done = total - len(todo)

    def at(count: int) -> float:
        return low + (high - low) * count / total

    if pool is None:
        results = (
            (position, work(loaded, shared, items[index], stage(progress, at(done + position), at(done + position + 1))))
            for position, index in enumerate(todo)
        )
    else:
        results = run_items(work, [items[index] for index in todo], shared, pool=pool)
    for finished, (position, result) in enumerate(results, done + 1):
        yield todo[position], result
        if progress is not None:
            progress(at(finished), message.format(finished=finished, total=total))
