"""The deliverer: one task that writes what publishes made ready, straight to the sockets.

A publish does not wake a writer task per subscriber. It registers each subscriber's
connection here. Once the burst of requests that woke this task is over (a scheduler pass
in which nothing new was registered, or ``MAX_PASSES`` passes, whichever comes first), one
pass asks every registered connection to write everything it has queued with a non-blocking
send. A socket that takes it costs no task switch, and the messages a burst made ready
leave in one write per subscriber. Only a connection whose socket would block (or that has
more queued than one write carries) hands the rest to its own writer task, which waits for
the socket.

The frames those writes carry come from the ``FrameCache``: the hub stores messages as
data, and a message is encoded here, once per encoding (and, with permessage-deflate, once
per compression window size), the first time a subscriber's write needs it; every other
subscriber of that encoding and window writes the same bytes.

Bounds: ``MAX_PASSES`` scheduler passes of waiting for a burst to end (so a steady stream
of publishes delays delivery by at most that many passes), and one write per connection per
pass (``outbox.WRITE_BUDGET``); the rest waits in the connection's own queues. The frame
cache holds at most ``max_frames`` frames and ``max_bytes`` bytes per table, dropping the
oldest first (a message needed again after that is encoded again); the newest frame is
always kept, even when it alone is over ``max_bytes``. There is one table per encoding
(plain frames) and one per encoding and window size that some connection compresses with,
created at its first use: at most 2 x (1 + 8) tables, almost always 2 to 4 (clients that
limit the server's window are rare).
"""

from __future__ import annotations

import collections
from typing import Protocol

import trio

from . import codec, logs, wsframe
from .broadcast import StoredMessage
from .codec import Encoding
from .protocol import message_frame

log = logs.get("delivery")

MAX_PASSES = 8
FRAME_CACHE_FRAMES = 4096
FRAME_CACHE_BYTES = 64 * 2**20


class FrameCache:
    """Each message's WebSocket frame, encoded once per encoding and shared by every write.

    A table is keyed by encoding and compression window (None for plain frames): a message's
    frame for subscribers that compress with a 15-bit window is compressed once (RSV1 set),
    and all of them write those bytes; a message under ``threshold`` bytes is sent plain
    even to them (RSV1 is per message).

    The hot path reads ``table(encoding, bits)`` once per write and then does one dict lookup
    per message (``table.get(message) or cache.encode(message, encoding, bits)``): no
    allocation per delivery, no encode (or compression) per subscriber.
    """

    def __init__(
        self,
        max_frames: int = FRAME_CACHE_FRAMES,
        max_bytes: int = FRAME_CACHE_BYTES,
        threshold: int = 0,
        level: int = 6,
    ) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.threshold = threshold  # compression: payloads under it go plain
        self.level = level  # compression: the zlib level
        self._tables: dict[tuple[Encoding, int | None], collections.OrderedDict[StoredMessage, bytes]] = {}
        self._bytes: dict[tuple[Encoding, int | None], int] = {}

    def table(
        self, encoding: Encoding, window_bits: int | None = None
    ) -> collections.OrderedDict[StoredMessage, bytes]:
        """The frames cached for ``encoding`` compressed with ``window_bits`` (read only: add
        with ``encode``)."""
        key = (encoding, window_bits)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = collections.OrderedDict()
            self._bytes[key] = 0
        return table

    def frame(self, message: StoredMessage, encoding: Encoding, window_bits: int | None = None) -> bytes:
        frame = self.table(encoding, window_bits).get(message)
        return frame if frame is not None else self.encode(message, encoding, window_bits)

    def encode(self, message: StoredMessage, encoding: Encoding, window_bits: int | None = None) -> bytes:
        """Encode ``message`` for ``encoding`` (compressed with ``window_bits`` when not None and
        over the threshold), cache the frame, and drop the oldest past the bounds."""
        payload = codec.encode(
            message_frame(message.channel, message.epoch, message.seq, message.data, message.ts), encoding
        )
        frame = wsframe.message_frame(
            payload, binary=encoding.is_binary, window_bits=window_bits, threshold=self.threshold, level=self.level
        )
        key = (encoding, window_bits)
        table = self.table(encoding, window_bits)
        size = self._bytes[key] + len(frame)
        old = table.pop(message, None)
        if old is not None:
            size -= len(old)
        table[message] = frame
        while len(table) > 1 and (len(table) > self.max_frames or size > self.max_bytes):
            size -= len(table.popitem(last=False)[1])
        self._bytes[key] = size
        return frame

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def bytes(self, encoding: Encoding, window_bits: int | None = None) -> int:
        return self._bytes.get((encoding, window_bits), 0)


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
