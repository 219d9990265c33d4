"""The micro-batcher on its own, with a plain function as the model (unit tests only)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.errors import EngineError, NotReady, Overloaded
from services.embeddings.batching import MicroBatcher

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until `condition` holds (the worker thread and task make progress meanwhile)."""
    for _ in range(2000):  # 10 s
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


class Recorder:
    """Doubles its inputs and remembers every batch it was called with."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[list[int]] = []
        self.gate = gate

    def __call__(self, batch: list[int]) -> list[int]:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.calls.append(list(batch))
        return [2 * x for x in batch]


async def test_results_in_order_and_batches_bounded(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    b = MicroBatcher("m", fn, executor, max_batch_size=4, max_wait_s=0)
    b.start()
    try:
        assert await b.submit(list(range(10)), costs=[10 - i for i in range(10)]) == [2 * i for i in range(10)]
    finally:
        await b.stop()
    assert all(len(c) <= 4 for c in fn.calls)
    assert sorted(x for c in fn.calls for x in c) == list(range(10))
    # inputs of similar cost (length) are batched together: the cheapest run first
    assert set(fn.calls[0]) == {9, 8, 7, 6}


async def test_concurrent_requests_share_model_calls(executor: ThreadPoolExecutor) -> None:
    fn = Recorder()
    b = MicroBatcher("m", fn, executor, max_batch_size=16, max_wait_s=0.05)
    b.start()
    try:
        results = await asyncio.gather(*[b.submit([i]) for i in range(12)])
    finally:
        await b.stop()
    assert results == [[2 * i] for i in range(12)]
    assert len(fn.calls) < 12
    assert b.stats.shared >= 1 and b.stats.largest > 1
    assert b.stats.items == 12 and sum(b.stats.by_size[k] * k for k in b.stats.by_size) == 12


async def test_requests_arriving_while_busy_join_the_next_batch(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    fn = Recorder(gate)
    b = MicroBatcher("m", fn, executor, max_batch_size=32, max_wait_s=0)
    b.start()
    try:
        first = asyncio.create_task(b.submit([0]))
        await until(lambda: b.in_model == 1)  # the worker now holds [0] and waits for the model
        rest = [asyncio.create_task(b.submit([i])) for i in range(1, 6)]
        await until(lambda: b.queued == 5)
        gate.set()
        await asyncio.gather(first, *rest)
    finally:
        await b.stop()
    assert fn.calls == [[0], [1, 2, 3, 4, 5]]
    assert b.stats.by_requests == {1: 1, 5: 1}


async def test_full_queue_is_overloaded_with_retry_after(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    b = MicroBatcher("m", Recorder(gate), executor, max_batch_size=2, max_wait_s=0, max_queue=3)
    b.start()
    try:
        running = asyncio.create_task(b.submit([1, 2]))
        await until(lambda: b.in_model == 2)  # taken by the worker: the queue is empty again
        queued = asyncio.create_task(b.submit([3, 4, 5]))
        await until(lambda: b.queued == 3)
        with pytest.raises(Overloaded) as info:
            await b.submit([6])
        assert info.value.headers()["Retry-After"] == "1"
        gate.set()
        assert await running == [2, 4] and await queued == [6, 8, 10]
        # an empty queue takes a request larger than max_queue rather than refusing it forever
        assert await b.submit(list(range(5))) == [0, 2, 4, 6, 8]
    finally:
        gate.set()
        await b.stop()


async def test_cancelled_request_is_skipped(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    fn = Recorder(gate)
    b = MicroBatcher("m", fn, executor, max_batch_size=8, max_wait_s=0)
    b.start()
    try:
        first = asyncio.create_task(b.submit([1]))
        await until(lambda: b.in_model == 1)
        abandoned = asyncio.create_task(b.submit([2, 3]))
        kept = asyncio.create_task(b.submit([4]))
        await until(lambda: b.queued == 3)
        abandoned.cancel()
        gate.set()
        assert await first == [2] and await kept == [8]
    finally:
        await b.stop()
    assert [x for c in fn.calls for x in c] == [1, 4]


async def test_model_error_fails_only_its_batch(executor: ThreadPoolExecutor) -> None:
    def fn(batch: list[int]) -> list[int]:
        if 13 in batch:
            raise RuntimeError("boom")
        return batch

    b = MicroBatcher("m", fn, executor, max_batch_size=1, max_wait_s=0)
    b.start()
    try:
        with pytest.raises(EngineError, match="boom"):
            await b.submit([13])
        assert await b.submit([1, 2]) == [1, 2]
    finally:
        await b.stop()


async def test_stop_fails_waiting_requests(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    b = MicroBatcher("m", Recorder(gate), executor, max_batch_size=1, max_wait_s=0)
    b.start()
    first = asyncio.create_task(b.submit([1]))
    await until(lambda: b.in_model == 1)
    waiting = asyncio.create_task(b.submit([2]))
    await until(lambda: b.queued == 1)
    await b.stop()
    gate.set()
    with pytest.raises(NotReady):
        await waiting
    with pytest.raises((asyncio.CancelledError, NotReady)):
        await first
    with pytest.raises(NotReady):
        await b.submit([3])


async def test_wrong_number_of_outputs_fails_its_batch_and_the_worker_lives_on(executor: ThreadPoolExecutor) -> None:
    def fn(batch: list[int]) -> list[int]:
        return batch[:-1] if 13 in batch else batch  # a model that loses an output

    b = MicroBatcher("m", fn, executor, max_batch_size=4, max_wait_s=0)
    b.start()
    try:
        with pytest.raises(EngineError, match="1 results for 2 inputs"):
            await asyncio.wait_for(b.submit([13, 14]), 10)
        # before the fix the worker had died on the check and every later request hung
        assert await asyncio.wait_for(b.submit([1, 2]), 10) == [1, 2]
    finally:
        await b.stop()


async def test_cancelled_requests_leave_the_queue_bound(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    b = MicroBatcher("m", Recorder(gate), executor, max_batch_size=2, max_wait_s=0, max_queue=3)
    b.start()
    try:
        running = asyncio.create_task(b.submit([1, 2]))
        await until(lambda: b.in_model == 2)
        abandoned = asyncio.create_task(b.submit([3, 4, 5]))
        await until(lambda: b.queued == 3)
        abandoned.cancel()
        await until(lambda: b.queued == 0)
        # the cancelled inputs no longer hold the queue's room
        taken = asyncio.create_task(b.submit([6, 7, 8]))
        await until(lambda: b.queued == 3)
        gate.set()
        assert await running == [2, 4] and await taken == [12, 14, 16]
    finally:
        gate.set()
        await b.stop()
