"""``postage broker start|stop|status``: throwaway local RabbitMQ nodes.

``start`` leaves the node(s) running and records them in ``DIR/state.json``, so ``status``
and ``stop`` in another process (with the same ``--dir``) find them.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Callable
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
from postage._tooling.localbroker.runtime import RABBITMQ_VERSIONS, runtime_for
from postage._tooling.localbroker.tools import port_is_free

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
        help="AMQP port (of node 1; node i uses PORT+i-1); 0 picks free ports "
        "(default: 5672)",
    )
    start.add_argument("--nodes", type=int, default=1, help="cluster size (default: 1)")
    start.add_argument(
        "--tls", action="store_true", help="add a TLS listener with generated certificates (in DIR)"
    )
    start.add_argument("--tls-port", type=int, default=5671,
                       help="TLS port; 0 picks a free one (default: 5671)")
    start.add_argument(
        "--management",
        action="store_true",
        help="enable the management plugin (HTTP port = AMQP port + 10000)",
    )
    start.add_argument(
        "--listen", default="127.0.0.1", metavar="ADDRESS",
        help="address of every listener (AMQP, TLS, management, Erlang distribution and "
        "epmd); 0.0.0.0 for every interface (default: 127.0.0.1: this machine only)")
    start.add_argument(
        "--rabbitmq", default="installed", choices=RABBITMQ_VERSIONS, metavar="VERSION",
        help="installed: this machine's rabbitmq-server (the default); 4: RabbitMQ 4.0 from "
        "a Debian 13 root, prepared on first use (about 370 MB, cached in "
        "/var/cache/postage/rabbitmq-4 or $POSTAGE_RABBITMQ4_ROOT; needs root), with "
        "RabbitMQ 4.3's defaults (no transient non-exclusive queues, no global QoS)")
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
        _start_saying_so(cluster, args.timeout)
    except BaseException:
        remove_state(directory)
        raise
    print("\n".join(_urls(cluster.nodes)))
    _say_tls_files(cluster.nodes)
    return 0


def _start_saying_so(cluster: LocalCluster, timeout: float) -> None:
    """Start ``cluster``, telling stderr what happens meanwhile (stdout lists only URLs)."""
    names = ", ".join(f"{n.node_name} (port {n.amqp_port})" for n in cluster.nodes)
    print(f"starting {names}: RabbitMQ takes about 10 s", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(3.0):
            print(f"  still starting ({time.monotonic() - started:.0f} s)", file=sys.stderr,
                  flush=True)

    ticker = threading.Thread(target=tick, name="postage-broker-progress", daemon=True)
    ticker.start()
    try:
        cluster.start(timeout=timeout)
    finally:
        done.set()
        ticker.join(1.0)
    print(f"ready in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def _ports(nodes: int, base: int, *, management: bool) -> list[int]:
    """The AMQP, distribution (and management) ports of ``nodes`` nodes from ``base``."""
    ports: list[int] = []
    for i in range(nodes):
        ports += [base + i, base + i + _DIST_OFFSET]
        if management:
            ports.append(base + i + 10000)
    return ports


def _free_base(count: int, ports: Callable[[int], list[int]], low: int, high: int) -> int:
    """A base port whose ``ports(base)`` are all free, between ``low`` and ``high``."""
    for base in random.sample(range(low, high - count), 300):
        if all(port_is_free(p) for p in ports(base)):
            return base
    raise LocalBrokerError(f"no free ports found between {low} and {high}: pass --port")


def _check_free(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        for port in (node.amqp_port, node.dist_port, node.tls_port, node.management_port):
            if port is not None and not port_is_free(port):
                raise LocalBrokerError(
                    f"port {port} is already in use (another RabbitMQ, or a node of another "
                    "--dir?): choose other ports with --port, or --port 0 to pick free ones")


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
    if args.port == 0:  # below the ephemeral range, as are their +10000 and +20000 ports
        args.port = _free_base(size, lambda base: _ports(
            size, base, management=args.management), 10000, 12000)
    if args.tls and args.tls_port == 0:
        args.tls_port = _free_base(size, lambda base: list(range(base, base + size)),
                                   12000, 14000)
    _check_port("--port", args.port)
    _check_port("last node's dist port", args.port + size - 1 + _DIST_OFFSET)
    if args.tls:
        _check_port("--tls-port", args.tls_port + size - 1)
    plugins = ["rabbitmq_management"] if args.management else []
    if args.management:
        _check_port("management port", args.port + size - 1 + 10000)
    runtime = runtime_for(args.rabbitmq)
    runtime.prepare()
    cluster = LocalCluster(
        directory,
        runtime=runtime,
        size=size,
        base_port=args.port,
        base_dist_port=args.port + _DIST_OFFSET,
        tls_base_port=args.tls_port if args.tls else None,
        plugins=plugins,
        listen=args.listen,
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
                listen=only.listen,
                runtime=runtime,
            )
        ]
    _check_free(cluster)
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
