"""Clusters of local nodes, and the state file a broker directory keeps."""

from __future__ import annotations

__all__ = ['LocalCluster', 'read_state', 'remove_state', 'write_state']

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .node import LocalNode
from .runtime import INSTALLED, Installed, Rootfs
from .tools import _STATE_VERSION, STATE_FILE, LocalBrokerError

# --------------------------------------------------------------------------- clusters


class LocalCluster:
    """``size`` local nodes, nodes 2..n joined to node 1.

    Node *i* (from 0) gets AMQP port ``base_port + i``, dist port ``base_dist_port + i`` and
    (when ``tls_base_port`` is given) TLS port ``tls_base_port + i``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        size: int = 3,
        base_port: int = 5691,
        base_dist_port: int = 25691,
        tls_base_port: int | None = None,
        plugins: Sequence[str] = (),
        nodes: Sequence[LocalNode] | None = None,
        listen: str = "127.0.0.1",
        runtime: Installed | Rootfs = INSTALLED,
    ) -> None:
        self.directory = Path(directory).absolute()
        if nodes is not None:
            self.nodes: list[LocalNode] = list(nodes)
            return
        if size < 1:
            raise LocalBrokerError("a cluster needs at least one node")
        self.nodes = [
            LocalNode(
                self.directory / f"node{i + 1}",
                name=f"postage-{base_port + i}",
                amqp_port=base_port + i,
                dist_port=base_dist_port + i,
                tls_port=None if tls_base_port is None else tls_base_port + i,
                plugins=plugins,
                listen=listen,
                runtime=runtime,
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def __repr__(self) -> str:
        return f"LocalCluster({[n.node_name for n in self.nodes]!r})"

    def start(self, timeout: float = 90) -> None:
        """Start every node (in parallel), then join nodes 2..n to node 1."""
        try:
            with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                for f in [pool.submit(n.start, timeout) for n in self.nodes]:
                    f.result()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("reset")
                node.ctl("join_cluster", first.node_name, timeout=timeout)
                node.ctl("start_app", timeout=timeout)
            for node in self.nodes:
                node.ctl("await_startup", timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def running_nodes(self) -> list[str]:
        """Node names the first node reports as running members of the cluster."""
        out = self.nodes[0].ctl("eval", "rabbit_nodes:all_running().")
        return [n for n in (x.strip(" []\n'") for x in out.split(",")) if n]

    def stop(self) -> None:
        """Stop every node, last first (so node 1 is the last to go)."""
        errors: list[str] = []
        for node in reversed(self.nodes):
            try:
                node.stop()
            except LocalBrokerError as exc:
                errors.append(str(exc))
        if errors:
            raise LocalBrokerError("; ".join(errors))


# --------------------------------------------------------------------------- state files


def write_state(directory: Path, nodes: Iterable[LocalNode], *, cluster: bool = False) -> Path:
    """Record ``nodes`` in ``DIR/state.json`` for ``postage broker status|stop``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    data = {"version": _STATE_VERSION, "cluster": cluster, "nodes": [n.to_dict() for n in nodes]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_state(directory: Path) -> list[LocalNode]:
    """The nodes recorded in ``DIR/state.json`` (empty if there is none)."""
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LocalBrokerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
        raise LocalBrokerError(f"{path} is not a Postage broker state file")
    try:
        return [LocalNode.from_dict(n) for n in data["nodes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LocalBrokerError(f"{path} is damaged: {exc}") from exc


def remove_state(directory: Path) -> None:
    (directory / STATE_FILE).unlink(missing_ok=True)
