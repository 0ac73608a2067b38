"""Passwords never appear in logs, reprs or exception messages, for failing and succeeding
connections, whether they come from a URL, the environment or explicit settings."""

from __future__ import annotations

import logging
import traceback

import pytest

import postage
from postage import AsyncClient, ConnectionSettings
from postage._core.core import open_core
from postage._settings import redact_url, url_from_environment

from .conftest import Accounts

SECRET = "Sup3r-S3cret-pw-7c1e"


def _everything_said(exc: BaseException) -> str:
    """Message, repr, traceback text and chained exceptions of ``exc``."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records
    return caplog


def _assert_clean(text: str, secret: str = SECRET) -> None:
    assert secret not in text
    assert secret.replace("-", "%2D") not in text


async def test_wrong_password(broker_url: str, debug_logs: pytest.LogCaptureFixture) -> None:
    url = broker_url.replace("guest:guest@", f"guest:{SECRET}@")
    with pytest.raises(postage.AuthenticationError) as info:
        await open_core(url)
    _assert_clean(_everything_said(info.value))
    _assert_clean(debug_logs.text)
    assert debug_logs.records, "nothing was logged: the check above proves nothing"


async def test_unreachable_port(debug_logs: pytest.LogCaptureFixture) -> None:
    url = f"amqp://someone:{SECRET}@127.0.0.1:1/vh"
    with pytest.raises(postage.ConnectionError) as info:
        await open_core(url, connect_timeout=3)
    said = _everything_said(info.value)
    _assert_clean(said)
    assert "someone:***@127.0.0.1:1" in str(info.value)
    _assert_clean(debug_logs.text)


async def test_several_urls_unreachable(debug_logs: pytest.LogCaptureFixture) -> None:
    url = f"amqp://u:{SECRET}@127.0.0.1:1,127.0.0.1:2/"
    with pytest.raises(postage.ConnectionError) as info:
        await open_core(url, connect_timeout=3)
    _assert_clean(_everything_said(info.value))
    _assert_clean(debug_logs.text)


async def test_successful_connection_and_traffic(
    accounts: Accounts, debug_logs: pytest.LogCaptureFixture
) -> None:
    user, password = accounts.user(SECRET)
    accounts.permit(user, "/", ".*", ".*", ".*")
    url = accounts.url(user, password)
    async with AsyncClient(url) as client:
        queue = f"test.cred.{user}"

        async def echo(body: bytes) -> bytes:
            return body

        await client.receive("", "", queue, echo)
        assert await client.rpc("", queue, b"hi", timeout=5) == b"hi"
        said = repr(client) + repr(client.core.settings) + str(client.core.settings)
        _assert_clean(said)
        await client.core.transport.delete_queue(f"{queue}.dlq")
    _assert_clean(debug_logs.text)
    assert any("Connecting" in r.getMessage() for r in debug_logs.records)


def test_settings_repr_and_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ConnectionSettings.from_url(f"amqp://u:{SECRET}@h1:5672,h2:5673/v")
    assert "u:***@h1" in repr(settings) and "u:***@h2" in repr(settings)
    _assert_clean(repr(settings))
    _assert_clean(str(settings))
    assert redact_url(f"amqps://u:{SECRET}@h/") == "amqps://u:***@h/"
    monkeypatch.setenv("POSTAGE_PASSWORD", SECRET)
    monkeypatch.delenv("POSTAGE_URL", raising=False)
    env_settings = ConnectionSettings.from_url(None)
    assert SECRET in url_from_environment()  # it is used ...
    _assert_clean(repr(env_settings))  # ... but never shown


def test_bad_url_errors_do_not_echo_the_password() -> None:
    for url in (f"amqp://u:{SECRET}@h:notaport/", f"amqp://u:{SECRET}@h/?heartbeat=x",
                f"http://u:{SECRET}@h/"):
        with pytest.raises(postage.ConfigurationError) as info:
            ConnectionSettings.from_url(url)
        _assert_clean(_everything_said(info.value))


@pytest.mark.parametrize("char", ["#", "/", "?"])
def test_a_password_with_an_unencoded_url_character_is_never_echoed(char: str) -> None:
    url = f"amqp://u:Mq7{char}hashpw@127.0.0.1:5687/vh"
    assert "hashpw" not in redact_url(url) and redact_url(url).startswith("amqp://u:***@")
    for attempt in (lambda: ConnectionSettings.from_url(url), lambda: postage.connect(url)):
        with pytest.raises(postage.ConfigurationError) as info:
            attempt()
        said = _everything_said(info.value)
        assert "hashpw" not in said and "Mq7" not in said, said
        assert {"%23": "#", "%2F": "/", "%3F": "?"}.keys() <= set(said.split()) or \
            "percent-encode" in said


@pytest.mark.parametrize("char", ["#", "/", "?"])
def test_the_cli_never_prints_such_a_password(char: str) -> None:
    import subprocess
    import sys

    url = f"amqp://u:Mq7{char}hashpw@127.0.0.1:5687/vh"
    proc = subprocess.run([sys.executable, "-m", "postage", "--url", url, "ping"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "hashpw" not in proc.stderr + proc.stdout, proc.stderr
    assert "percent-encode" in proc.stderr
