"""kiwiPy's event helper (``kiwipy.utils``)."""

from .._api.kiwipy.local import EventHelper

__all__ = ["EventHelper"]
