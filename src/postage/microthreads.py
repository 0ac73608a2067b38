"""Classic microthreads: generator-based cooperative tasks and the scheduler that runs them.

A :class:`MicroThread` is an object whose ``main()`` is a generator; the
:class:`MicroScheduler` advances each one in turn. ``MicroScheduler.main()`` is itself a
generator, so a program runs its components with::

    scheduler = microthreads.MicroScheduler()
    scheduler.add_microthread(processor)
    for i in scheduler.main():
        pass

It ends when every microthread has finished (a processor finishes after a ``quit``
command), when one raises :class:`ExitScheduler`, on Ctrl-C (KeyboardInterrupt), or on
SIGTERM (while ``main()`` runs in the main thread and the program has not set a SIGTERM
handler of its own; ``MicroScheduler(handle_sigterm=False)`` turns this off). Each of
these stops every microthread cleanly: processors stop consuming, let the handler in
progress finish (up to ``MessageProcessor.shutdown_timeout``) and ack it, and the
connections are closed after waiting for confirms. Each step of a processor waits on an
event with a short timeout, so the loop does not spin; the network work happens on the
event loop thread.
"""

from __future__ import annotations

__all__ = ["ExitScheduler", "MicroScheduler", "MicroThread"]

import contextlib
import logging
import signal
from collections.abc import Generator, Iterator

from ._blocking.signals import SignalCatcher

log = logging.getLogger("postage.microthreads")


class ExitScheduler(Exception):
    """Raised by a microthread to stop the whole scheduler."""


class MicroThread:
    """A cooperative task. Override ``step()`` (return False to finish) or ``main()``."""

    def __init__(self) -> None:
        pass

    def step(self) -> bool | None:
        """One unit of work; returning False ends the microthread."""
        return False

    def main(self) -> Iterator[None]:
        while self.step() is not False:
            yield


class MicroScheduler:
    """Runs microthreads round-robin until all have finished."""

    def __init__(self, *, handle_sigterm: bool = True) -> None:
        self.microthreads: list[MicroThread] = []
        self._running: list[tuple[MicroThread, Iterator[None]]] = []
        self.handle_sigterm = handle_sigterm

    def add_microthread(self, microthread: MicroThread) -> None:
        self.microthreads.append(microthread)
        self._running.append((microthread, microthread.main()))

    def main(self) -> Generator[None, None, None]:
        catcher = SignalCatcher((signal.SIGTERM,) if self.handle_sigterm else (),
                                only_default=True)
        try:
            catcher.__enter__()
            while self._running:
                if catcher.caught.is_set():
                    log.info("SIGTERM: stopping %d microthreads", len(self._running))
                    break
                for entry in list(self._running):
                    try:
                        next(entry[1])
                    except StopIteration:
                        self._running.remove(entry)
                yield
        except ExitScheduler:
            log.debug("a microthread asked the scheduler to exit")
        except KeyboardInterrupt:
            log.info("interrupted: stopping %d microthreads", len(self._running))
        finally:
            for _microthread, generator in self._running:
                close = getattr(generator, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()
            self._running.clear()
            catcher.__exit__(None, None, None)
