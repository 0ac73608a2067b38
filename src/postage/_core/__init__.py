"""_core: see the layer map in the README."""
