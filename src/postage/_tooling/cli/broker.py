"""``postage broker start|stop|status``: throwaway local RabbitMQ nodes.

``start`` leaves the node(s) running and records them in ``DIR/state.json``, so ``status``
and ``stop`` in another process (with the same ``--dir``) find them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from postage._tooling.localbroker import (
    LocalBrokerError,
    LocalCluster,
    LocalNode,
    read_state,
    remove_state,
    write_state,
)

if TYPE_CHECKING:
    from postage._tooling.cli import Subparsers

DEFAULT_DIR = Path(".postage-broker")
_DIST_OFFSET = 20000


def register(subparsers: Subparsers) -> None:
    broker = subparsers.add_parser(
        "broker", help="start, stop or inspect a throwaway local RabbitMQ node or cluster"
    )
    commands = broker.add_subparsers(title="broker commands", metavar="ACTION", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_DIR,
            help=f"directory of the node(s) and their state file (default: {DEFAULT_DIR})",
        )
        return p

    start = with_dir(
        commands.add_parser(
            "start",
            help="start node(s), print their URL(s), leave them running",
            description="Start a node (or a cluster of --nodes nodes) and print one URL per "
            "line: AMQP URLs first, then TLS and management URLs. If the node(s) recorded in "
            "--dir already run, just print their URLs.",
        )
    )
    start.add_argument(
        "--port",
        type=int,
        default=5672,
        help="AMQP port (of node 1; node i uses PORT+i-1) (default: 5672)",
    )
    start.add_argument("--nodes", type=int, default=1, help="cluster size (default: 1)")
    start.add_argument(
        "--tls", action="store_true", help="add a TLS listener with generated certificates (in DIR)"
    )
    start.add_argument("--tls-port", type=int, default=5671, help="TLS port (default: 5671)")
    start.add_argument(
        "--management",
        action="store_true",
        help="enable the management plugin (HTTP port = AMQP port + 10000)",
    )
    start.add_argument("--timeout", type=float, default=90, help="seconds to wait for start")
    start.set_defaults(handler=run_start)

    stop = with_dir(commands.add_parser("stop", help="stop the node(s) started in --dir"))
    stop.set_defaults(handler=run_stop)

    status = with_dir(
        commands.add_parser(
            "status", help="show the node(s) of --dir; exit status 1 if none is running"
        )
    )
    status.set_defaults(handler=run_status)


def _urls(nodes: list[LocalNode]) -> list[str]:
    urls = [n.url for n in nodes]
    urls += [n.tls_url for n in nodes if n.tls_url]
    urls += [n.management_url for n in nodes if n.management_url]
    return urls


def _check_port(what: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise LocalBrokerError(f"{what} {port} is not a valid TCP port")


def run_start(args: argparse.Namespace) -> int:
    directory: Path = args.dir.absolute()
    nodes = read_state(directory)
    if nodes and _already_running(nodes, directory, args.dir):
        print("\n".join(_urls(nodes)))
        _say_tls_files(nodes)
        return 0
    cluster = _plan_cluster(args, directory)
    for node in cluster.nodes:  # throwaway nodes: every start is a fresh one
        if node.is_running():
            raise LocalBrokerError(
                f"a node named {node.node_name} is already running (from another --dir?); "
                "choose another --port"
            )
        node.wipe()
    write_state(directory, cluster.nodes, cluster=len(cluster.nodes) > 1)
    try:
        cluster.start(timeout=args.timeout)
    except BaseException:
        remove_state(directory)
        raise
    print("\n".join(_urls(cluster.nodes)))
    _say_tls_files(cluster.nodes)
    return 0


def _say_tls_files(nodes: list[LocalNode]) -> None:
    """Where a TLS listener's certificates are (on stderr: stdout lists only URLs)."""
    for node in nodes:
        if node.tls_port is not None:
            print(f"TLS files of {node.node_name}: CA {node.ca_file}, client certificate "
                  f"{node.client_cert}, client key {node.client_key}", file=sys.stderr)


def _already_running(nodes: list[LocalNode], directory: Path, given: Path) -> bool:
    running = [n.is_running() for n in nodes]
    if all(running):
        return True
    if any(running):
        raise LocalBrokerError(
            f"only some nodes of {directory} are running; "
            f"run 'postage broker stop --dir {given}' first"
        )
    return False


def _plan_cluster(args: argparse.Namespace, directory: Path) -> LocalCluster:
    size: int = args.nodes
    if size < 1:
        raise LocalBrokerError("--nodes must be at least 1")
    _check_port("--port", args.port)
    _check_port("last node's dist port", args.port + size - 1 + _DIST_OFFSET)
    if args.tls:
        _check_port("--tls-port", args.tls_port + size - 1)
    plugins = ["rabbitmq_management"] if args.management else []
    if args.management:
        _check_port("management port", args.port + size - 1 + 10000)
    cluster = LocalCluster(
        directory,
        size=size,
        base_port=args.port,
        base_dist_port=args.port + _DIST_OFFSET,
        tls_base_port=args.tls_port if args.tls else None,
        plugins=plugins,
    )
    if size == 1:  # a single node lives in DIR/postage-PORT, not DIR/node1
        only = cluster.nodes[0]
        cluster.nodes = [
            LocalNode(
                directory / only.name,
                name=only.name,
                amqp_port=only.amqp_port,
                dist_port=only.dist_port,
                tls_port=only.tls_port,
                plugins=only.plugins,
            )
        ]
    return cluster


def run_stop(args: argparse.Namespace) -> int:
    directory: Path = args.dir.absolute()
    nodes = read_state(directory)
    if not nodes:
        print(f"no broker recorded in {directory}", file=sys.stderr)
        return 0
    LocalCluster(directory, nodes=nodes).stop()
    remove_state(directory)
    for node in nodes:
        print(f"stopped {node.node_name}", file=sys.stderr)
    return 0


def run_status(args: argparse.Namespace) -> int:
    directory: Path = args.dir.absolute()
    nodes = read_state(directory)
    if not nodes:
        print(f"no broker recorded in {directory}", file=sys.stderr)
        return 1
    any_running = False
    for node in nodes:
        running = node.is_running()
        any_running = any_running or running
        urls = [u for u in (node.url, node.tls_url, node.management_url) if u]
        print(f"{node.node_name} {'running' if running else 'stopped'} {' '.join(urls)}")
    return 0 if any_running else 1
