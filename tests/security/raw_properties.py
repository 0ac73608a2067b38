"""Content-header property bytes built by hand (not a test module): what a hostile
publisher can put in a message that RabbitMQ accepts but a client may not decode.

:func:`random_properties` makes structurally valid Basic properties (every length field
right) with random contents: short strings of random bytes (often not UTF-8), random
timestamps (often past year 9999), headers tables with random keys and values.
:class:`RawProperties` makes pika publish such bytes as they are.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pika

# (flag bit, kind) in wire order; s: short string, T: table, o: octet, t: timestamp
FIELDS = [(15, "s"), (14, "s"), (13, "T"), (12, "o"), (11, "o"), (10, "s"), (9, "s"),
          (8, "s"), (7, "s"), (6, "t"), (5, "s"), (4, "s"), (3, "s"), (2, "s")]
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80abc"]


def short_string(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        raw = rng.choice(BAD_UTF8) + bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    else:
        raw = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(20)))
    return bytes([len(raw)]) + raw


def field_value(rng: random.Random) -> bytes:
    kind = rng.choice("SIdtl")
    if kind == "S":
        raw = rng.choice([b"ok", rng.choice(BAD_UTF8) * rng.randrange(1, 300)])
        return b"S" + struct.pack(">I", len(raw)) + raw
    if kind == "I":
        return b"I" + struct.pack(">i", rng.randrange(-2**31, 2**31))
    if kind == "d":  # any 64 bits: NaN, infinities, values beyond a 32-bit float
        return b"d" + struct.pack(">Q", rng.getrandbits(64))
    if kind == "t":
        return b"T" + struct.pack(">Q", rng.getrandbits(64))
    return b"l" + struct.pack(">q", rng.randrange(-2**63, 2**63))


def table(rng: random.Random) -> bytes:
    entries = b""
    for _ in range(rng.randrange(1, 4)):
        entries += short_string(rng) + field_value(rng)
    return struct.pack(">I", len(entries)) + entries


# what RabbitMQ itself refuses at the publisher: a user_id that is not the publisher's, an
# expiration that is not a number, a delivery mode other than 1 or 2
BROKER_CHECKED = {4, 8}


def random_properties(rng: random.Random, *, for_broker: bool = False) -> bytes:
    """Property flags and fields (what follows the body size in a content header);
    ``for_broker``: only what RabbitMQ accepts from any publisher."""
    flags, fields = 0, b""
    for bit, kind in FIELDS:
        if rng.random() < 0.5 or (for_broker and bit in BROKER_CHECKED):
            continue
        flags |= 1 << bit
        if kind == "s":
            fields += short_string(rng)
        elif kind == "T":
            fields += table(rng)
        elif kind == "o":
            fields += bytes([rng.choice([1, 2] if for_broker else [1, 2, rng.randrange(256)])])
        else:
            fields += struct.pack(">Q", rng.choice(
                [rng.getrandbits(64), 253402300800 + rng.randrange(10**9), 1_700_000_000]))
    return struct.pack(">H", flags) + fields


class RawProperties(pika.BasicProperties):
    """Properties that pika publishes as the given bytes."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw

    def encode(self) -> list[Any]:
        return [self.raw]
