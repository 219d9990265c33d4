"""Dynamic batching in front of a model (Infinity's batch handler, simplified).

Requests put their inputs on one queue per model. A single asyncio task takes
what is queued (after waiting up to `max_wait` for an idle model to collect
company), sorts it by length so similar lengths share padding, and runs it in
batches of at most `max_batch_size` on the model thread, off the event loop.
Inputs of different requests therefore share model calls; each request awaits
only its own futures. A full queue refuses new work with `Overloaded` (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.common.errors import EngineError, InferagError, NotReady, Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# How many batches' worth of queued inputs one round takes and sorts by length.
_SORT_WINDOW = 4


@dataclass(eq=False, slots=True)
class _Item(Generic[T, R]):
    payload: T
    cost: int
    request: int
    future: asyncio.Future[R]


@dataclass
class BatchStats:
    """Counters that show batching at work (also exported as Prometheus metrics)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    # batches that held inputs of more than one request
    shared: int = 0
    by_size: dict[int, int] = field(default_factory=dict)
    by_requests: dict[int, int] = field(default_factory=dict)
    busy_seconds: float = 0.0


BatchObserver = Callable[[int, int, float], None]


class MicroBatcher(Generic[T, R]):
    """Queue + micro-batching worker for one model function `fn(list of inputs) -> list of results`."""

    def __init__(
        self,
        name: str,
        fn: Callable[[list[T]], Sequence[R]],
        executor: Executor,
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_queue: int = 4096,
        observer: BatchObserver | None = None,
    ):
        self.name = name
        self.fn = fn
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.observer = observer
        self.stats = BatchStats()
        self._queue: deque[_Item[T, R]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._closed = False
        self.in_model = 0  # inputs of the model call running now

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(NotReady("The embeddings service is shutting down."))

    async def submit(self, payloads: Sequence[T], costs: Sequence[int] | None = None) -> list[R]:
        """Queue one request's inputs and wait for their results (in order).

        Refused with `Overloaded` when the queue cannot take them all, unless it is
        empty (so a request within the per-request limits is always served eventually).
        """
        if self._closed:
            raise NotReady("The embeddings service is shutting down.")
        if not payloads:
            return []
        if self._queue and len(self._queue) + len(payloads) > self.max_queue:
            raise Overloaded(
                f"The {self.name} queue is full ({len(self._queue)} inputs waiting); retry shortly.",
                retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        request = next(self._ids)
        items = [
            _Item(p, costs[i] if costs is not None else 1, request, loop.create_future())
            for i, p in enumerate(payloads)
        ]
        self._queue.extend(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:
                item.future.cancel()
            # Out of the queue at once, so abandoned inputs do not hold its room (the worker skips them anyway).
            gone = set(items)
            self._queue = deque(it for it in self._queue if it not in gone)
            raise

    # ------------------------------------------------------------ worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if self.max_wait_s > 0 and len(self._queue) < self.max_batch_size:
                # The model is idle: give concurrent requests a moment to join this batch.
                deadline = loop.time() + self.max_wait_s
                while len(self._queue) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), left)
            taken: list[_Item[T, R]] = []
            while self._queue and len(taken) < self.max_batch_size * _SORT_WINDOW:
                item = self._queue.popleft()
                if not item.future.done():
                    taken.append(item)
            taken.sort(key=lambda it: it.cost)
            for start in range(0, len(taken), self.max_batch_size):
                batch = [it for it in taken[start : start + self.max_batch_size] if not it.future.done()]
                if batch:
                    await self._run_batch(loop, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[T, R]]) -> None:
        payloads = [it.payload for it in batch]
        started = time.perf_counter()
        self.in_model = len(batch)
        try:
            results = list(await loop.run_in_executor(self.executor, self.fn, payloads))
            if len(results) != len(batch):  # inside the try: the worker must outlive a faulty model
                raise EngineError(f"The {self.name} model returned {len(results)} results for {len(batch)} inputs.")
        except asyncio.CancelledError:
            for it in batch:
                it.future.cancel()
            raise
        except Exception as exc:
            self.in_model = 0
            log.exception("%s batch of %d failed", self.name, len(batch))
            error = exc if isinstance(exc, InferagError) else EngineError(f"The {self.name} model failed: {exc}")
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(error)
            return
        self.in_model = 0
        elapsed = time.perf_counter() - started
        for it, result in zip(batch, results, strict=True):
            if not it.future.done():
                it.future.set_result(result)
        self._record(len(batch), len({it.request for it in batch}), elapsed)

    def _record(self, size: int, requests: int, elapsed: float) -> None:
        s = self.stats
        s.batches += 1
        s.items += size
        s.largest = max(s.largest, size)
        s.shared += requests > 1
        s.by_size[size] = s.by_size.get(size, 0) + 1
        s.by_requests[requests] = s.by_requests.get(requests, 0) + 1
        s.busy_seconds += elapsed
        if self.observer is not None:
            self.observer(size, requests, elapsed)
