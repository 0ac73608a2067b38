"""Every public name of kiwiPy 0.9 exists in postage.kiwipy, with the same parameters
(names, order and defaults), and every kiwiPy exception is a postage.PostageError."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

import postage

MODULES = ["", ".communications", ".exceptions", ".filters", ".futures", ".local", ".utils",
           ".communicate", ".rmq", ".rmq.communicator", ".rmq.tasks", ".rmq.threadcomms"]
# constructor arguments that take an aio-pika object in kiwiPy and a Postage one here, and
# the task prefetch, bounded here (docs/kiwipy.md)
DIFFERENT_DEFAULTS = {"encoder", "decoder", "connection_factory", "task_prefetch_count",
                      "prefetch_count"}


def pairs() -> list[tuple[str, str]]:
    found = []
    for suffix in MODULES:
        real = importlib.import_module(f"kiwipy{suffix}")
        for name in real.__all__:
            found.append((suffix, name))
    return found


def signature_of(obj: Any) -> list[tuple[str, Any]] | None:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    return [(p.name, None if p.name in DIFFERENT_DEFAULTS else p.default)
            for p in sig.parameters.values()]


def assert_compatible(got: list[tuple[str, Any]] | None, expected: list[tuple[str, Any]],
                      what: str) -> None:
    """kiwiPy's parameters, in order with their defaults; more only if optional."""
    assert got is not None, what
    assert got[:len(expected)] == expected, what
    assert all(default is not inspect.Parameter.empty for _, default in got[len(expected):]), what


@pytest.mark.parametrize(("suffix", "name"), pairs())
def test_every_kiwipy_name_is_there_with_its_parameters(suffix: str, name: str) -> None:
    real = getattr(importlib.import_module(f"kiwipy{suffix}"), name)
    ours = getattr(importlib.import_module(f"postage.kiwipy{suffix}"), name)
    if inspect.isclass(real) and issubclass(real, BaseException):
        if real not in (TimeoutError, ours) and name != "CancelledError":
            assert issubclass(ours, postage.PostageError), name
        return
    if not callable(real) or real is ours:
        return
    expected, got = signature_of(real), signature_of(ours)
    # constructors a program does not call: the library makes these objects (and the
    # abstract interface has none); RmqCommunicator takes a Postage Core or a URL
    made_by_the_library = ("Communicator", "CommunicatorHelper", "LocalCommunicator",
                           "RmqCommunicator", "RmqIncomingTask", "RmqThreadTaskQueue")
    if expected is not None and name not in made_by_the_library:
        assert_compatible(got, expected, name)
    if inspect.isclass(real):
        for method, value in vars(real).items():
            if method.startswith("_") or not callable(value):
                continue
            assert hasattr(ours, method), f"{name}.{method}"
            real_sig, our_sig = signature_of(value), signature_of(getattr(ours, method))
            if real_sig is not None and our_sig is not None:
                assert_compatible(our_sig, real_sig, f"{name}.{method}")
