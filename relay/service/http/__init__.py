"""The HTTP listener: one quart-trio app served by hypercorn."""
