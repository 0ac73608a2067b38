"""postage.kiwipy in programs written for kiwiPy on aio-pika: they pass aio-pika
connections to kiwiPy's constructors, and catch aio-pika's exceptions where kiwiPy lets
them through (plumpy around ``broadcast_send``)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import postage
from postage import kiwipy
from postage.kiwipy import rmq
from tests.faults.proxy import TcpProxy

aio_pika = pytest.importorskip("aio_pika")

pytestmark = pytest.mark.broker


def _names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"queue_name": f"test.aio-pika.{suffix}", "exchange_name": f"test.aio-pika.x.{suffix}"}


async def test_kiwipy_constructors_take_an_aio_pika_connection(broker_url: str) -> None:
    connection = await aio_pika.connect_robust(broker_url)
    try:
        queue = rmq.RmqTaskQueue(connection, testing_mode=True, **_names())
        await queue.connect()
        result = await queue.task_send("Hello!")
        async with queue.next_task(timeout=5) as task, task.processing() as outcome:
            outcome.set_result(f"{task.body} Goodbye")
        assert await asyncio.wait_for(result, 10) == "Hello! Goodbye"
        await queue.disconnect()

        names = _names()
        publisher = rmq.RmqTaskPublisher(connection, testing_mode=True, **names)
        await publisher.connect()
        # nobody consumes that queue: unroutable, as kiwiPy's (aio-pika's) DeliveryError
        with pytest.raises(aio_pika.exceptions.DeliveryError) as info:
            await publisher.task_send("lost?")
        assert isinstance(info.value, kiwipy.UnroutableError)
        assert isinstance(info.value, postage.Unroutable)
        await publisher.disconnect()

        suffix = uuid.uuid4().hex[:8]
        comm = rmq.RmqCommunicator(connection, message_exchange=f"test.aio-pika.m.{suffix}",
                                   task_exchange=f"test.aio-pika.t.{suffix}",
                                   testing_mode=True)
        await comm.connect()
        await comm.add_rpc_subscriber(lambda _c, n: n * 2, "double")
        assert await asyncio.wait_for(await comm.rpc_send("double", 21), 10) == 42
        await comm.disconnect()
    finally:
        await connection.close()
    with pytest.raises(postage.ConfigurationError, match="aio-pika connection"):
        rmq.RmqTaskQueue(object())


async def test_a_broadcast_on_a_lost_connection_is_aio_pikas_connection_closed(
        broker_url: str) -> None:
    proxy = TcpProxy.for_url(broker_url)
    await proxy.start()
    comm = await rmq.async_connect(connection_params=proxy.url(broker_url))
    try:
        assert await comm.broadcast_send("up")
        proxy.refuse(True)
        proxy.cut()
        async with asyncio.timeout(10):
            while comm.core.transport.is_ready:
                await asyncio.sleep(0.01)
        # what plumpy does around broadcast_send: the error is caught, the process goes on
        caught = None
        try:
            await comm.broadcast_send("state changed")
        except (aio_pika.exceptions.ConnectionClosed,
                aio_pika.exceptions.ChannelInvalidStateError) as exc:
            caught = exc
        assert isinstance(caught, postage.ConnectionError)
        proxy.refuse(False)
        async with asyncio.timeout(20):
            while not comm.core.transport.is_ready:
                await asyncio.sleep(0.05)
        assert await comm.broadcast_send("back")
    finally:
        await comm.disconnect()
        await proxy.stop()


def test_connection_params_as_aiida_passes_them() -> None:
    from postage._api.kiwipy.communicator import connection_url

    aiida = {"protocol": "amqp", "username": "guest", "password": "guest",
             "host": "127.0.0.1", "port": 5672, "virtual_host": "", "heartbeat": 600}
    assert connection_url(aiida) == "amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=600"
    tls = {"protocol": "amqps", "username": "u s", "password": "p@ss", "host": "h",
           "virtual_host": "v", "ssl_options": {"cafile": "/ca.pem"}, "unknown": 1}
    assert connection_url(tls) == "amqps://u%20s:p%40ss@h:5671/v?cafile=%2Fca.pem"


def test_aiidas_connection_params_connect(broker_url: str) -> None:
    from urllib.parse import urlsplit

    sp = urlsplit(broker_url)
    params = {"protocol": "amqp", "username": sp.username, "password": sp.password,
              "host": sp.hostname, "port": sp.port, "virtual_host": "", "heartbeat": 600}
    with rmq.threadcomms.connect(connection_params=params) as comm:
        assert comm.server_properties["product"] == "RabbitMQ"
        assert comm._communicator.core.settings.heartbeat == 600


def test_uuids_are_written_and_read_as_kiwipy_writes_them() -> None:
    """plumpy broadcasts with a UUID as the sender: kiwiPy (PyYAML's default dumper)
    writes ``!!python/object:uuid.UUID {int: N}``; the safe codec writes the same bytes
    and reads them back, and no other Python object tag."""
    import yaml

    from postage._wire.kiwipy import yaml_decode, yaml_encode

    pid = uuid.UUID("bd5c3032-ae94-4da3-a4d0-b79659153b22")
    message = {"sender": pid, "seen": [pid], "subject": "state_changed.running.finished"}
    assert yaml_encode(message) == yaml.dump(message, encoding="utf-8")
    assert yaml_decode(yaml.dump(message, encoding="utf-8")) == message
    for bad in (b"!!python/object:uuid.UUID {int: -1}", b"!!python/object:uuid.UUID [1]",
                b"!!python/object:uuid.UUID {int: 1, node: 2, x: 3}",
                b"!!python/object:os.system {int: 1}"):
        with pytest.raises(postage.DecodingError):
            yaml_decode(bad)
