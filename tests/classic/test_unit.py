"""Classic API without a broker: messages, exchanges, handler registration, filters,
producer magic, settings from the environment, the microthread scheduler."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest

from postage import ConfigurationError, EncodingError, messaging, microthreads
from postage._api.classic import runtime as _runtime
from postage._api.classic.consumer import _pairs, queue_spec
from postage._api.classic.messages import message_from_body
from postage._api.classic.producer import _default_build
from postage._wire.properties import QueueSpec

# -- messages ------------------------------------------------------------------------------

def test_command_body_is_envelope_v2() -> None:
    m = messaging.MessageCommand("sum", parameters={"a": 5, "b": 6})
    f = messaging.Fingerprint(name="mycomponent")
    m.fingerprint(**f.as_dict())
    assert m.body == {
        "type": "command", "name": "sum", "category": "message", "version": "2",
        "fingerprint": f.as_dict(), "content": {"parameters": {"a": 5, "b": 6}},
        "_reserved": {},
    }
    assert messaging.RpcCommand("sum").body["category"] == "rpc"
    assert messaging.RpcCommand("sum").body["content"] == {"parameters": {}}


def test_status_and_generic_message() -> None:
    assert messaging.MessageStatus("online").body["name"] == "online"
    assert messaging.MessageStatus("online").body["type"] == "status"
    m = messaging.Message(1, "str", values={1, 2, 3, "numbers"})
    assert m.body["content"]["args"] == [1, "str"]
    assert sorted(map(str, m.body["content"]["kwds"]["values"])) == ["1", "2", "3", "numbers"]


def test_results_truthiness_and_content() -> None:
    ok = messaging.MessageResult("Pong")
    err = messaging.MessageResultError("bad input")
    exc = messaging.MessageResultException("ValueError", "boom")
    assert ok and not err and not exc
    assert messaging.Message()  # non-results are truthy
    assert ok.body["content"] == {"type": "success", "value": "Pong", "message": ""}
    assert err.body["content"] == {"type": "error", "value": None, "message": "bad input"}
    assert exc.body["content"] == {"type": "exception", "value": "ValueError", "message": "boom"}


def test_equality_by_body() -> None:
    assert messaging.MessageResult(1) == messaging.MessageResult(1)
    assert messaging.MessageResult(1) != messaging.MessageResult(2)
    assert messaging.MessageResult(None, "x") != messaging.MessageResultError("x")
    assert messaging.MessageResult(1) != object()


def test_message_from_body_restores_the_class() -> None:
    for original in (messaging.MessageResult([1]), messaging.MessageResultError("e"),
                     messaging.MessageResultException("E", "m"), messaging.RpcCommand("c"),
                     messaging.MessageStatus("s")):
        rebuilt = message_from_body(copy.deepcopy(original.body))
        assert type(rebuilt) is type(original)
        assert rebuilt == original and bool(rebuilt) == bool(original)


def test_fingerprint_positional_name_type() -> None:
    f = messaging.Fingerprint("echo_send", "application").as_dict()
    assert f["name"] == "echo_send" and f["type"] == "application"
    assert set(f) == {"name", "type", "pid", "host", "user", "vhost"}
    assert messaging.Fingerprint(name="x").as_tuple()[:2] == ("x", None)


def test_json_encoder() -> None:
    encoder = messaging.JsonEncoder()
    assert encoder.content_type == "application/json"
    assert encoder.decode(encoder.encode({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(EncodingError):
        encoder.encode({"a": object()})
    assert isinstance(encoder, messaging.Encoder)


# -- exchanges ------------------------------------------------------------------------------

def test_exchange_parameters_class_property() -> None:
    class MyExchange(messaging.Exchange):
        name = "my-custom-exchange"
        exchange_type = "topic"
        passive = False
        durable = True
        auto_delete = False

    assert MyExchange.parameters == {
        "exchange": "my-custom-exchange", "exchange_type": "topic", "passive": False,
        "durable": True, "auto_delete": False,
    }


# -- consumers: eqk ----------------------------------------------------------------------

def test_queue_flags() -> None:
    assert queue_spec("q") == QueueSpec("q")
    assert queue_spec({"name": "q", "flags": {"auto_delete": True}}).auto_delete
    with pytest.raises(ConfigurationError):
        queue_spec({"name": "q", "flags": {"bogus": 1}})
    with pytest.raises(ConfigurationError):
        queue_spec(42)  # type: ignore[arg-type]


def test_eqk_forms() -> None:
    class A(messaging.Exchange):
        name = "a"

    class B(messaging.Exchange):
        name = "b"

    nested = [(A, [("qa", "ka")]), (B, [("qb", "kb")])]
    flat = (A, [("qa", "ka")], B, [("qb", "kb")])  # the README's GenericConsumer example
    assert _pairs(nested) == _pairs(flat) == nested


# -- handlers ----------------------------------------------------------------------------

class Recorder(messaging.MessageProcessor):
    """A processor built without a connection, to exercise registration and dispatch."""

    @messaging.MessageHandler("command", "ping")
    def msg_ping(self, content: Any) -> None:
        self.seen.append(("content", content))

    @messaging.MessageHandlerFullBody("command", "ping")
    def msg_ping_full(self, body: Any) -> None:
        self.seen.append(("body", body["name"]))

    @messaging.MessageHandler("command", "ping")
    class MsgPing(messaging.Handler):
        def call(self) -> None:
            self.processor.seen.append(("class", self.data, self.reply_func))

    @messaging.RpcHandler("command", "ping")
    def rpc_ping(self, content: Any, reply_func: Any) -> None:
        reply_func(messaging.MessageResult("Pong"))

    @messaging.MessageHandler("command", "filtered")
    @messaging.MessageFilter(lambda body: body["content"]["parameters"]["must"])
    def msg_filtered(self, content: Any) -> None:
        self.seen.append(("filtered", content))

    @messaging.MessageHandler("command", "filtered")
    def msg_unfiltered(self, content: Any) -> None:
        self.seen.append(("unfiltered", content))

    @messaging.MessageHandler("command", "upgrade")
    @messaging.MessageFilter(lambda body: {**body, "content": {"parameters": {"v": 2}}})
    def msg_upgrade(self, content: Any) -> None:
        self.seen.append(("upgraded", content))

    @messaging.MessageHandler("command", "boom")
    def msg_boom(self, content: Any) -> None:
        raise ValueError("boom")

    @messaging.MessageHandler("command", "boom")
    def msg_after_boom(self, content: Any) -> None:
        self.seen.append(("after", content))


def recorder() -> Recorder:
    processor = Recorder.__new__(Recorder)
    processor.seen = []  # type: ignore[attr-defined]
    processor.fingerprint = {"name": "rec"}
    return processor


def dispatch(processor: Recorder, message: messaging.Message, reply: Any = None) -> Any:
    body = copy.deepcopy(message.body)
    handlers = processor.handlers_for(body["category"], body["type"], body["name"])
    return processor._run_handlers(body, handlers, reply)


def test_registration_table() -> None:
    table = Recorder._message_handlers
    assert len(table[("message", "command", "ping")]) == 3
    assert len(table[("rpc", "command", "ping")]) == 1
    assert ("message", "command", "quit") in table and ("message", "command", "restart") in table
    assert ("message", "command", "ping") not in messaging.MessageProcessor._message_handlers


def test_several_handlers_of_all_kinds_on_one_message() -> None:
    processor = recorder()
    assert dispatch(processor, messaging.MessageCommand("ping", {"x": 1})) is None
    seen = processor.seen  # type: ignore[attr-defined]
    assert ("content", {"parameters": {"x": 1}}) in seen
    assert ("body", "ping") in seen
    assert ("class", {"parameters": {"x": 1}}, None) in seen
    assert len(seen) == 3


def test_rpc_handler_gets_reply_func() -> None:
    processor, replies = recorder(), []
    dispatch(processor, messaging.RpcCommand("ping"), replies.append)
    assert replies == [messaging.MessageResult("Pong")]


def test_filter_exception_discards_for_that_handler_only() -> None:
    processor = recorder()
    dispatch(processor, messaging.MessageCommand("filtered", {"other": 1}))
    assert processor.seen == [("unfiltered", {"parameters": {"other": 1}})]  # type: ignore[attr-defined]
    processor = recorder()
    dispatch(processor, messaging.MessageCommand("filtered", {"must": 1}))
    assert len(processor.seen) == 2  # type: ignore[attr-defined]


def test_filter_can_transform_a_copy() -> None:
    processor = recorder()
    message = messaging.MessageCommand("upgrade", {"v": 1})
    dispatch(processor, message)
    assert processor.seen == [("upgraded", {"parameters": {"v": 2}})]  # type: ignore[attr-defined]
    assert message.body["content"] == {"parameters": {"v": 1}}


def test_handler_error_is_returned_after_the_other_handlers_ran() -> None:
    processor = recorder()
    error = dispatch(processor, messaging.MessageCommand("boom"))
    assert isinstance(error, ValueError)
    assert processor.seen == [("after", {"parameters": {}})]  # type: ignore[attr-defined]


def test_quit_and_restart_defaults_stop_the_processor() -> None:
    import threading

    for command, reason in (("quit", "quit"), ("restart", "restart")):
        processor = recorder()
        processor._stop_event = threading.Event()
        processor._stop_reason = None
        dispatch(processor, messaging.MessageCommand(command))
        assert processor.stopping and processor._stop_reason == reason


# -- producer magic (no I/O) -------------------------------------------------------------

class PingProducer(messaging.GenericProducer):
    def build_message_ping(self) -> messaging.Message:
        return messaging.MessageCommand("ping")

    def build_rpc_ping(self) -> messaging.Message:
        return messaging.RpcCommand("ping")


def bare_producer() -> PingProducer:
    return PingProducer.__new__(PingProducer)


def test_magic_methods_are_found_and_listed() -> None:
    producer = bare_producer()
    for name in ("message_ping", "rpc_ping", "rpc_queue_ping", "message_other", "rpc_other"):
        assert isinstance(getattr(producer, name), functools.partial)
    assert producer.rpc_queue_ping.keywords == {"_queue_only": True}
    assert {"message_ping", "rpc_ping", "rpc_queue_ping"} <= set(dir(producer))
    with pytest.raises(AttributeError):
        producer.something_else  # noqa: B018


@pytest.mark.parametrize(("args", "kwds", "parameters"), [
    (("fan",), {}, "fan"),                       # message_hello('fan'), as in 1.2
    ((), {"parameters": {"x": 1}}, {"x": 1}),    # message_hello(parameters=...)
    ((), {}, {}),                                # message_hello()
    (([1, 2],), {}, [1, 2]),
    ((None,), {}, {}),                           # MessageCommand('hello', None)
])
def test_default_build_sends_what_postage_1_2_sent(
        args: tuple[Any, ...], kwds: dict[str, Any], parameters: Any) -> None:
    for kind in ("message", "rpc"):
        m = _default_build(kind, "hello", *args, **kwds)
        assert m.body["content"] == {"parameters": parameters}
        assert m.body["type"] == "command" and m.body["name"] == "hello"


def test_default_build_packs_args_and_kwds() -> None:
    m = _default_build("message", "echo", "A test message", x=1)
    assert m.body["content"] == {"parameters": {"args": ["A test message"], "kwds": {"x": 1}}}
    assert m.body["category"] == "message"
    assert _default_build("rpc", "echo").body["category"] == "rpc"


def test_class_defaults() -> None:
    assert messaging.GenericProducer.rpc_timeout == 30
    assert messaging.GenericProducer.max_retry == 4
    assert messaging.GenericConsumer.retry_policy.max_attempts == 1


# -- environment -------------------------------------------------------------------------

def test_global_vhost_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTAGE_URL", raising=False)
    monkeypatch.delenv("POSTAGE_VHOST", raising=False)
    assert messaging.global_vhost == "/"
    monkeypatch.setenv("POSTAGE_VHOST", "staging")
    assert messaging.global_vhost == "staging"
    monkeypatch.setenv("POSTAGE_URL", "amqp://u:p@h:5672/prod")
    assert messaging.global_vhost == "prod"  # POSTAGE_URL wins


def test_connection_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSTAGE_URL", "POSTAGE_VHOST", "POSTAGE_HOST", "POSTAGE_USER",
                 "POSTAGE_PASSWORD", "POSTAGE_RMQ_USER", "POSTAGE_RMQ_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert _runtime.connection_url() == "amqp://guest:guest@localhost:5672/%2F"
    monkeypatch.setenv("POSTAGE_RMQ_USER", "old")
    monkeypatch.setenv("POSTAGE_PASSWORD", "pw")
    monkeypatch.setenv("POSTAGE_HOST", "rabbit")
    assert _runtime.connection_url(None, "dev") == "amqp://old:pw@rabbit:5672/dev"
    hup = {"host": "h", "user": "u", "password": "p"}
    assert _runtime.connection_url(hup, None) == "amqp://u:p@h:5672/%2F"
    assert _runtime.connection_url(("h", "u", "p"), "v") == "amqp://u:p@h:5672/v"
    monkeypatch.setenv("POSTAGE_URL", "amqp://a:b@x:1/y?heartbeat=2")
    assert _runtime.connection_url() == "amqp://a:b@x:1/y?heartbeat=2"
    assert _runtime.connection_url(None, "/") == "amqp://a:b@x:1/%2F?heartbeat=2"
    with pytest.raises(ConfigurationError):
        _runtime.connection_url("nonsense", None)


def test_debug_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTAGE_DEBUG_MODE", "TRUE")
    assert _runtime.debug_mode()
    monkeypatch.setenv("POSTAGE_DEBUG_MODE", "no")
    assert not _runtime.debug_mode()


def test_import_does_not_print_or_connect() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "from postage import messaging, microthreads, "
         "generic_application; import threading; print(threading.active_count())"],
        capture_output=True, text=True, timeout=60, check=True,
        env={"POSTAGE_DEBUG_MODE": "true", "PATH": ""})
    assert out.stdout == "1\n" and out.stderr == ""


# -- microthreads ------------------------------------------------------------------------

class Counter(microthreads.MicroThread):
    def __init__(self, n: int, fail: BaseException | None = None) -> None:
        super().__init__()
        self.n, self.fail, self.steps = n, fail, 0

    def step(self) -> bool:
        self.steps += 1
        if self.fail is not None and self.steps == self.n:
            raise self.fail
        return self.steps < self.n


def test_scheduler_runs_until_all_finish() -> None:
    scheduler = microthreads.MicroScheduler()
    a, b = Counter(2), Counter(5)
    scheduler.add_microthread(a)
    scheduler.add_microthread(b)
    rounds = sum(1 for _ in scheduler.main())
    assert (a.steps, b.steps) == (2, 5) and rounds == 5


@pytest.mark.parametrize("exc", [microthreads.ExitScheduler(), KeyboardInterrupt()])
def test_scheduler_exits_on_exit_scheduler_and_ctrl_c(exc: BaseException) -> None:
    scheduler = microthreads.MicroScheduler()
    stopper, other = Counter(3, exc), Counter(100)
    scheduler.add_microthread(stopper)
    scheduler.add_microthread(other)
    for _ in scheduler.main():
        pass
    assert stopper.steps == 3 and other.steps < 100
