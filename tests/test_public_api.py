"""The public surface is exactly what the package exports, and every public module says so."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import postage
import postage._exceptions as exceptions

KIWIPY_MODULES = ["postage.kiwipy", "postage.kiwipy.communications", "postage.kiwipy.exceptions",
                  "postage.kiwipy.filters", "postage.kiwipy.futures", "postage.kiwipy.local",
                  "postage.kiwipy.utils", "postage.kiwipy.communicate", "postage.kiwipy.rmq",
                  "postage.kiwipy.rmq.communicator", "postage.kiwipy.rmq.tasks",
                  "postage.kiwipy.rmq.threadcomms", "postage.kiwipy.rmq.defaults"]
PUBLIC_MODULES = ["postage", "postage.messaging", "postage.microthreads",
                  "postage.generic_application", "postage.aio", "postage.dlq", *KIWIPY_MODULES]


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(postage) if not name.startswith("_")}
    modules = {name for name, value in vars(postage).items() if inspect.ismodule(value)}
    assert set(postage.__all__) - {"__version__"} == public - (modules - {"aio"})


def test_every_public_module_has_all() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), name
        for exported in module.__all__:
            assert hasattr(module, exported), f"{name}.{exported}"


def test_implementation_modules_are_private() -> None:
    for info in pkgutil.iter_modules(postage.__path__):
        if not info.name.startswith("_"):
            allowed = [*PUBLIC_MODULES, "postage.testing", "postage.pytest_plugin",
                       "postage.opentelemetry"]  # the last one needs postage[otel]
            assert f"postage.{info.name}" in allowed, info.name


def test_every_error_derives_from_postage_error() -> None:
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, postage.PostageError), name
        assert cls.__doc__, f"{name} has no docstring"
        assert getattr(postage, name) is cls


def test_timeouts_are_timeout_errors() -> None:
    assert issubclass(postage.RpcTimeout, TimeoutError)
    assert issubclass(postage.DeliveryTimeout, TimeoutError)


def test_import_has_no_side_effects() -> None:
    code = ("import threading, postage, postage.messaging, postage.generic_application, "
            "postage.microthreads, postage.aio; "
            "assert threading.active_count() == 1, threading.enumerate()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
