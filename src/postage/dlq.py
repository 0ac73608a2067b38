"""Dead-letter queues as a tool (``postage dlq`` on the command line does the same).

Every message Postage cannot handle ends in ``<queue>.dlq`` with why in its headers.
These coroutines take a connection (an ``AsyncClient``, a ``postage.aio`` communicator or
a core)::

    async with postage.AsyncClient(url) as client:
        for letter in await postage.dlq.peek(client, "jobs.dlq", 5):
            print(letter.reason, letter.error, letter.attempts, letter.preview())
        report = await postage.dlq.replay(client, "jobs.dlq",
                                          where=postage.dlq.Where.parse(["reason=handler-failed"]))

:func:`replay` sends each message back where it was first sent, confirmed by the broker
before its dead letter is acked: stopped at any point (even by ``kill -9``), it loses
nothing and sends at most the message in flight twice.
"""

from __future__ import annotations

__all__ = ["DeadLetter", "ReplayReport", "Where", "peek", "purge", "replay", "summary"]

from ._api.deadletters import DeadLetter, ReplayReport, Where, peek, purge, replay, summary
