"""The worker pool keeps nothing of a finished job while its thread waits for the next."""

from __future__ import annotations

import asyncio
import gc
import weakref

from postage._core.workers import WorkerPool


class Job:
    def __call__(self, data: object) -> str:
        return "done"


async def test_an_idle_worker_keeps_no_reference_to_its_last_job() -> None:
    pool = WorkerPool(2, idle_timeout=30)
    job, data = Job(), Job()
    job_ref, data_ref = weakref.ref(job), weakref.ref(data)
    assert await pool.run(job, data) == "done"
    del job, data
    await asyncio.sleep(0.1)  # the thread is back waiting for work
    gc.collect()
    assert pool.threads == 1
    assert job_ref() is None and data_ref() is None
    pool.shutdown()
