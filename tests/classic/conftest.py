"""Fixtures of the classic API tests: a private virtual host on the test broker.

The seed programs use fixed names (``echo-exchange``, ``ping_queue``...). Running them in
a virtual host of their own keeps them apart from everything else on a shared node.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

import pytest

from postage import microthreads
from postage._api.classic import runtime as _runtime

from ..conftest import Broker


def url_with_vhost(url: str, vhost: str, query: str = "") -> str:
    sp = urlsplit(url)
    return sp._replace(path="/" + quote(vhost, safe=""), query=query).geturl()


@pytest.fixture(scope="session")
def classic_vhost(broker: Broker) -> Iterator[str]:
    vhost = f"postage-classic-{uuid.uuid4().hex[:8]}"
    broker.ctl("add_vhost", vhost)
    try:
        user = urlsplit(broker.url).username or "guest"
        broker.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield vhost
    finally:
        _runtime.close_all()
        broker.ctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def classic_url(broker: Broker, classic_vhost: str) -> str:
    return url_with_vhost(broker.url, classic_vhost)


@pytest.fixture
def env_url(classic_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """POSTAGE_URL set to the classic vhost (classic objects read it)."""
    monkeypatch.setenv("POSTAGE_URL", classic_url)
    monkeypatch.delenv("POSTAGE_VHOST", raising=False)
    return classic_url


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@contextmanager
def running(*processors: microthreads.MicroThread, timeout: float = 20) -> Iterator[None]:
    """Run processors with a MicroScheduler in a thread; they consume when this yields."""
    scheduler = microthreads.MicroScheduler()
    for processor in processors:
        processor.start_consuming()  # type: ignore[attr-defined]
        scheduler.add_microthread(processor)
    thread = threading.Thread(target=lambda: list(scheduler.main()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        for processor in processors:
            processor.stop()  # type: ignore[attr-defined]
        thread.join(timeout)
        assert not thread.is_alive(), "the scheduler did not stop"
