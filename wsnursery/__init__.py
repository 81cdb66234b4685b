"""wsnursery: a structured-concurrency WebSocket pub/sub server on Trio."""

__version__ = "0.1.0"
