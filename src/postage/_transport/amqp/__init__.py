"""amqp: see the layer map in the README."""
