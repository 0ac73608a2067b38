"""Log records about a message carry its context as ``extra`` fields (no OpenTelemetry
needed: the trace id is read from the message's ``traceparent``)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

import postage
from postage import Properties, RetryPolicy
from postage.testing import fresh_broker

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_records_about_a_message_carry_its_ids(caplog: pytest.LogCaptureFixture) -> None:
    broker = fresh_broker()
    caplog.set_level(logging.WARNING, logger="postage")
    async with postage.AsyncClient(broker.url, name="billing",
                                   retry_policy=RetryPolicy(max_attempts=2)) as client:
        def fail(_body: bytes) -> None:
            raise ValueError("no price")

        await client.receive("", "", "invoices", fail, durable=True)
        await client.publish("", "invoices", b"{}", Properties(
            message_id="m-1", correlation_id="c-1",
            headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}))
        while broker.message_count("invoices.dlq") == 0:
            await asyncio.sleep(0.01)
    about = [r for r in caplog.records if getattr(r, "postage_queue", None) == "invoices"]
    assert [r.getMessage().split(";")[0] for r in about][:2] == [
        "handler for queue 'invoices' failed (attempt 1 of 2): ValueError: no price",
        "handler for queue 'invoices' failed 2 times (ValueError: no price)"]
    for record in about[:2]:
        fields = {k: getattr(record, k) for k in ("postage_component", "postage_message_id",
                                                  "postage_correlation_id", "postage_trace_id")}
        assert fields == {"postage_component": "billing", "postage_message_id": "m-1",
                          "postage_correlation_id": "c-1", "postage_trace_id": TRACE}
    assert [r.postage_attempt for r in about[:2]] == [1, 2]  # type: ignore[attr-defined]
    # ready for a JSON formatter: every field is a plain value
    json.dumps({k: v for k, v in vars(about[0]).items() if k.startswith("postage_")})
