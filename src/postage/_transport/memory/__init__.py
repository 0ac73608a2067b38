"""The in-memory broker and its transport (imported only by tests and ``memory://`` URLs)."""

from .broker import MemoryBroker
from .names import broker_name, is_memory_url, named_broker, reset_named_brokers
from .transport import MemoryConsumer, MemoryDelivery, MemoryTransport

__all__ = [
    "MemoryBroker",
    "MemoryConsumer",
    "MemoryDelivery",
    "MemoryTransport",
    "broker_name",
    "is_memory_url",
    "named_broker",
    "reset_named_brokers",
]
