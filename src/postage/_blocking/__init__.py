"""_blocking: see the layer map in the README."""
