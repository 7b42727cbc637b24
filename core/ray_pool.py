"""A pool of Ray actors, each holding one model, that runs `core.distributed` work items and streams results back.

`RayPool(model, workers=N)` starts a local Ray cluster on loopback (no dashboard, no usage report) and
stops it on close; `RayPool(model, address="auto" | "host:port" | "ray://host:10001")` joins an existing
cluster and leaves it running. Each worker is one actor: one GPU, or on CPU its share of the cores
(`torch.set_num_threads`), and it loads the model once. `run` feeds items (two per worker, so none
waits for the driver) and yields (index, result) as they finish. A worker that dies (its process
killed, its node lost) has its items given to the others, and a replacement is started; an item
that keeps killing workers stops the run with an error. Faults are retried here, not by Ray
(max_restarts=0, max_task_retries=0), so the driver always knows which items are done.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before Ray is imported: no usage report, and a cluster started here uses the loopback address
# (Ray's switch for this is named after Windows/macOS, where it is the default).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402

from core.distributed import ModelSpec, Work  # noqa: E402
from core.errors import InputError, LocusError  # noqa: E402
from core.progress import Progress  # noqa: E402

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("core", "tracer", "editor")  # what a worker imports; sent to a cluster's nodes with each job
DEPTH = 2  # items in flight per worker: one running, one waiting
MAX_ATTEMPTS = 3  # an item whose worker died this many times stops the run
START_TIMEOUT_S = 900.0
POLL_S = 1.0
RELEASE_WAIT_S = 15.0

# Failures of a worker or its node (not of the work): the item is retried on another worker.
WORKER_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
                   ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)


class WorkerError(LocusError):
    """The workers could not start or could not finish the items."""


@ray.remote(max_restarts=0, max_task_retries=0)
class ModelWorker:
    """One worker: the model loaded once, the shared object of each running job, and items run one at a time."""

    def __init__(self, model: ModelSpec, threads: int):
        if threads > 0:
            torch.set_num_threads(threads)
        self.error = ""
        self.loaded = None
        self.shared: dict[str, Any] = {}
        try:
            self.loaded = model.load()
        except LocusError as error:  # reported by describe(), so the driver shows the user's message
            self.error = str(error)

    def describe(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "threads": torch.get_num_threads(), "error": self.error,
                "device": str(self.loaded.device) if self.loaded is not None else ""}

    def share(self, job: str, value: Any) -> None:
        self.shared[job] = value

    def forget(self, job: str) -> None:
        self.shared.pop(job, None)

    def run(self, work: Work, job: str, item: Any) -> Any:
        return work(self.loaded, self.shared[job], item)


@dataclass
class _Slot:
    """A worker as the driver sees it."""

    actor: Any
    number: int
    info: dict = field(default_factory=dict)
    jobs: set[str] = field(default_factory=set)  # the jobs whose shared object it holds
    in_flight: int = 0
    alive: bool = True


def validate_pool_arguments(workers: int | None, address: str | None, device: str = "auto") -> None:
    """Bounds of --workers/--ray, checked before any model load or cluster start."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"--workers must be a whole number >= 1, got {workers!r}.")
    if address is not None and not address.strip():
        raise InputError("--ray needs a cluster address: auto, host:port, or ray://host:10001.")
    if address is None and workers is not None:
        local_gpus = torch.cuda.device_count() if device != "cpu" else 0
        if local_gpus and workers > local_gpus:
            raise InputError(f"--workers {workers}: this machine has {local_gpus} GPU(s), one per worker (--ray joins a cluster).")
        cores = os.cpu_count() or 1
        if not local_gpus and workers > cores:
            raise InputError(f"--workers {workers}: this machine has {cores} CPU core(s), give at most {cores} "
                             "(or --ray ADDRESS to use a cluster).")


def start_local_cluster(cpus: int | None = None, gpus: int = 0) -> str:
    """Start Ray in this process on loopback (all cores by default; no dashboard, no usage report); its address."""
    context = ray.init(num_cpus=cpus or os.cpu_count() or 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                       configure_logging=False)
    return context.address_info["gcs_address"]


class RayPool:
    """Workers that each hold the model of `model`; use as a context manager (or call close())."""

    def __init__(
        self,
        model: ModelSpec,
        workers: int | None = None,
        address: str | None = None,
        threads: int | None = None,
        progress: Progress | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ):
        validate_pool_arguments(workers, address, model.device)
        if address is None and workers is None:
            raise InputError("Give --workers N for a local Ray cluster, or --ray ADDRESS for an existing one.")
        self.model = model
        self.address = address
        self.owns_ray = False
        self.slots: list[_Slot] = []
        self.starting: dict[Any, _Slot] = {}  # replacement workers whose model is still loading
        self.retried = 0  # items given to another worker after theirs died
        self.replaced = 0
        self._jobs = 0
        self._numbers = 0
        self._lock = threading.RLock()  # runs in several threads (the app) share the slots
        try:
            self._connect(workers)
            self.workers, self.gpus, self.threads, cpus = self._plan(workers, threads)
            self._options = {"num_gpus": 1, "num_cpus": 1} if self.gpus else {"num_cpus": cpus}
            self._start(progress, start_timeout)
        except BaseException:
            self.close()
            raise

    # --- cluster ---------------------------------------------------------------------------------

    def _connect(self, workers: int | None) -> None:
        if ray.is_initialized():  # a cluster this process already uses (a notebook, the test session)
            return
        if self.address is None:
            start_local_cluster(gpus=torch.cuda.device_count() if self.model.device != "cpu" else 0)
        else:
            runtime = {"py_modules": [str(ROOT / name) for name in CODE_PACKAGES],
                       "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}}
            try:
                ray.init(address=self.address, runtime_env=runtime, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as error:
                raise WorkerError(f"Cannot join the Ray cluster at {self.address!r}: {_first_line(error)}") from None
        self.owns_ray = True

    def _plan(self, workers: int | None, threads: int | None) -> tuple[int, bool, int, int]:
        """(workers, one GPU each?, torch threads per worker, CPUs each) from the cluster's free resources."""
        deadline = time.monotonic() + RELEASE_WAIT_S
        while True:  # a pool closed just before gives its resources back within a moment
            free = ray.available_resources()
            free_cpus, free_gpus = int(free.get("CPU", 0)), int(free.get("GPU", 0))
            wanted = (workers or 1) * (1 if self.model.device != "cpu" and free_gpus else (threads or 1))
            if free_gpus >= wanted or free_cpus >= wanted or time.monotonic() > deadline:
                break
            time.sleep(POLL_S / 5)
        if self.model.wants_gpu and not int(ray.cluster_resources().get("GPU", 0)):
            raise InputError(f"--device {self.model.device} was asked for, but the Ray cluster has no GPU.")
        if self.model.device != "cpu" and free_gpus > 0:
            count = workers or free_gpus
            if count > free_gpus:
                raise InputError(f"--workers {count}: the cluster has {free_gpus} free GPU(s), one per worker.")
            return count, True, threads or 1, 1
        nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        count = workers or nodes
        cpus = threads or max(1, free_cpus // count)  # each worker's share of the free cores
        if count * cpus > free_cpus:
            raise InputError(f"--workers {count} with {cpus} core(s) each: the cluster has {free_cpus} free CPU core(s).")
        return count, False, cpus, cpus

    def _new_slot(self) -> _Slot:
        self._numbers += 1
        actor = ModelWorker.options(**self._options).remote(self.model, self.threads)
        return _Slot(actor, self._numbers)

    def _start(self, progress: Progress | None, timeout: float) -> None:
        pending = {}
        for _ in range(self.workers):
            slot = self._new_slot()
            pending[slot.actor.describe.remote()] = slot
        started = time.perf_counter()
        try:
            while pending:
                if progress is not None:
                    ready_count = self.workers - len(pending)
                    progress(ready_count / self.workers, f"{ready_count} of {self.workers} worker(s) ready (each loads the model)")
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for reference in ready:
                    slot = pending.pop(reference)
                    slot.info = self._describe(reference)
                    self.slots.append(slot)
                if pending and time.perf_counter() - started > timeout:
                    raise WorkerError(
                        f"Only {len(self.slots)} of {self.workers} worker(s) started within {timeout:.0f} s: the cluster "
                        f"lacks free {'GPUs' if self.gpus else 'CPUs'} (or memory) for them."
                    )
        except BaseException:
            for slot in pending.values():  # close() stops the started ones
                ray.kill(slot.actor, no_restart=True)
            raise
        self.slots.sort(key=lambda slot: slot.number)

    @staticmethod
    def _describe(reference) -> dict:
        try:
            info = ray.get(reference)
        except WORKER_FAILURES as error:
            raise WorkerError(f"A worker could not start: {_last_line(error)}") from None
        if info["error"]:
            raise WorkerError(f"A worker could not load the model: {info['error']}")
        return info

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (a test kills one to check that the run survives)."""
        return [slot.info["pid"] for slot in self.slots if slot.alive]

    def describe(self) -> str:
        hosts = sorted({slot.info.get("host", "?") for slot in self.slots if slot.alive})
        each = "1 GPU" if self.gpus else f"{self.threads} thread(s)"
        return f"{len(self.worker_pids())} worker(s) ({each} each) on {len(hosts)} node(s)"

    # --- running ---------------------------------------------------------------------------------

    def run(self, work: Work, items: Iterable, shared: Any = None, *, window: int | None = None) -> Iterator[tuple[int, Any]]:
        """Yield (index, work(model, shared, item)) for every item as workers finish them (any order).

        Several runs may share the pool at once (say two users of the app); the workers serve their items
        in turn. Closing the generator early cancels the items it still has on the workers.
        """
        with self._lock:
            self._jobs += 1
            job = f"job-{self._jobs}"
        shared_reference = ray.put(shared)
        source = iter(items)
        pulled, exhausted = 0, False
        waiting: list[int] = []  # heap of indices to (re)dispatch
        held: dict[int, Any] = {}  # index -> item, until its result arrived
        attempts: dict[int, int] = {}
        in_flight: dict[Any, tuple[int, _Slot]] = {}
        try:
            while True:
                # Pull items while workers have room and the window ahead of the oldest unfinished item allows.
                capacity = DEPTH * max(1, sum(slot.alive for slot in self.slots))
                while not exhausted and len(waiting) < capacity:
                    if window is not None and pulled >= (min(held) if held else pulled) + window:
                        break
                    try:
                        held[pulled] = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    heapq.heappush(waiting, pulled)
                    pulled += 1
                self._dispatch(job, shared_reference, work, waiting, held, in_flight)
                if not in_flight and not waiting and exhausted:
                    return
                with self._lock:
                    starting = list(self.starting)
                if not in_flight and not starting and not any(slot.alive for slot in self.slots):
                    raise WorkerError("Every worker has died; the items left were not computed.")
                if not in_flight and not starting:  # another run holds every worker for now
                    time.sleep(POLL_S / 20)
                    continue
                ready, _ = ray.wait(list(in_flight) + starting, num_returns=1, timeout=POLL_S)
                for reference in ready:
                    if reference not in in_flight:
                        self._admit(reference)  # a replacement worker finished loading the model
                        continue
                    index, slot = in_flight.pop(reference)
                    slot.in_flight -= 1
                    try:
                        result = ray.get(reference)
                    except WORKER_FAILURES as error:
                        self._lost(slot, error)
                        attempts[index] = attempts.get(index, 0) + 1
                        if attempts[index] >= MAX_ATTEMPTS:
                            raise WorkerError(f"Item {index} was lost with {attempts[index]} workers: {_last_line(error)}") from None
                        self.retried += 1
                        heapq.heappush(waiting, index)
                        continue
                    except ray.exceptions.RayTaskError as error:
                        if isinstance(error.cause, LocusError):
                            raise error.cause from None
                        raise
                    del held[index]
                    yield index, result
        finally:  # done, or stopped early (cancelled, an error): drop what the workers still hold for this run
            for reference, (_, slot) in in_flight.items():
                ray.cancel(reference)
                slot.in_flight -= 1
            for slot in self.slots:
                if job in slot.jobs and slot.alive:
                    slot.actor.forget.remote(job)  # after this run's items: actor calls keep their order
                    slot.jobs.discard(job)

    def _dispatch(self, job: str, shared_reference, work: Work, waiting: list[int], held: dict, in_flight: dict) -> None:
        """Give waiting items (lowest index first) to the live workers with the fewest in flight."""
        with self._lock:
            for slot in sorted((slot for slot in self.slots if slot.alive), key=lambda slot: slot.in_flight):
                while waiting and slot.in_flight < DEPTH:
                    index = heapq.heappop(waiting)
                    if job not in slot.jobs:
                        slot.actor.share.remote(job, shared_reference)  # runs before the item: actor calls keep their order
                        slot.jobs.add(job)
                    in_flight[slot.actor.run.remote(work, job, held[index])] = (index, slot)
                    slot.in_flight += 1

    def _lost(self, slot: _Slot, error: Exception) -> None:
        """Mark a worker dead (its other items fail on their own) and start a replacement."""
        with self._lock:
            if not slot.alive:
                return
            slot.alive = False
            log.warning("worker %s (pid %s) died: %s", slot.number, slot.info.get("pid"), _last_line(error))
            ray.kill(slot.actor, no_restart=True)
            if self.replaced < self.workers:
                self.replaced += 1
                replacement = self._new_slot()
                self.starting[replacement.actor.describe.remote()] = replacement

    def _admit(self, reference) -> None:
        with self._lock:
            slot = self.starting.pop(reference, None)
        if slot is None:  # another run admitted it
            return
        try:
            slot.info = self._describe(reference)
        except WorkerError as error:
            log.warning("a replacement worker did not start: %s", error)
            return
        with self._lock:
            self.slots.append(slot)

    # --- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers; stop the local cluster (or leave the joined one) if this pool started the connection."""
        for slot in self.slots + list(self.starting.values()):
            try:
                ray.kill(slot.actor, no_restart=True)
            except (ray.exceptions.RayError, ValueError):
                pass
        self.slots, self.starting = [], {}
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
        self.owns_ray = False

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
