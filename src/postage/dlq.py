"""Dead-letter queues as a tool (``postage dlq`` on the command line does the same).

Every message Postage cannot handle ends in ``<queue>.dlq`` with why in its headers.
These coroutines take a connection (an ``AsyncClient``, a ``postage.aio`` communicator or
a core)::

    async with postage.AsyncClient(url) as client:
        for letter in await postage.dlq.peek(client, "jobs.dlq", 5):
            print(letter.reason, letter.error, letter.attempts, letter.preview())
        report = await postage.dlq.replay(client, "jobs.dlq",
                                          where=postage.dlq.Where.parse(["reason=handler-failed"]))

:func:`replay` sends each message back to the queue it was consumed from, confirmed by
the broker before its dead letter is acked, up to ``REPLAY_WINDOW`` at once. Stopped at any
point (even by ``kill -9``), it loses nothing and sends at most the messages in flight
(``window``) twice. On a reconnecting connection it goes on through a lost connection:
deliveries of the dead channel are never sent, and a copy whose ack was lost is not sent
again; only copies sent as the connection died, their confirms lost with it, can arrive
twice. Its report counts distinct messages moved.
"""

from __future__ import annotations

__all__ = ["REPLAY_WINDOW", "DeadLetter", "ReplayReport", "Where", "peek", "purge", "replay",
           "summary"]

from ._api.deadletters import (
    REPLAY_WINDOW,
    DeadLetter,
    ReplayReport,
    Where,
    peek,
    purge,
    replay,
    summary,
)
