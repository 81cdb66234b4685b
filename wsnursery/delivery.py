"""The deliverer: one task that writes what publishes made ready, straight to the sockets.

A publish does not wake a writer task per subscriber. It registers each subscriber's
connection here. Once the burst of requests that woke this task is over (a scheduler pass
in which nothing new was registered, or ``MAX_PASSES`` passes, whichever comes first), one
pass asks every registered connection to write everything it has queued with a non-blocking
send. A socket that takes it costs no task switch, and the messages a burst made ready
leave in one write per subscriber. Only a connection whose socket would block (or that has
more queued than one write carries) hands the rest to its own writer task, which waits for
the socket.

Bounds: ``MAX_PASSES`` scheduler passes of waiting for a burst to end (so a steady stream
of publishes delays delivery by at most that many passes), and one write per connection per
pass (``connection.WRITE_BUDGET``); the rest waits in the connection's own queues.
"""

from __future__ import annotations

from typing import Protocol

import trio

from . import logs

log = logs.get("delivery")

MAX_PASSES = 8


class Writable(Protocol):
    def write_now(self) -> None:
        """Write what is queued without blocking; hand what cannot go now to the writer task."""


class Deliverer:
    def __init__(self) -> None:
        self._ready: dict[Writable, None] = {}
        self._arrivals = 0
        self._wake = trio.Event()

    def schedule(self, connection: Writable) -> None:
        """``connection`` has frames to write: include it in the next pass."""
        self._arrivals += 1
        self._ready[connection] = None
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await self._burst_end()
            self._wake = trio.Event()
            ready, self._ready = self._ready, {}
            for connection in ready:
                try:
                    connection.write_now()
                except Exception:  # a bug in one connection must not stop delivery to all
                    log.exception("write pass failed for a connection")

    async def _burst_end(self) -> None:
        """Yield scheduler passes while requests keep registering work (at most MAX_PASSES)."""
        for _ in range(MAX_PASSES):
            arrivals = self._arrivals
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self._arrivals == arrivals:
                return
