"""``postage monitor`` never sends credentials to a guessed endpoint or in clear over TLS."""

from __future__ import annotations

import pytest

from postage import ConfigurationError
from postage._tooling.cli.monitor import Management

SECRET = "Mgmt-s3cret"


def test_no_management_url_means_no_management_api() -> None:
    # it used to guess http://HOST:15672 and send the AMQP user and password there
    assert Management.for_url(f"amqps://u:{SECRET}@rmq.example:5671/", None, {}) is None
    assert Management.for_url(f"amqp://u:{SECRET}@rmq.example/", None, {}) is None


def test_a_tls_broker_needs_an_https_management_url() -> None:
    with pytest.raises(ConfigurationError, match="https"):
        Management.for_url(f"amqps://u:{SECRET}@rmq.example:5671/",
                           "http://rmq.example:15672", {})
    mgmt = Management.for_url(f"amqps://u:{SECRET}@rmq.example:5671/vh",
                              "https://rmq.example:15671", {})
    assert mgmt is not None and mgmt.base == "https://rmq.example:15671"
    assert mgmt.vhost == "vh"
    # on this machine plain http stays allowed (nothing crosses the network)
    assert Management.for_url(f"amqps://u:{SECRET}@localhost:5671/",
                              "http://127.0.0.1:15672", {}) is not None


def test_management_credentials_are_their_own() -> None:
    amqp = f"amqp://app:{SECRET}@rmq.example/"
    in_url = Management.for_url(amqp, "https://admin:pw%23x@rmq.example:15671", {})
    assert in_url is not None
    assert (in_url.user, in_url.password) == ("admin", "pw#x")
    assert "admin" not in in_url.base and "pw" not in in_url.base  # not sent in the URL
    from_env = Management.for_url(amqp, "https://rmq.example:15671", {
        "POSTAGE_MANAGEMENT_USER": "ops", "POSTAGE_MANAGEMENT_PASSWORD": "ops-pw"})
    assert from_env is not None and (from_env.user, from_env.password) == ("ops", "ops-pw")
    from_env_url = Management.for_url(amqp, None, {
        "POSTAGE_MANAGEMENT_URL": "https://rmq.example:15671"})
    assert from_env_url is not None and from_env_url.user == "app"  # the AMQP ones, named


def test_the_repr_shows_no_password() -> None:
    mgmt = Management.for_url(f"amqp://u:{SECRET}@rmq.example/", "https://rmq.example", {})
    assert mgmt is not None
    assert SECRET not in repr(mgmt) and SECRET not in str(mgmt)


def test_credentials_never_follow_a_redirect() -> None:
    """A management endpoint answering 302 to another URL (plain http://, another host)
    gets an error back, and the other URL never sees the Authorization header."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from typing import Any

    seen: list[str | None] = []

    class Target(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: Any) -> None:
            pass

    target = HTTPServer(("127.0.0.1", 0), Target)

    class Redirect(Target):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{target.server_port}/steal")
            self.end_headers()

    redirect = HTTPServer(("127.0.0.1", 0), Redirect)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (target, redirect)]
    for thread in threads:
        thread.start()
    try:
        mgmt = Management.for_url(f"amqp://u:{SECRET}@127.0.0.1/",
                                  f"http://127.0.0.1:{redirect.server_port}", {})
        assert mgmt is not None
        with pytest.raises(ConfigurationError, match="redirects to"):
            mgmt.fetch_queues()
        assert seen == []  # the redirect's target was never asked
    finally:
        for server in (target, redirect):
            server.shutdown()
            server.server_close()
