"""_api: see the layer map in the README."""
