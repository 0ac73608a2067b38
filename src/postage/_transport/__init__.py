"""_transport: see the layer map in the README."""
