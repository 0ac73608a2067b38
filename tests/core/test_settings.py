"""URL parsing and environment configuration (no broker)."""

from __future__ import annotations

import pytest

from postage import ConfigurationError, ConnectionSettings
from postage._settings import redact_url, split_urls, url_from_environment


def test_single_url_with_query_options() -> None:
    s = ConnectionSettings.from_url("amqp://u:p@h:1234/vh?heartbeat=7&connection_timeout=2.5&name=x")
    assert s.urls == ("amqp://u:p@h:1234/vh?heartbeat=7&connection_timeout=2.5&name=x",)
    assert s.heartbeat == 7
    assert s.connect_timeout == 2.5
    assert s.name == "x"
    assert s.tls is None


def test_publish_timeout_in_the_query() -> None:
    assert ConnectionSettings.from_url("amqp://h/?publish_timeout=4.5").publish_timeout == 4.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigurationError, match="bad query option"):
            ConnectionSettings.from_url(f"amqp://h/?publish_timeout={bad}")


def test_amqps_enables_tls_with_files() -> None:
    s = ConnectionSettings.from_url("amqps://h/?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem")
    assert s.tls is not None
    assert (s.tls.ca_file, s.tls.cert_file, s.tls.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert s.tls.verify


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("amqp://a:b@h1:1,h2:2/vh", ("amqp://a:b@h1:1/vh", "amqp://a:b@h2:2/vh")),
        ("amqp://h1:1/, amqp://h2:2/", ("amqp://h1:1/", "amqp://h2:2/")),
        (["amqp://h1/", "amqps://h2/"], ("amqp://h1/", "amqps://h2/")),
    ],
)
def test_several_brokers(given: str | list[str], expected: tuple[str, ...]) -> None:
    assert split_urls(given) == expected


@pytest.mark.parametrize(
    "bad", ["http://h/", "amqp://", "localhost", "amqp://h:notaport/", [], "amqp://h/?heartbeat=x"]
)
def test_bad_urls_raise_configuration_error(bad: str | list[str]) -> None:
    with pytest.raises(ConfigurationError):
        ConnectionSettings.from_url(bad)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="hartbeat"):
        ConnectionSettings.from_url("amqp://h/", hartbeat=3)


def test_redaction_hides_password_everywhere() -> None:
    url = "amqp://user:s3cr%40t@host:5672/vh"
    assert "s3cr" not in redact_url(url)
    assert redact_url(url) == "amqp://user:***@host:5672/vh"
    settings = ConnectionSettings.from_url(url)
    assert "s3cr" not in repr(settings)
    assert "s3cr" not in str(settings)


def test_environment_variables_build_the_url() -> None:
    env = {"POSTAGE_HOST": "rmq", "POSTAGE_VHOST": "dev", "POSTAGE_USER": "bob",
           "POSTAGE_PASSWORD": "p@ss"}
    assert url_from_environment(env) == "amqp://bob:p%40ss@rmq:5672/dev"


def test_old_environment_names_still_read() -> None:
    env = {"POSTAGE_RMQ_USER": "old", "POSTAGE_RMQ_PASSWORD": "pw"}
    assert url_from_environment(env) == "amqp://old:pw@localhost:5672/%2F"


def test_postage_url_wins() -> None:
    env = {"POSTAGE_URL": "amqp://x/", "POSTAGE_HOST": "ignored"}
    assert url_from_environment(env) == "amqp://x/"
