"""_wire: see the layer map in the README."""
