"""``postage monitor`` against a real management API: a node of its own with the
rabbitmq_management plugin (the shared test node runs without it)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pika
import pytest

from postage._tooling.localbroker import LocalNode, find_free_ports

from ..conftest import _scratch_dir
from .conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def management_node() -> Iterator[LocalNode]:
    amqp, dist, http = find_free_ports(3)
    directory = _scratch_dir("postage-test-mgmt-")
    node = LocalNode(directory, name=f"postage-test-{amqp}", amqp_port=amqp, dist_port=dist,
                     plugins=["rabbitmq_management"], management_port=http)
    node.start()
    try:
        yield node
    finally:
        try:
            node.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def test_monitor_reads_queues_from_the_management_api(management_node: LocalNode) -> None:
    url = management_node.url
    api = f"http://127.0.0.1:{management_node.management_port}"  # credentials: from url
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare("mgmt.orders", durable=True)
        for _ in range(7):
            channel.basic_publish("", "mgmt.orders", b"x")
        # the API's message counts lag the broker by a statistics interval (5 s)
        deadline = time.monotonic() + 30
        while True:
            result = run_cli(url, "monitor", "--once", "--management-url", api)
            assert result.returncode == 0, result
            rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
                    if line.split()}
            if rows.get("mgmt.orders", [None, None])[1] == "7":
                break
            assert time.monotonic() < deadline, result.stdout
            time.sleep(1)
        assert f"queues from management API {api}" in result.stdout
        assert rows["mgmt.orders"][2] == "0"  # no consumer
    finally:
        connection.close()


def test_dlq_list_finds_dead_letter_queues_through_the_management_api(
        management_node: LocalNode) -> None:
    url = management_node.url
    api = f"http://127.0.0.1:{management_node.management_port}"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare("mgmt.jobs.dlq", durable=True)
        channel.queue_declare("mgmt.jobs", durable=True)  # not a dead-letter queue
        channel.basic_publish("", "mgmt.jobs.dlq", b"x")
        result = run_cli(url, "dlq", "list", "--management-url", api)
        assert result.returncode == 0, result
        rows = [line.split() for line in result.stdout.splitlines()[1:]]
        assert [row[:2] for row in rows] == [["mgmt.jobs.dlq", "1"]]
    finally:
        connection.close()
