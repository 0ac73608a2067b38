"""The blocking communicator's light futures: no condition until one is needed, and the
concurrent.futures machinery (result, wait, as_completed, callbacks) works on them from
many threads at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from postage._blocking.futures import follow as _to_concurrent
from postage._blocking.portal import BlockingPortal


def test_many_threads_wait_on_futures_completed_by_the_loop() -> None:
    portal = BlockingPortal("test-reply-future")
    try:
        async def make() -> list[asyncio.Future[Any]]:
            loop = asyncio.get_running_loop()
            return [loop.create_future() for _ in range(200)]

        sources = portal.call(make, timeout=10)
        futures = [_to_concurrent(source, portal) for source in sources]
        assert all("_lazy_condition" not in f.__dict__ for f in futures)  # none made yet
        results: list[Any] = []
        lock = threading.Lock()

        def wait_all(offset: int) -> None:
            for f in futures[offset:] + futures[:offset]:
                value = f.result(timeout=10)
                with lock:
                    results.append(value)

        threads = [threading.Thread(target=wait_all, args=(i * 50,)) for i in range(4)]
        for thread in threads:
            thread.start()

        async def complete() -> None:
            for i, source in enumerate(sources):
                source.set_result(i)
                if i % 10 == 0:
                    await asyncio.sleep(0)

        portal.call(complete, timeout=10)
        for thread in threads:
            thread.join(15)
        assert sorted(results) == sorted(list(range(200)) * 4)
        done, not_done = concurrent.futures.wait(futures, timeout=5)
        assert len(done) == 200 and not not_done
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == list(
            range(200))
    finally:
        portal.stop()


def test_cancelling_the_concurrent_future_cancels_the_source() -> None:
    portal = BlockingPortal("test-reply-future-cancel")
    try:
        async def make() -> asyncio.Future[Any]:
            return asyncio.get_running_loop().create_future()

        source = portal.call(make, timeout=10)
        future = _to_concurrent(source, portal)
        called = threading.Event()
        future.add_done_callback(lambda _f: called.set())
        assert future.cancel()
        assert called.wait(5)

        async def check() -> bool:
            await asyncio.sleep(0)
            return source.cancelled()

        assert portal.call(check, timeout=10)
    finally:
        portal.stop()
