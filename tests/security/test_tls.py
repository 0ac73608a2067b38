"""TLS through Postage's own transport against a node with a TLS listener: verified
connections (URL options and TlsOptions), a wrong CA, the server-name check, mutual TLS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from postage import ConnectionError, ConnectionSettings, TlsOptions
from postage._core.core import Core, open_core
from postage._tooling.localbroker import TlsFiles, generate_tls_files

from ..conftest import Broker


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A second CA with its own server and client certificates: trusted by nobody."""
    return generate_tls_files(tmp_path_factory.mktemp("other-ca"))


def _with_query(url: str, **query: str) -> str:
    return url + "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())


async def _round_trip(core: Core) -> None:
    queue = f"test.tls.{uuid.uuid4().hex[:10]}"
    await core.declare_queue(queue, auto_delete=True)

    async def echo(delivery: object) -> None:
        from postage._transport import Delivery

        assert isinstance(delivery, Delivery)
        await core.reply(delivery, delivery.body)

    await core.subscribe(queue, echo)
    reply = await core.call("", queue, b"over tls", timeout=10)
    assert reply.body == b"over tls"
    await core.transport.delete_queue(f"{queue}.dlq")


@pytest.fixture
async def closing() -> AsyncIterator[list[Core]]:
    cores: list[Core] = []
    yield cores
    for core in cores:
        await core.close(5)


async def test_verified_with_ca_in_url(tls_broker: Broker, closing: list[Core]) -> None:
    url = _with_query(tls_broker.tls_url, cafile=str(tls_broker.ca_file))
    core = await open_core(url)
    closing.append(core)
    assert core.settings.tls is not None and core.settings.tls.check_hostname
    await _round_trip(core)


async def test_verified_with_tls_options_and_localhost(
    tls_broker: Broker, closing: list[Core]
) -> None:
    url = tls_broker.tls_url.replace("127.0.0.1", "localhost")
    settings = ConnectionSettings.from_url(url, tls=TlsOptions(ca_file=str(tls_broker.ca_file)))
    core = Core(settings)
    closing.append(core)
    await core.open()
    await _round_trip(core)


async def test_wrong_ca_is_refused_clearly(tls_broker: Broker, other_ca: TlsFiles) -> None:
    url = _with_query(tls_broker.tls_url, cafile=str(other_ca.ca_file))
    with pytest.raises(ConnectionError) as info:
        await open_core(url, connect_timeout=5, reconnect=False)
    message = str(info.value)
    assert "TLS certificate verification failed" in message
    assert "certificate" in message and "\n" not in message
    assert "guest:guest" not in message


async def test_system_cas_do_not_trust_the_test_ca(tls_broker: Broker) -> None:
    with pytest.raises(ConnectionError, match="TLS certificate verification failed"):
        await open_core(tls_broker.tls_url, connect_timeout=5)


async def test_server_name_is_checked_by_default(
    tls_broker: Broker, closing: list[Core]
) -> None:
    # 127.0.0.2 reaches the same listener (loopback) but is not in the certificate
    url = tls_broker.tls_url.replace("127.0.0.1", "127.0.0.2")
    ca = str(tls_broker.ca_file)
    with pytest.raises(ConnectionError, match="address mismatch"):
        await open_core(url, tls=TlsOptions(ca_file=ca), connect_timeout=5)
    core = await open_core(url, tls=TlsOptions(ca_file=ca, check_hostname=False))
    closing.append(core)
    await _round_trip(core)


async def test_mutual_tls_with_a_client_certificate(
    tls_broker: Broker, closing: list[Core]
) -> None:
    tls = TlsOptions(
        ca_file=str(tls_broker.ca_file),
        cert_file=str(tls_broker.client_cert),
        key_file=str(tls_broker.client_key),
    )
    name = f"mtls-{uuid.uuid4().hex[:8]}"
    core = await open_core(tls_broker.tls_url, tls=tls, name=name)
    closing.append(core)
    await _round_trip(core)
    # the broker saw and verified our certificate
    table = tls_broker.ctl("list_connections", "client_properties", "peer_cert_subject")
    [line] = [row for row in table.splitlines() if name in row]
    assert "CN=guest" in line


async def test_client_certificate_of_another_ca_is_refused(
    tls_broker: Broker, other_ca: TlsFiles
) -> None:
    tls = TlsOptions(
        ca_file=str(tls_broker.ca_file),
        cert_file=str(other_ca.client_cert),
        key_file=str(other_ca.client_key),
    )
    with pytest.raises(ConnectionError) as info:
        core = await open_core(tls_broker.tls_url, tls=tls, connect_timeout=5, reconnect=False)
        await core.close(2)
    assert "\n" not in str(info.value)


async def test_unreadable_tls_files_are_a_configuration_error(tls_broker: Broker) -> None:
    from postage import ConfigurationError

    tls = TlsOptions(ca_file=str(Path("/nonexistent/ca.pem")))
    with pytest.raises(ConfigurationError, match="TLS"):
        await open_core(tls_broker.tls_url, tls=tls, connect_timeout=5)
