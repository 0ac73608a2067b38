"""postage.kiwipy behaves as kiwiPy 0.9 does, on RabbitMQ and on the memory broker, with
Postage's guarantees added (dead-letter queues, safe YAML)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import postage
import postage.kiwipy as kiwipy
from postage.kiwipy import rmq
from postage.testing import forget_broker, fresh_broker


@pytest.fixture(params=[pytest.param("rabbitmq", marks=pytest.mark.broker), "memory"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "rabbitmq":
        yield request.getfixturevalue("broker_url")
        return
    broker = fresh_broker()
    yield broker.url
    forget_broker(broker)


def exchanges() -> dict[str, str]:
    prefix = f"kw-{uuid.uuid4().hex[:8]}"
    return {"message_exchange": f"{prefix}.messages", "task_exchange": f"{prefix}.tasks",
            "task_queue": f"{prefix}.queue"}


@pytest.fixture
async def comm(url: str) -> AsyncIterator[rmq.RmqCommunicator]:
    communicator = await rmq.async_connect(url, **exchanges())
    yield communicator
    await communicator.disconnect()


@pytest.fixture
def thread_comm(url: str) -> Iterator[rmq.RmqThreadCommunicator]:
    with rmq.connect(url, **exchanges()) as communicator:
        yield communicator


async def _first_dead_letter(comm: rmq.RmqCommunicator, dlq: str, polls: int
                             ) -> dict[str, Any]:
    """The headers of the first message of ``dlq`` (acked), once it holds one (looked at
    ``polls`` times, 50 ms apart; the queue is declared when first needed)."""
    for _ in range(polls):
        with contextlib.suppress(postage.NotFound):
            if (await comm.core.queue_state(dlq))[0] == 1:
                break
        await asyncio.sleep(0.05)
    delivery = await comm.core.get(dlq)
    assert delivery is not None
    await delivery.ack()
    return delivery.headers


async def test_rpc_results_errors_and_unroutable(comm: rmq.RmqCommunicator) -> None:
    await comm.add_rpc_subscriber(lambda _c, msg: {"got": msg}, "echo")
    assert await (await comm.rpc_send("echo", (1, "a"))) == {"got": (1, "a")}

    def fail(_c: Any, msg: Any) -> None:
        raise ValueError(f"bad {msg}")

    await comm.add_rpc_subscriber(fail, "fail")
    with pytest.raises(kiwipy.RemoteException, match="bad 3") as info:
        await (await comm.rpc_send("fail", 3))
    assert isinstance(info.value, postage.RemoteError)
    with pytest.raises(kiwipy.UnroutableError) as unroutable:
        await comm.rpc_send("nobody", 1)
    assert isinstance(unroutable.value, postage.Unroutable)
    with pytest.raises(kiwipy.DuplicateSubscriberIdentifier):
        await comm.add_rpc_subscriber(lambda _c, _m: None, "echo")
    await comm.remove_rpc_subscriber("echo")
    with pytest.raises(ValueError, match="Unknown"):
        await comm.remove_rpc_subscriber("echo")
    with pytest.raises(kiwipy.UnroutableError):
        await comm.rpc_send("echo", 1)


async def test_responses_to_cancelled_calls_are_dropped_quietly(
        comm: rmq.RmqCommunicator, caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    answered = 0

    async def slow(_c: Any, msg: Any) -> Any:
        nonlocal answered
        await release.wait()
        answered += 1
        return msg

    await comm.add_rpc_subscriber(slow, "slow")
    calls = [await comm.rpc_send("slow", i) for i in range(30)]
    for call in calls:
        call.cancel()
    with caplog.at_level("DEBUG", logger="postage.kiwipy"):
        release.set()
        assert await (await comm.rpc_send("slow", "after")) == "after"
        async with asyncio.timeout(10):
            while caplog.text.count("response to cancelled call") < 30:
                await asyncio.sleep(0.02)
    # the requests had been delivered: they ran, and their responses are dropped
    assert answered == 31
    assert "unknown correlation id" not in caplog.text


async def test_a_subscriber_returning_a_future_gives_a_nested_future(
        comm: rmq.RmqCommunicator) -> None:
    later: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    await comm.add_rpc_subscriber(lambda _c, _m: later, "later")
    outer = await comm.rpc_send("later", None)
    inner = await asyncio.wait_for(outer, 10)  # the "pending" response came first
    assert asyncio.isfuture(inner) and not inner.done()
    later.set_result(42)
    assert await asyncio.wait_for(inner, 10) == 42

    cancelled: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    await comm.add_rpc_subscriber(lambda _c, _m: cancelled, "cancelled")
    inner = await asyncio.wait_for(await comm.rpc_send("cancelled", None), 10)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(inner, 10)


async def test_tasks_results_rejection_and_no_reply(comm: rmq.RmqCommunicator) -> None:
    seen: list[Any] = []

    def reject(_c: Any, task: Any) -> None:
        seen.append(("rejected", task))
        raise kiwipy.TaskRejected("not mine")

    def accept(_c: Any, task: Any) -> Any:
        seen.append(("done", task))
        return task * 2

    await comm.add_task_subscriber(reject, "reject")
    await comm.add_task_subscriber(accept, "accept")
    assert await asyncio.wait_for(await comm.task_send(21), 10) == 42
    assert await comm.task_send(5, no_reply=True) is None
    for _ in range(100):
        if ("done", 5) in seen:
            break
        await asyncio.sleep(0.05)
    assert seen == [("rejected", 21), ("done", 21), ("rejected", 5), ("done", 5)]
    with pytest.raises(kiwipy.DuplicateSubscriberIdentifier):
        await comm.add_task_subscriber(accept, "accept")


async def test_a_failing_task_is_answered_with_its_exception_and_kept_nowhere(
        comm: rmq.RmqCommunicator, caplog: pytest.LogCaptureFixture) -> None:
    """kiwiPy's protocol: the exception is the task's outcome (a killed AiiDA process ends
    so, by design): its sender gets it, it is logged, and no queue keeps the task."""
    def fail(_c: Any, task: Any) -> None:
        raise RuntimeError(f"cannot do {task}")

    await comm.add_task_subscriber(fail)
    with pytest.raises(kiwipy.RemoteException, match="cannot do 7"):
        await asyncio.wait_for(await comm.task_send(7), 10)
    await comm.task_send(8, no_reply=True)  # nobody hears this one: logged
    for _ in range(100):
        if sum("cannot do" in str(r.exc_info) for r in caplog.records) >= 2:
            break
        await asyncio.sleep(0.05)
    assert sum("cannot do" in str(r.exc_info) for r in caplog.records) == 2
    await asyncio.sleep(0.3)
    assert (await comm.core.queue_state(comm._task_queue))[0] == 0  # acked, not requeued
    with contextlib.suppress(postage.NotFound):  # never declared: nothing went there
        assert (await comm.core.queue_state(f"{comm._task_queue}.dlq"))[0] == 0


async def test_a_pulled_task_that_fails_is_answered_and_acked(
        comm: rmq.RmqCommunicator) -> None:
    queue = await comm.task_queue(f"{comm._task_queue}.pull-fail")
    result = await queue.task_send(5)
    async with queue.next_task(timeout=5) as task:
        task.process().set_exception(RuntimeError("cannot do 5"))
    with pytest.raises(kiwipy.RemoteException, match="cannot do 5"):
        await asyncio.wait_for(result, 10)
    await asyncio.sleep(0.3)
    assert (await comm.core.queue_state(queue.queue_name))[0] == 0  # acked


async def test_a_failing_task_goes_to_the_dlq_when_asked(
        comm: rmq.RmqCommunicator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rmq.RmqTaskSubscriber, "failed_tasks", "dead-letter")

    def fail(_c: Any, task: Any) -> None:
        raise RuntimeError(f"cannot do {task}")

    await comm.add_task_subscriber(fail)
    with pytest.raises(kiwipy.RemoteException, match="cannot do 7"):
        await asyncio.wait_for(await comm.task_send(7), 10)
    headers = await _first_dead_letter(comm, f"{comm._task_queue}.dlq", 100)
    assert headers["x-postage-reason"] == "handler-failed"
    assert "cannot do 7" in headers["x-postage-error"]


async def test_a_wrong_failed_tasks_setting_is_a_clear_error(
        comm: rmq.RmqCommunicator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rmq.RmqTaskSubscriber, "failed_tasks", "drop")
    with pytest.raises(postage.ConfigurationError, match="failed_tasks must be one of"):
        await comm.add_task_subscriber(lambda _c, task: task)
    queue = await comm.task_queue(f"{comm._task_queue}.pulled")
    with pytest.raises(postage.ConfigurationError, match="failed_tasks must be one of"):
        async with queue.next_task(timeout=1):
            pass


async def test_a_task_every_subscriber_rejects_is_not_retried_forever(
        comm: rmq.RmqCommunicator) -> None:
    def reject(_c: Any, _task: Any) -> None:
        raise kiwipy.TaskRejected("no")

    await comm.add_task_subscriber(reject)
    with pytest.raises(kiwipy.RemoteException, match="rejected the task"):
        await asyncio.wait_for(await comm.task_send("x"), 30)


async def test_pull_tasks_with_next_task_and_iteration(comm: rmq.RmqCommunicator) -> None:
    queue = await comm.task_queue(f"{comm._task_queue}.pull")
    result = await queue.task_send("first")
    assert result is not None
    async with queue.next_task(timeout=2) as task:
        assert task is not None and task.body == "first" and not task.no_reply
        # left without processing: back in the queue
    async with queue.next_task(timeout=2) as task:
        assert task is not None and task.body == "first"
        task.process().set_result("ok")
    assert await asyncio.wait_for(result, 10) == "ok"
    with pytest.raises(kiwipy.QueueEmpty):
        async with queue.next_task(timeout=0.5):
            pass
    for body in ("a", "b"):
        await queue.task_send(body, no_reply=True)
    bodies = []
    async for task in queue:
        bodies.append(task.body)
        if task.body == "a":
            async with task.processing() as outcome:
                outcome.set_result(None)
    assert bodies == ["a", "b"]
    async with queue.next_task(timeout=2) as task:  # "b" was not processed: requeued
        assert task is not None and task.body == "b"
        with pytest.raises(ValueError, match="broken"):
            async with task.processing():
                raise ValueError("broken")
        assert task.state == "finished"
        with pytest.raises(kiwipy.InvalidStateError):
            task.process()


async def test_broadcasts_with_kiwipy_filters(comm: rmq.RmqCommunicator) -> None:
    got: list[Any] = []
    await comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(
        lambda _c, body, sender, subject, cid: got.append((body, sender, subject, cid)),
        subject="job.*", sender="worker"))
    await comm.broadcast_send("a", sender="worker", subject="job.1.done", correlation_id=1)
    await comm.broadcast_send("b", sender="other", subject="job.2")
    await comm.broadcast_send("c", sender="worker", subject="other")
    await comm.broadcast_send("d", sender="worker")  # no subject: passes (as in kiwiPy)
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert got == [("a", "worker", "job.1.done", 1), ("d", "worker", None, None)]


async def test_unsafe_yaml_is_never_loaded(comm: rmq.RmqCommunicator, tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    body = f"!!python/object/apply:os.system ['touch {marker}']".encode()
    queue = await comm.task_queue(f"{comm._task_queue}.unsafe")
    await queue.add_task_subscriber(lambda _c, task: task)
    await comm.core.publish(comm._task_exchange, queue.queue_name, body)
    headers = await _first_dead_letter(comm, f"{queue.queue_name}.dlq", 100)
    assert headers["x-postage-reason"] == "undecodable"
    assert not marker.exists()


def test_the_thread_communicator(thread_comm: rmq.RmqThreadCommunicator) -> None:
    def nested(comm: Any, msg: Any) -> Any:
        assert comm is thread_comm  # subscribers get the communicator itself
        future: kiwipy.Future[Any] = kiwipy.Future()
        future.set_result(msg + 1)
        return future

    thread_comm.add_rpc_subscriber(nested, "nested")
    outer = thread_comm.rpc_send("nested", 1)
    inner = outer.result(timeout=10)
    assert isinstance(inner, kiwipy.Future) and inner.result(timeout=10) == 2
    thread_comm.add_task_subscriber(lambda _c, task: time.sleep(0.1) or task)
    futures = [thread_comm.task_send(i) for i in range(3)]
    assert sorted(f.result(timeout=20) for f in futures if f is not None) == [0, 1, 2]
    assert thread_comm.broadcast_send("x") is True
    queue = thread_comm.task_queue(f"{thread_comm._communicator._task_queue}.pull")
    sent = queue.task_send("pull me")
    with queue.next_task(timeout=2) as task:
        assert task is not None
        with task.processing() as outcome:
            outcome.set_result(task.body.upper())
    assert sent is not None and sent.result(timeout=10) == "PULL ME"
    assert [t.body for t in queue] == []
    assert thread_comm.server_properties
    closed: list[Any] = []
    thread_comm.add_close_callback(lambda sender, exc: closed.append(exc))
    thread_comm.close()
    assert closed == [None]
    with pytest.raises(kiwipy.CommunicatorClosed):
        thread_comm.rpc_send("nested", 1)
    assert thread_comm.is_closed()


async def test_a_lost_connection_fails_waiting_rpcs_and_subscribers_come_back() -> None:
    broker = fresh_broker()
    try:
        names = exchanges()
        server = await rmq.async_connect(broker.url, **names)
        client = await rmq.async_connect(broker.url, **names)
        release = asyncio.Event()

        async def slow(_c: Any, msg: Any) -> Any:
            await release.wait()
            return msg

        await server.add_rpc_subscriber(slow, "slow")
        await server.add_task_subscriber(lambda _c, task: task + 1)
        waiting = await client.rpc_send("slow", 1)
        broker.drop_connections()
        with pytest.raises(postage.ConnectionError):
            await asyncio.wait_for(waiting, 10)
        release.set()
        # both ends recovered: the same subscribers answer again
        assert await asyncio.wait_for(await client.rpc_send("slow", 2), 10) == 2
        assert await asyncio.wait_for(await client.task_send(41), 10) == 42
        await client.disconnect()
        await server.disconnect()
    finally:
        forget_broker(broker)


async def test_large_yaml_is_read_off_the_loop_and_too_large_yaml_is_refused(
        comm: rmq.RmqCommunicator) -> None:
    """A large YAML task is decoded in a worker thread (the loop keeps ticking meanwhile);
    one over the limit is dead-lettered as undecodable without being parsed."""
    from postage._api.kiwipy import messages

    got: list[int] = []
    await comm.add_task_subscriber(lambda _c, task: got.append(len(task)))
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    big = [f"item {i}" for i in range(30_000)]  # about 400 KB of YAML
    await comm.task_send(big, no_reply=True)
    for _ in range(600):
        if got:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await ticker
    assert got == [30_000]
    assert max(gaps) < 0.5  # the loop was never stalled by the decoding
    await comm.core.publish("", comm._task_queue, b"x" * (messages.MAX_YAML + 1))
    headers = await _first_dead_letter(comm, f"{comm._task_queue}.dlq", 200)
    assert headers["x-postage-reason"] == "undecodable"
    assert "over the limit" in headers["x-postage-error"]


def test_kiwipy_submodules_and_internals_real_programs_use() -> None:
    """``kiwipy.exceptions.QueueEmpty`` and friends (kiwiPy's own test suite), and a thread
    communicator's ``_loop`` and ``_communicator`` (plumpy's tests, AiiDA plugins)."""
    assert kiwipy.exceptions.QueueEmpty is kiwipy.QueueEmpty
    assert kiwipy.futures.Future is kiwipy.Future
    assert kiwipy.filters.BroadcastFilter is kiwipy.BroadcastFilter
    assert kiwipy.local.LocalCommunicator is kiwipy.LocalCommunicator
    assert kiwipy.utils.EventHelper is kiwipy.EventHelper
    assert rmq.RmqThreadCommunicator._loop.__doc__  # type: ignore[attr-defined]


def test_the_thread_communicator_exposes_its_loop(
        thread_comm: rmq.RmqThreadCommunicator) -> None:
    loop = thread_comm._loop
    assert loop is thread_comm.loop()
    loop.set_debug(False)  # what plumpy's fixture does (with True)
    assert isinstance(thread_comm._communicator, rmq.RmqCommunicator)


async def test_unreadable_rpcs_and_broadcasts_keep_the_communicator_serving(
        comm: rmq.RmqCommunicator) -> None:
    """Unsafe YAML sent to an RPC subscriber and as a broadcast: the caller of the RPC gets
    an error, the broadcast goes to ``<message exchange>.dlq``; both subscribers go on."""
    got: list[Any] = []
    await comm.add_rpc_subscriber(lambda _c, msg: f"echo {msg}", "echo")
    await comm.add_broadcast_subscriber(lambda _c, body, *_: got.append(body))
    unsafe = b"!!python/object/apply:os.system ['true']"
    exchange = comm._message_exchange
    from postage._wire.kiwipy import BROADCAST_TOPIC

    await comm.core.publish(exchange, BROADCAST_TOPIC, unsafe, mandatory=False)
    dlq = f"{exchange}.dlq"
    headers = await _first_dead_letter(comm, dlq, 200)
    assert headers["x-postage-reason"] == "undecodable"
    await comm.core.delete_queue(dlq)
    assert await comm.broadcast_send("readable")
    assert await (await comm.rpc_send("echo", 1)) == "echo 1"
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.05)
    assert got == ["readable"]


async def test_a_subscriber_removing_itself_still_answers(comm: rmq.RmqCommunicator) -> None:
    """plumpy removes a process's RPC subscriber when the process ends, and a kill RPC
    ends it: the removal runs inside that RPC's own handler."""
    async def kill(c: Any, _msg: Any) -> str:
        await c.remove_rpc_subscriber("proc-1")
        return "killed"

    await comm.add_rpc_subscriber(kill, "proc-1")
    started = time.monotonic()
    assert await asyncio.wait_for(await comm.rpc_send("proc-1", "kill"), 10) == "killed"
    assert time.monotonic() - started < 5
    with pytest.raises(kiwipy.UnroutableError):
        await comm.rpc_send("proc-1", "again")


def test_a_thread_subscriber_removing_itself_still_answers(
        thread_comm: rmq.RmqThreadCommunicator) -> None:
    def kill(c: Any, _msg: Any) -> str:
        c.remove_rpc_subscriber("proc-2")
        return "killed"

    thread_comm.add_rpc_subscriber(kill, "proc-2")
    started = time.monotonic()
    assert thread_comm.rpc_send("proc-2", "kill").result(timeout=10) == "killed"
    assert time.monotonic() - started < 5
    with pytest.raises(kiwipy.UnroutableError):
        thread_comm.rpc_send("proc-2", "again")


def test_a_removed_rpc_subscriber_is_let_go_at_once(
        thread_comm: rmq.RmqThreadCommunicator) -> None:
    """Its queue and consumer are retired in the background, but the subscriber itself (a
    bound method of a finished AiiDA process, say) is not kept meanwhile: AiiDA's memory
    leak tests look for it 0.2 s after the process ends."""
    import gc
    import weakref

    class Process:
        def message_receive(self, _comm: Any, msg: Any) -> Any:
            return msg

    process = Process()
    gone = weakref.ref(process)
    identifier = thread_comm.add_rpc_subscriber(process.message_receive, "pid-leak")
    assert thread_comm.rpc_send("pid-leak", 7).result(timeout=10) == 7
    thread_comm.remove_rpc_subscriber(identifier)
    del process
    gc.collect()
    assert gone() is None
