"""AsyncClient and a plain pika program (no Postage) talk both ways: raw bodies, plain
AMQP properties, the usual reply_to/correlation_id RPC pattern."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pika

from postage import AsyncClient

from .conftest import Names


def _pika_channel(url: str) -> tuple[Any, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    return connection, connection.channel()


async def test_pika_publishes_raw_and_the_handler_gets_it(
    client: AsyncClient, names: Names, broker_url: str
) -> None:
    exchange, queue = names.exchange(), names.queue()
    got: list[bytes] = []
    arrived = asyncio.Event()

    async def handler(body: bytes) -> None:
        got.append(body)
        if len(got) == 2:
            arrived.set()

    await client.receive(exchange, "orders.*", queue, handler)

    def pika_producer() -> None:
        connection, channel = _pika_channel(broker_url)
        try:
            channel.confirm_delivery()
            channel.basic_publish(exchange, "orders.new", b'{"id": 1}', mandatory=True)
            channel.basic_publish(
                exchange, "orders.old", "plain text é".encode(),
                pika.BasicProperties(content_type="text/plain"), mandatory=True,
            )
        finally:
            connection.close()

    await asyncio.to_thread(pika_producer)
    await asyncio.wait_for(arrived.wait(), 10)
    assert got == [b'{"id": 1}', "plain text é".encode()]


async def test_client_rpc_to_a_pika_server(
    client: AsyncClient, names: Names, broker_url: str
) -> None:
    exchange, queue = names.exchange(), names.queue()
    ready = threading.Event()
    stop = threading.Event()
    served: list[str] = []

    def pika_server() -> None:
        connection, channel = _pika_channel(broker_url)
        try:
            channel.exchange_declare(exchange, "topic")
            channel.queue_declare(queue, exclusive=True)  # (RabbitMQ 4.3: no transient shared)
            channel.queue_bind(queue, exchange, "math.#")

            def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
                served.append(props.correlation_id)
                ch.basic_publish(
                    "", props.reply_to, str(int(body) * 2).encode(),
                    pika.BasicProperties(correlation_id=props.correlation_id),
                )
                ch.basic_ack(method.delivery_tag)

            channel.basic_consume(queue, on_request)
            ready.set()
            while not stop.is_set():
                connection.process_data_events(time_limit=0.1)
        finally:
            connection.close()

    thread = threading.Thread(target=pika_server, daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 10)
        answers = await asyncio.gather(
            *(client.rpc(exchange, "math.double", str(i), timeout=10) for i in range(20))
        )
        assert answers == [str(i * 2).encode() for i in range(20)]
        assert len(set(served)) == 20  # a distinct correlation id per call
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)


async def test_pika_rpc_client_to_a_receive_handler(
    client: AsyncClient, names: Names, broker_url: str
) -> None:
    exchange, queue = names.exchange(), names.queue()

    async def handler(body: bytes) -> str:
        return body.decode()[::-1]

    await client.receive(exchange, "rev", queue, handler)

    def pika_caller() -> tuple[bytes, str]:
        connection, channel = _pika_channel(broker_url)
        try:
            reply_queue = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish(
                exchange, "rev", b"stressed",
                pika.BasicProperties(reply_to=reply_queue, correlation_id="pika-1"),
            )
            for method, props, body in channel.consume(
                reply_queue, auto_ack=True, inactivity_timeout=10
            ):
                assert method is not None, "no reply within 10 s"
                return body, props.correlation_id
            raise AssertionError("unreachable")
        finally:
            connection.close()

    body, correlation_id = await asyncio.to_thread(pika_caller)
    assert (body, correlation_id) == (b"desserts", "pika-1")
