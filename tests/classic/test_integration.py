"""Classic API against the broker, in-process: wire interop with plain pika, heartbeats
while a handler blocks, dead letters for bad messages, RPC timeouts and failures."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

import postage
from postage import messaging
from postage._api.classic import runtime as _runtime
from tests.recorder import Recorder

from .conftest import running, url_with_vhost


def exchange_cls(uid: str) -> type[messaging.Exchange]:
    return type("TestExchange", (messaging.Exchange,),
                {"name": f"classic-test-{uid}", "durable": False, "auto_delete": True})


class Calls(Recorder):
    """Handler calls from worker threads, waited for with a 15 s deadline."""

    def wait_sync(self, count: int, timeout: float = 15) -> list[Any]:
        return super().wait_sync(count, timeout)


def make_processor(exchange: type[messaging.Exchange], queue: str, calls: Calls,
                   **attrs: Any) -> messaging.MessageProcessor:
    class Processor(messaging.MessageProcessor):
        @messaging.MessageHandler("command", "work")
        def msg_work(self, content: Any) -> None:
            params = content["parameters"]
            delay = params["kwds"].get("sleep", 0) if isinstance(params, dict) else 0
            time.sleep(delay)  # blocking user code: runs in a worker thread
            calls.add(("work", content["parameters"]))

        @messaging.RpcHandler("command", "echo")
        def rpc_echo(self, content: Any, reply_func: Any) -> None:
            calls.add(("echo", content))
            reply_func(messaging.MessageResult(content["parameters"]))

        @messaging.RpcHandler("command", "silent")
        def rpc_silent(self, content: Any, reply_func: Any) -> None:
            calls.add(("silent", content))  # never answers

        @messaging.RpcHandler("command", "fail")
        def rpc_fail(self, content: Any, reply_func: Any) -> None:
            raise KeyError("no such thing")

    for name, value in attrs.items():
        setattr(Processor, name, value)
    return Processor({"name": "test"}, [(exchange, [(queue, "rk")])], None, None)


class Producer(messaging.GenericProducer):
    pass


@pytest.fixture
def setup(env_url: str, uid: str) -> Iterator[tuple[type[messaging.Exchange], str, Calls]]:
    exchange = exchange_cls(uid)
    queue = f"classic-q-{uid}"
    yield exchange, queue, Calls()
    with pika.BlockingConnection(pika.URLParameters(env_url)) as conn:
        channel = conn.channel()
        channel.queue_delete(queue)
        channel.queue_delete(f"{queue}.dlq")


def producer_for(exchange: type[messaging.Exchange]) -> Producer:
    cls = type("P", (Producer,), {"eks": [(exchange, "rk")]})
    return cls(messaging.Fingerprint("test_producer", "test").as_dict())


def test_pika_calls_an_rpc_handler_and_reads_a_producer_message(setup: Any, env_url: str) -> None:
    exchange, queue, calls = setup
    processor = make_processor(exchange, queue, calls)
    with running(processor), pika.BlockingConnection(pika.URLParameters(env_url)) as conn:
        channel = conn.channel()
        reply_queue = channel.queue_declare("", exclusive=True).method.queue
        request = {"type": "command", "name": "echo", "category": "rpc", "version": "2",
                   "fingerprint": {"name": "pika"}, "content": {"parameters": [1, "two"]},
                   "_reserved": {}}
        cid = uuid.uuid4().hex
        channel.basic_publish(exchange.name, "rk", json.dumps(request).encode(),
                              pika.BasicProperties(content_type="application/json",
                                                   reply_to=reply_queue, correlation_id=cid))
        reply = None
        for method, props, body in channel.consume(reply_queue, inactivity_timeout=15):
            assert method is not None, "no reply"
            reply = (props, json.loads(body))
            channel.basic_ack(method.delivery_tag)
            break
        channel.cancel()
        assert reply is not None
        props, body = reply
        assert props.correlation_id == cid
        assert body["version"] == "2" and body["type"] == "result"
        assert body["category"] == "message"
        assert body["content"] == {"type": "success", "value": [1, "two"], "message": ""}
        assert body["fingerprint"]["name"] == "test"

        # a message sent by a producer, read by plain pika
        plain = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(plain, exchange.name, "plain-rk")
        producer_for(exchange).message_hello("hi", n=1, _key="plain-rk")
        method, props, raw = channel.basic_get(plain, auto_ack=True)
        assert method is not None and props.content_type == "application/json"
        message = json.loads(raw)
        assert message["type"] == "command" and message["name"] == "hello"
        assert message["content"] == {"parameters": {"args": ["hi"], "kwds": {"n": 1}}}
        assert message["fingerprint"]["name"] == "test_producer"
        assert message["fingerprint"]["type"] == "test"

        # the forms Postage 1.2 sent, byte for byte in their content
        sent = producer_for(exchange)
        sent.message_hello("fan", _key="plain-rk")
        sent.message_hello(parameters={"a": [1, 2]}, _key="plain-rk")
        sent.message_hello(_key="plain-rk")
        contents = []
        for _ in range(3):
            method, props, raw = channel.basic_get(plain, auto_ack=True)
            assert method is not None
            contents.append(json.loads(raw)["content"])
        assert contents == [{"parameters": "fan"}, {"parameters": {"a": [1, 2]}},
                            {"parameters": {}}]


def test_persistent_producers_send_persistent_messages(setup: Any, env_url: str) -> None:
    exchange, _queue, _calls = setup
    default = producer_for(exchange)  # (declares the exchange)
    kept = type("Kept", (type(default),), {"persistent": True})(
        messaging.Fingerprint("test_producer", "test").as_dict())
    with pika.BlockingConnection(pika.URLParameters(env_url)) as conn:
        channel = conn.channel()
        plain = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(plain, exchange.name, "kept-rk")
        default.message_hello("transient", _key="kept-rk")
        kept.message_hello("persistent", _key="kept-rk")
        modes = {}
        for _ in range(2):
            method, props, raw = channel.basic_get(plain, auto_ack=True)
            assert method is not None
            modes[json.loads(raw)["content"]["parameters"]] = props.delivery_mode
        assert modes == {"transient": None, "persistent": 2}


def test_rpc_returns_message_objects(setup: Any) -> None:
    exchange, queue, calls = setup
    with running(make_processor(exchange, queue, calls)):
        producer = producer_for(exchange)
        reply = producer.rpc_echo("x", k=2)
        assert isinstance(reply, messaging.MessageResult) and reply
        assert reply.body["content"]["value"] == {"args": ["x"], "kwds": {"k": 2}}
        failed = producer.rpc_fail()
        assert isinstance(failed, messaging.MessageResultException) and not failed
        assert failed.body["content"]["value"] == "KeyError"
        assert "no such thing" in failed.body["content"]["message"]
        # as Postage 1.2 sent it: no traceback, no fingerprint of the server (opt-in)
        assert "traceback" not in failed.body["_reserved"]
        assert not failed.body["fingerprint"]
        queue_name = producer.rpc_queue_echo("via queue")
        assert queue_name.startswith("postage.classic.reply.")
        answer = producer.consume_rpc(queue_name, timeout=15)
        assert answer.body["content"]["value"] == "via queue"
        queue_name = producer.rpc_echo("q2", _queue_only=True)
        assert producer.consume_rpc(queue_name, timeout=15)


def test_rpc_timeout_retries_then_timeout_error(setup: Any) -> None:
    exchange, queue, calls = setup
    with running(make_processor(exchange, queue, calls)):
        producer = producer_for(exchange)
        started = time.monotonic()
        result = producer.rpc_silent(_timeout=0.5, _max_retry=2)
        elapsed = time.monotonic() - started
        assert isinstance(result, messaging.MessageResultException) and not result
        assert result.body["content"]["value"] == "TimeoutError"
        assert 1.4 < elapsed < 10
        assert len(calls.wait_sync(3)) == 3  # 1 + _max_retry tries reached the handler
        type(producer).max_retry = 0
        type(producer).rpc_timeout = 0.3
        assert producer.rpc_silent().body["content"]["value"] == "TimeoutError"
        assert len(calls.wait_sync(4)) == 4


def test_rpc_to_nowhere_fails_fast(setup: Any) -> None:
    exchange, _queue, _calls = setup
    producer = producer_for(exchange)
    started = time.monotonic()
    result = producer.rpc_echo(_key="nobody-listens")
    assert not result and result.body["content"]["value"] == "Unroutable"
    assert time.monotonic() - started < 5


def _dlq_headers(url: str, dlq: str, n: int) -> list[dict[str, Any]]:
    headers = []
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        deadline = time.monotonic() + 15
        while len(headers) < n and time.monotonic() < deadline:
            method, props, _body = channel.basic_get(dlq, auto_ack=True)
            if method is None:
                conn.sleep(0.05)
                continue
            headers.append(props.headers)
    return headers


def test_bad_messages_go_to_dlq_and_processing_goes_on(setup: Any, env_url: str) -> None:
    exchange, queue, calls = setup
    producer = producer_for(exchange)
    with running(make_processor(exchange, queue, calls)):
        core = _runtime.shared_core()
        bad_version = json.dumps({"type": "command", "name": "work", "category": "message",
                                  "version": "1", "content": {}}).encode()
        for raw in (b"\xff not json", bad_version):
            _runtime.portal().call(lambda raw=raw: core.publish(
                exchange.name, "rk", raw, core.properties()), timeout=10)
        producer.message_work(n=1)
        producer.message_boom()  # no handler: acked and dropped, like the original
        assert calls.wait_sync(1) == [("work", {"args": [], "kwds": {"n": 1}})]
        headers = _dlq_headers(env_url, f"{queue}.dlq", 2)
    assert [h["x-postage-reason"] for h in headers] == ["undecodable", "undecodable"]
    assert "version" in headers[1]["x-postage-error"]


def test_failing_rpc_handler_message_is_dead_lettered(setup: Any, env_url: str) -> None:
    exchange, queue, calls = setup
    with running(make_processor(exchange, queue, calls)):
        assert not producer_for(exchange).rpc_fail()
        headers = _dlq_headers(env_url, f"{queue}.dlq", 1)
    assert headers[0]["x-postage-reason"] == "handler-failed"
    assert "KeyError" in headers[0]["x-postage-error"]


@pytest.mark.slow
def test_blocking_handler_keeps_heartbeats(setup: Any, classic_url: str, classic_vhost: str,
                                           monkeypatch: pytest.MonkeyPatch, broker: Any) -> None:
    exchange, queue, calls = setup
    url = url_with_vhost(classic_url, classic_vhost, "heartbeat=2")
    monkeypatch.setenv("POSTAGE_URL", url)
    processor = make_processor(exchange, queue, calls)
    core = processor.consumer.core
    assert core.settings.heartbeat == 2
    with running(processor):
        producer_for(exchange).message_work(sleep=6.5)  # more than 3 heartbeat intervals
        items = calls.wait_sync(1, timeout=30)
        assert items == [("work", {"args": [], "kwds": {"sleep": 6.5}})]
        messages, _consumers = _runtime.portal().call(
            lambda: core.transport.queue_state(queue), timeout=10)
        assert messages == 0
    assert len(calls.items) == 1  # no redelivery
    assert core.transport.reconnections == 0  # no disconnect


def test_pipelined_messages_all_arrive_and_failures_surface_later(
        setup: Any, env_url: str) -> None:
    exchange, queue, calls = setup
    cls = type("PipelinedProducer", (Producer,), {"eks": [(exchange, "rk")], "pipeline": 8})
    producer = cls(messaging.Fingerprint("test_producer", "test").as_dict())
    processor = make_processor(exchange, queue, calls)
    with running(processor):
        for i in range(50):
            producer.message_work(i)
        producer.flush()  # every message confirmed by now
        assert sorted(c[1] for c in calls.wait_sync(50)) == list(range(50))
        # a pipelined message nobody can receive returns at once; flush raises its failure
        producer.message_work(_key="nobody-listens")
        with pytest.raises(postage.Unroutable):
            producer.flush()
        producer.flush()  # raised once
        # ... and so does the next call, once the broker has answered
        producer.message_work(_key="nobody-listens")
        assert producer._pipeline.wait_settled(15)
        with pytest.raises(postage.Unroutable):
            producer.message_work(50)
        producer.message_work(51)
        producer.close()
        assert {c[1] for c in calls.wait_sync(51)} == set(range(50)) | {51}
