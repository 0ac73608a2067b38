"""Throwaway RabbitMQ nodes and clusters for tests, demos and ``postage broker``.

Standard library only. A node runs from its own directory (mnesia, logs, config, plugins
file, feature-flags file, pid file) under a unique Erlang node name (``postage-PORT@localhost``),
so several nodes and clusters can run side by side with a developer's own broker.

Started as root, ``rabbitmq-server`` switches to the ``rabbitmq`` user: the node directory is
chowned to that user, and when it lies somewhere that user cannot reach (``/root`` is ``0700``)
the node's data goes to ``/tmp/postage-nodes/`` instead (see :attr:`LocalNode.data_dir`).

    node = LocalNode(Path("/tmp/n1"), name="postage-5700", amqp_port=5700, dist_port=25700)
    node.start()
    node.url                      # amqp://guest:guest@127.0.0.1:5700/
    node.ctl("list_queues", "name", "messages")
    node.stop()

``DIR/state.json`` (see :func:`write_state` / :func:`read_state`) lets another process find
the nodes that ``postage broker start --dir DIR`` left running.
"""

from .cluster import LocalCluster, read_state, remove_state, write_state
from .node import LocalNode
from .tls import TlsFiles, generate_tls_files
from .tools import LocalBrokerError, find_free_ports, port_is_free

__all__ = [
    "LocalBrokerError",
    "LocalCluster",
    "LocalNode",
    "TlsFiles",
    "find_free_ports",
    "generate_tls_files",
    "port_is_free",
    "read_state",
    "remove_state",
    "write_state",
]
