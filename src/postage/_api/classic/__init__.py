"""The classic Postage API (seeds 000, 001, 003) as a thin layer over the asyncio core.

Public names live in :mod:`postage.messaging`, :mod:`postage.microthreads` and
:mod:`postage.generic_application`; these private modules hold the implementation:

* ``_runtime``: connection settings from ``hup``/``vhost``/environment and one shared
  :class:`~postage._core.core.Core` per broker URL, opened on the process-wide portal;
* ``_messages``: Message classes, Exchange classes (no I/O);
* ``_producer``: GenericProducer (``message_X``/``rpc_X`` magic);
* ``_processor``: GenericConsumer, handler decorators, MessageProcessor.
"""
