"""kiwiPy's broadcast filter (``kiwipy.filters``)."""

from .._api.kiwipy.local import BroadcastFilter

__all__ = ["BroadcastFilter"]
