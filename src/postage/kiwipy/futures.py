"""kiwiPy's future helpers (``kiwipy.futures``): ``concurrent.futures`` futures."""

from .._api.kiwipy.errors import (
    CancelledError,
    Future,
    as_completed,
    capture_exceptions,
    chain,
    copy_future,
    wait,
)

__all__ = ["CancelledError", "Future", "as_completed", "capture_exceptions", "chain",
           "copy_future", "wait"]
