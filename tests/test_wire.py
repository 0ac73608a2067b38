"""Property tests of the wire format: decoding is total (any bytes give an envelope or a
DecodingError), encoders round-trip, fingerprints and envelope validation; plus a bounded
fuzz of the consumer dispatch path (Subscription -> decode -> handler or dead letter)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postage import (
    DecodingError,
    EncodingError,
    Fingerprint,
    JsonEncoder,
    MessageTooLarge,
    UnsupportedContentType,
    UnsupportedVersion,
)
from postage._core.core import Core, HandlingOptions, Subscription
from postage._core.middleware import IncomingMessage
from postage._wire.encoding import to_json_value
from postage._wire.envelope import (
    ENVELOPE_KEYS,
    build_envelope,
    decode_envelope,
    result_content,
    validate_envelope,
)

ENCODERS = [JsonEncoder(), JsonEncoder(use_orjson=False)]
INTS = st.integers(-(2**63), 2**63 - 1) | st.integers(-(10**40), 10**40)  # past 64 bits too
json_values = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
def _built(**fields: Any) -> dict[str, Any] | None:
    try:
        return build_envelope(**fields)
    except EncodingError:  # e.g. a result without a result content: refused by the builder
        return None


envelopes = st.builds(
    _built,
    type=st.text(min_size=1, max_size=20),
    name=st.text(max_size=20),
    category=st.sampled_from(["message", "rpc"]),
    content=json_values,
    fingerprint=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    reserved=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
).filter(lambda envelope: envelope is not None)


# -- decoding is total ------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODERS, ids=["orjson", "stdlib"])
@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
def test_json_decode_is_total(encoder: JsonEncoder, data: bytes) -> None:
    try:
        encoder.decode(data)
    except DecodingError:
        pass


@settings(max_examples=600)
@given(
    data=st.one_of(
        st.binary(max_size=2000),
        json_values.map(lambda v: json.dumps(v).encode()),
        envelopes.map(lambda e: json.dumps(e).encode()),
        st.dictionaries(st.sampled_from([*sorted(ENVELOPE_KEYS), "x"]), json_values)
        .map(lambda d: json.dumps(d).encode()),
    ),
    content_type=st.sampled_from([None, "", "application/json", "text/plain"]),
)
def test_decode_envelope_is_total(data: bytes, content_type: str | None) -> None:
    try:
        result = decode_envelope(data, content_type, max_size=1000)
    except DecodingError:
        return
    assert isinstance(result, dict)
    assert result["version"] == "2"
    assert set(result) <= ENVELOPE_KEYS


def test_deep_nesting_is_a_decoding_error() -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        for encoder in ENCODERS:
            with pytest.raises(DecodingError):
                encoder.decode(body)
        with pytest.raises(DecodingError):
            decode_envelope(body, "application/json", max_size=None)


def test_decode_envelope_checks_size_and_content_type_before_decoding() -> None:
    class Exploding(JsonEncoder):
        def decode(self, data: bytes) -> Any:
            raise AssertionError("must not be reached")

    with pytest.raises(MessageTooLarge):
        decode_envelope(b"x" * 11, None, Exploding(), max_size=10)
    with pytest.raises(UnsupportedContentType):
        decode_envelope(b"{}", "application/x-pickle", Exploding())
    with pytest.raises(DecodingError, match="empty"):
        decode_envelope(b"", None, Exploding())
    accepted = decode_envelope(
        json.dumps(build_envelope("t", "n")).encode(), "application/vnd.x",
        accept={"application/vnd.x"},
    )
    assert accepted["name"] == "n"


def test_a_broken_user_encoder_still_gives_decoding_error() -> None:
    class Broken(JsonEncoder):
        def decode(self, data: bytes) -> Any:
            raise KeyError("oops")

    with pytest.raises(DecodingError, match="Broken failed"):
        decode_envelope(b"{}", None, Broken())


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODERS, ids=["orjson", "stdlib"])
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_encoder_round_trip(encoder: JsonEncoder, value: Any) -> None:
    assert encoder.decode(encoder.encode(value)) == value


@settings(max_examples=300)
@given(envelope=envelopes)
def test_envelope_round_trip(envelope: dict[str, Any]) -> None:
    body = JsonEncoder().encode(envelope)
    assert decode_envelope(body, "application/json") == envelope


@settings(max_examples=500)
@given(type_=st.sampled_from(["result", "command", ""]) | st.text(max_size=8),
       content=json_values | st.builds(result_content, st.sampled_from(["success", "error"]),
                                        json_values))
def test_the_builder_builds_only_what_the_decoder_accepts(type_: str, content: Any) -> None:
    """``build_envelope`` refuses (EncodingError) or builds what decodes back unchanged."""
    try:
        envelope = build_envelope(type_, "", "message", content)
    except EncodingError:
        with pytest.raises(DecodingError):
            validate_envelope({"type": type_, "name": "", "category": "message",
                               "version": "2", "content": {} if content is None else content})
        return
    assert decode_envelope(JsonEncoder().encode(envelope), "application/json") == envelope


def test_a_result_without_result_content_is_refused_when_built() -> None:
    # decode_envelope refused it: the property test above failed about 1 run in 12
    with pytest.raises(EncodingError):
        build_envelope(type="result", name="", category="message", content=None,
                       fingerprint={}, reserved={})


@pytest.mark.parametrize("encoder", ENCODERS, ids=["orjson", "stdlib"])
@pytest.mark.parametrize(
    "value", [-(2**63) - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(10**30), 10**300]
)
def test_big_integers_round_trip(encoder: JsonEncoder, value: int) -> None:
    decoded = encoder.decode(encoder.encode({"n": value}))["n"]
    assert type(decoded) is int and decoded == value
    decoded = encoder.decode(f'{{"n": {value}, "pad": [1.5, "x"]}}'.encode())["n"]
    assert type(decoded) is int and decoded == value


@settings(max_examples=400)
@given(
    text=st.one_of(
        json_values.map(json.dumps),
        st.lists(st.integers() | st.floats(allow_nan=False) | st.text(st.characters(
            categories=["Nd", "P"]), max_size=25), max_size=8).map(json.dumps),
        st.text(alphabet='0123456789-+.eE[]{},:" NaInfity', max_size=60),
    ),
)
def test_orjson_and_stdlib_decode_alike(text: str) -> None:
    """The fast path never changes a value: both decoders agree, value and type."""
    fast, slow = ENCODERS
    outcomes = []
    for encoder in (fast, slow):
        try:
            outcomes.append(("ok", encoder.decode(text.encode())))
        except DecodingError:
            outcomes.append(("error", None))
    assert outcomes[0] == outcomes[1]
    assert repr(outcomes[0]) == repr(outcomes[1])  # 1 vs 1.0 and True vs 1 differ in repr


@pytest.mark.parametrize("encoder", ENCODERS, ids=["orjson", "stdlib"])
@pytest.mark.parametrize(
    "body", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400", b"[-1e999]"]
)
def test_non_standard_numbers_are_refused_on_decode(encoder: JsonEncoder, body: bytes) -> None:
    with pytest.raises(DecodingError):
        encoder.decode(body)


def test_encoders_agree_and_refuse_what_json_cannot_hold() -> None:
    value = {"a": [1, 2.5, "é", None, True], "big": 2**70, "t": (1, 2)}
    fast, slow = ENCODERS
    assert fast.decode(slow.encode(value)) == slow.decode(fast.encode(value))
    assert fast.decode(fast.encode(value))["t"] == [1, 2]
    for bad in ({1, 2}, object(), b"bytes"):
        for encoder in ENCODERS:
            with pytest.raises(EncodingError):
                encoder.encode(bad)


class _Float(float):
    pass


@pytest.mark.parametrize("encoder", ENCODERS, ids=["orjson", "stdlib"])
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {"x": [float("-inf")]}, {"a": None, "b": (1, float("nan"))},
     [None, {"deep": [[{"v": _Float("inf")}]]}]],
)
def test_non_finite_floats_are_refused(encoder: JsonEncoder, value: Any) -> None:
    with pytest.raises(EncodingError):
        encoder.encode(value)


def test_null_and_the_word_null_still_take_the_fast_path() -> None:
    fast = ENCODERS[0]
    value = {"a": None, "s": "null", "f": [1.5, -0.0, 1e308]}
    assert fast.encode(value) == b'{"a":null,"s":"null","f":[1.5,-0.0,1e+308]}'  # orjson
    assert fast.decode(fast.encode(value)) == value


# -- values JSON has no type for: the same bytes with and without orjson ---------------


class _Colour(enum.Enum):
    RED = "red"
    DAY = datetime.date(2024, 2, 29)


class _Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class _Point:
    x: int
    at: datetime.datetime
    tag: uuid.UUID | None = None


@dataclasses.dataclass(slots=True)
class _Slotted:
    inner: _Point


_UTC = datetime.UTC
_PLUS_SECONDS = datetime.timezone(datetime.timedelta(hours=1, seconds=45))
_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
_POINT = _Point(1, datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=_UTC), _ID)
SENDABLE = [
    (datetime.datetime(2024, 1, 2, 3, 4, 5), b'"2024-01-02T03:04:05"'),
    (datetime.datetime(2024, 1, 2, 3, 4, 5, 123), b'"2024-01-02T03:04:05.000123"'),
    (datetime.datetime(2024, 1, 2, tzinfo=_UTC), b'"2024-01-02T00:00:00+00:00"'),
    (datetime.datetime(2024, 1, 2, tzinfo=_PLUS_SECONDS), b'"2024-01-02T00:00:00+01:00:45"'),
    (datetime.date(2024, 2, 29), b'"2024-02-29"'),
    (datetime.time(1, 2, 3, 5), b'"01:02:03.000005"'),
    (datetime.time(1, 2, tzinfo=_UTC), b'"01:02:00+00:00"'),
    (_ID, b'"12345678-1234-5678-1234-567812345678"'),
    (_Colour.RED, b'"red"'),
    (_Colour.DAY, b'"2024-02-29"'),
    (_Level.HIGH, b"3"),
    (_POINT, b'{"x":1,"at":"2024-01-02T03:04:05.000006+00:00",'
             b'"tag":"12345678-1234-5678-1234-567812345678"}'),
    (_Slotted(_Point(2, datetime.datetime(2000, 1, 1))),
     b'{"inner":{"x":2,"at":"2000-01-01T00:00:00","tag":null}}'),
    ({"when": [datetime.date(1, 1, 1)], "k": (_Level.HIGH,)}, b'{"when":["0001-01-01"],"k":[3]}'),
]
REFUSED = [b"bytes", {1, 2}, decimal.Decimal("1.5"), object(), 1j,
           datetime.timedelta(seconds=1), _Point, {"deep": [{"v": frozenset()}]}]


@pytest.mark.parametrize("encoder", ENCODERS, ids=["orjson", "stdlib"])
@pytest.mark.parametrize(("value", "expected"), SENDABLE)
def test_dates_uuids_enums_and_dataclasses_are_sent_alike(
        encoder: JsonEncoder, value: Any, expected: bytes) -> None:
    assert encoder.encode(value) == expected


@pytest.mark.parametrize("encoder", ENCODERS, ids=["orjson", "stdlib"])
@pytest.mark.parametrize("value", REFUSED)
def test_what_json_cannot_hold_is_refused_alike(encoder: JsonEncoder, value: Any) -> None:
    with pytest.raises(EncodingError):
        encoder.encode(value)


@given(value=st.datetimes(timezones=st.none() | st.timezones()) | st.dates() | st.times()
       | st.uuids() | st.builds(_Point, st.integers(), st.datetimes(), st.none() | st.uuids()))
def test_orjson_and_stdlib_send_the_same_bytes(value: Any) -> None:
    fast, slow = ENCODERS
    assert fast.encode(value) == slow.encode(value) == json.dumps(
        value, default=to_json_value, separators=(",", ":")).encode()


# -- fingerprint ------------------------------------------------------------------------


@given(
    name=st.none() | st.text(max_size=10), type_=st.none() | st.text(max_size=10),
    pid=st.integers(0, 2**31), host=st.text(max_size=10), user=st.text(max_size=10),
    vhost=st.text(max_size=10),
)
def test_fingerprint_dict_and_tuple(
    name: str | None, type_: str | None, pid: int, host: str, user: str, vhost: str
) -> None:
    fp = Fingerprint(name, type_, pid, host, user, vhost)
    assert fp.as_tuple() == (name, type_, pid, host, user, vhost)
    assert fp.as_dict() == dict(zip(("name", "type", "pid", "host", "user", "vhost"),
                                    fp.as_tuple(), strict=True))
    assert Fingerprint(**fp.as_dict()) == fp
    assert hash(Fingerprint(**fp.as_dict())) == hash(fp)
    assert JsonEncoder().decode(JsonEncoder().encode(fp.as_dict())) == fp.as_dict()


def test_fingerprint_defaults_from_the_os() -> None:
    fp = Fingerprint("svc", "worker", vhost="/")
    assert isinstance(fp.pid, int) and fp.host
    assert fp != Fingerprint("other", "worker", vhost="/")


# -- validate_envelope ------------------------------------------------------------------


GOOD = build_envelope("command", "ping", content={"x": 1})


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"type": ""}, DecodingError),
        ({"type": 3}, DecodingError),
        ({"name": 3}, DecodingError),
        ({"category": "other"}, DecodingError),
        ({"version": "1"}, UnsupportedVersion),
        ({"version": 2}, UnsupportedVersion),
        ({"fingerprint": "x"}, DecodingError),
        ({"_reserved": [1]}, DecodingError),
        ({"extra": 1}, DecodingError),
        ({"type": "result", "content": {"type": "nope"}}, DecodingError),
        ({"type": "result", "content": []}, DecodingError),
    ],
)
def test_validate_envelope_refuses(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_envelope({**GOOD, **change})


@pytest.mark.parametrize("missing", ["type", "name", "category", "version", "content"])
def test_validate_envelope_missing_keys(missing: str) -> None:
    env = dict(GOOD)
    del env[missing]
    with pytest.raises(DecodingError):
        validate_envelope(env)


def test_validate_envelope_accepts_and_fills_defaults() -> None:
    env = {k: v for k, v in GOOD.items() if k not in ("fingerprint", "_reserved")}
    assert validate_envelope(dict(env))["fingerprint"] == {}
    nulls = validate_envelope({**GOOD, "fingerprint": None, "_reserved": None})
    assert (nulls["fingerprint"], nulls["_reserved"]) == ({}, {})
    result = build_envelope("result", "r", content=result_content("success", 5))
    assert validate_envelope(result)["content"]["value"] == 5
    for not_a_dict in ([], "x", 1, None):
        with pytest.raises(DecodingError):
            validate_envelope(not_a_dict)


# -- the dispatch path, without a broker ------------------------------------------------


class FakeDelivery:
    """The parts of a Delivery the dispatch path reads, recording how it was settled."""

    def __init__(self, body: bytes, content_type: str | None) -> None:
        self.body = body
        self.content_type = content_type
        self.headers: dict[str, Any] = {}
        self.settled_as: str | None = None
        self.redelivered = False
        self.exchange = "x"
        self.routing_key = "k"
        self.reply_to = None
        self.channel_lost = False  # its channel is alive
        self.consumer_tag = "fake"

    @property
    def settled(self) -> bool:
        return self.settled_as is not None

    async def ack(self) -> bool:
        self.settled_as = "ack"
        return True

    async def nack(self, requeue: bool = True) -> bool:
        self.settled_as = "nack"
        return True


FUZZ_RUNS: list[int] = []


@settings(max_examples=500, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=500),
        envelopes.map(lambda e: json.dumps(e).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
    ),
    content_type=st.sampled_from([None, "application/json", "text/plain", "application/x-pickle"]),
)
def test_fuzz_dispatch_path(body: bytes, content_type: str | None) -> None:
    FUZZ_RUNS.append(1)
    core = Core(max_message_size=400)
    handled: list[dict[str, Any]] = []
    dead: list[str] = []

    async def dead_letter(delivery: Any, queue: str, dlq: str, reason: str, error: str = "",
                          **where: Any) -> bool:
        dead.append(reason)
        await delivery.ack()
        return True

    core.move_to_dead_letters = dead_letter  # type: ignore[method-assign]

    async def handler(message: IncomingMessage) -> None:
        assert message.envelope is not None
        handled.append(message.envelope)

    async def run() -> FakeDelivery:
        sub = Subscription(core, "q", handler, HandlingOptions(envelope=True))
        delivery = FakeDelivery(body, content_type)
        await sub.on_delivery(delivery)  # type: ignore[arg-type]
        return delivery

    try:
        delivery = asyncio.run(run())
    finally:
        core.workers.shutdown()
    try:
        expected = decode_envelope(body, content_type, max_size=400)
    except DecodingError:
        assert (handled, dead) == ([], ["undecodable"])
    else:
        assert (handled, dead) == ([expected], [])
    assert delivery.settled_as == "ack"  # settled exactly once, never left hanging
