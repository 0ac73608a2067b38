"""_tooling: see the layer map in the README."""
