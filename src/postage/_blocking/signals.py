"""Signal handling for the blocking loops Postage runs for a program (graceful shutdown).

Postage never installs a signal handler at import time or behind the program's back. A
:class:`SignalCatcher` is entered only by a loop that *is* the program's main loop and
asks for it (``MicroScheduler.main()``, ``Communicator.run_until_signal()``): while it is
active, the chosen signals set an event instead of killing the process, so the loop can
stop consuming, let running handlers finish, settle their messages, wait for confirms and
close; a second signal raises KeyboardInterrupt (stop waiting); on exit the previous
handlers come back. Outside the main thread (where Python
cannot install handlers) it does nothing.
"""

from __future__ import annotations

__all__ = ["SignalCatcher"]

import logging
import signal
import threading
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger("postage.signals")


class SignalCatcher:
    """A context manager that turns ``signals`` into :attr:`caught` while it is active.

    With ``only_default`` a signal whose handler is not the default one (the program set
    its own, or ignores it) is left alone.
    """

    def __init__(self, signals: Iterable[int], *, only_default: bool = False) -> None:
        self.signals = tuple(signals)
        self.only_default = only_default
        self.caught = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def active(self) -> bool:
        """True when at least one signal is being caught."""
        return bool(self._previous)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.caught.is_set():
            # a second signal while draining: stop waiting for handlers (the connection
            # closes with a short deadline, unsettled messages go back to their queues)
            log.warning("signal %s again: exiting without waiting for handlers",
                        signal.Signals(signum).name)
            raise KeyboardInterrupt
        self.signum = signum
        self.caught.set()
        log.info("signal %s: shutting down gracefully", signal.Signals(signum).name)

    def __enter__(self) -> SignalCatcher:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.signals:
            previous = signal.getsignal(signum)
            if self.only_default and previous is not signal.SIG_DFL:
                continue
            signal.signal(signum, self._handle)
            self._previous[signum] = previous
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
