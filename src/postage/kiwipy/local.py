"""kiwiPy's in-process communicator (``kiwipy.local``)."""

from .._api.kiwipy.local import LocalCommunicator

__all__ = ["LocalCommunicator"]
