"""The hub: where channels' streams live, and the interface connection code talks to.

Connection code only ever calls the ``Hub`` methods and reads ``ChannelStream`` objects, so a
hub backed by Redis Streams can replace the in-memory one without touching it: such a hub
keeps the same per-process ``ChannelStream`` window, filled from the stream it reads.

A ``ChannelStream`` holds one channel's recent messages in a ring of ``history_size`` slots,
each message kept at most ``history_age`` seconds. A subscription is a cursor into that ring:
the hub never copies a message per subscriber. Each ``Message`` caches its encoded frame per
encoding, so a broadcast is encoded once per encoding and every writer sends the same bytes.

Bounds:
- history: the oldest message is evicted when the ring is full or the message is too old;
  a subscriber whose cursor falls behind the oldest held message has lost data and is
  closed with 4008 (it resumes with ``since`` and gets ``recovered: false``).
- subscriber lag (``head - cursor``, or ``head - acked`` with acks): past its limit the
  subscriber is slow. Policy ``close`` (default) closes it with 4008 (history it is still
  replaying after a resume does not count); policy ``block`` makes the publisher wait until
  every subscriber of the channel is back under the limit.
- channels: at most ``max_channels``; a new channel evicts the least recently used channel
  that has no subscribers, and when every channel has subscribers the request is refused
  with ``too_many_channels``.
- dedup: a bounded window of idempotency keys per channel (see ``DedupWindow``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Protocol

import attrs
import trio

from . import codec, wsframe
from .codec import Encoding
from .protocol import Position, ProtocolError, message_frame
from .reliability import DedupWindow


class Message:
    """One published message, with its wire frames encoded lazily, once per encoding."""

    __slots__ = ("channel", "epoch", "seq", "data", "ts", "born", "_json", "_cbor")

    def __init__(self, channel: str, epoch: str, seq: int, data: Any, ts: int, born: float) -> None:
        self.channel = channel
        self.epoch = epoch
        self.seq = seq
        self.data = data
        self.ts = ts
        self.born = born
        self._json: bytes | None = None
        self._cbor: bytes | None = None

    def frame(self, encoding: Encoding) -> bytes:
        """The complete WebSocket frame carrying this message in ``encoding``."""
        if encoding is Encoding.JSON:
            if self._json is None:
                self._json = self._encode(encoding)
            return self._json
        if self._cbor is None:
            self._cbor = self._encode(encoding)
        return self._cbor

    def _encode(self, encoding: Encoding) -> bytes:
        payload = codec.encode(
            message_frame(self.channel, self.epoch, self.seq, self.data, self.ts), encoding
        )
        return wsframe.data_frame(payload, binary=encoding.is_binary)


class Sink(Protocol):
    """What a hub notifies: a connection's subscription to one channel."""

    def notify(self) -> None:
        """A message was appended to the stream (called without blocking, in publish)."""

    @property
    def lag(self) -> int:
        """How many messages of the stream this subscriber still has to take."""

    @property
    def full(self) -> bool:
        """The subscriber lags by its limit or more (``block`` makes publishers wait)."""


@attrs.frozen
class Published:
    position: Position
    duplicate: bool


class ChannelStream:
    """One channel's stream in this process: epoch, head seq, bounded history, subscribers."""

    def __init__(self, name: str, epoch: str, history_size: int, history_age: float) -> None:
        self.name = name
        self.epoch = epoch
        self.head = 0  # seq of the newest message; seqs start at 1
        self.oldest = 1  # seq of the oldest message still held (head + 1 when none)
        self.sinks: set[Sink] = set()
        self._ring: list[Message | None] = [None] * history_size
        self._size = history_size
        self._age = history_age
        self._progress: trio.Event | None = None

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.head)

    def append(self, message: Message) -> None:
        self.head = message.seq
        self._ring[message.seq % self._size] = message
        if self.head - self.oldest >= self._size:
            self.oldest = self.head - self._size + 1
        for sink in tuple(self.sinks):
            sink.notify()

    def expire(self, now: float) -> None:
        """Drop messages older than the history age from the front."""
        deadline = now - self._age
        while self.oldest <= self.head:
            message = self._ring[self.oldest % self._size]
            if message is None or message.born >= deadline:
                break
            self._ring[self.oldest % self._size] = None
            self.oldest += 1

    def holds_after(self, seq: int) -> bool:
        """True when every message after ``seq`` up to the head is still held."""
        return self.oldest - 1 <= seq <= self.head

    def after(self, seq: int, limit: int) -> list[Message] | None:
        """Up to ``limit`` messages after ``seq``, or None when some were already evicted."""
        if seq < self.oldest - 1:
            return None
        last = min(self.head, seq + limit)
        ring, size = self._ring, self._size
        return [ring[s % size] for s in range(seq + 1, last + 1)]  # type: ignore[misc]

    def any_full(self) -> bool:
        return any(sink.full for sink in self.sinks)

    def progressed(self) -> None:
        """A cursor or ack advanced: wake publishers waiting under the ``block`` policy."""
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    async def wait_progress(self) -> None:
        if self._progress is None:
            self._progress = trio.Event()
        await self._progress.wait()


class Hub(Protocol):
    """What connection code needs from a hub (in-memory today, Redis Streams later)."""

    async def publish(self, channel: str, data: Any, key: str | None) -> Published: ...

    async def attach(self, channel: str, sink: Sink) -> ChannelStream: ...

    def detach(self, channel: str, sink: Sink) -> None: ...


class MemoryHub:
    """The embedded default hub: every stream lives in this process's memory.

    Its history does not survive a restart, so each stream gets a fresh random epoch when it
    is created; a client resuming with an old epoch is told ``recovered: false``.
    """

    def __init__(
        self,
        *,
        history_size: int = 1024,
        history_age: float = 300.0,
        dedup_size: int = 10_000,
        dedup_age: float = 300.0,
        max_channels: int = 10_000,
        block: bool = False,
        clock: Any = time.monotonic,
    ) -> None:
        self._history_size = history_size
        self._history_age = history_age
        self._dedup_size = dedup_size
        self._dedup_age = dedup_age
        self._max_channels = max_channels
        self._block = block
        self._clock = clock
        self._streams: dict[str, ChannelStream] = {}
        self._dedup: dict[str, DedupWindow] = {}
        self.publishes = 0
        self.duplicates = 0

    @property
    def channel_count(self) -> int:
        return len(self._streams)

    def stream(self, channel: str) -> ChannelStream | None:
        return self._streams.get(channel)

    def _stream(self, channel: str) -> ChannelStream:
        stream = self._streams.pop(channel, None)
        if stream is None:
            if len(self._streams) >= self._max_channels:
                self._evict_idle_channel()
            stream = ChannelStream(
                channel, secrets.token_hex(4), self._history_size, self._history_age
            )
            self._dedup[channel] = DedupWindow(max_keys=self._dedup_size, max_age=self._dedup_age)
        self._streams[channel] = stream  # re-inserted last: dict order is recency
        return stream

    def _evict_idle_channel(self) -> None:
        for name, stream in self._streams.items():
            if not stream.sinks:
                del self._streams[name]
                del self._dedup[name]
                return
        raise ProtocolError(
            "too_many_channels", f"the server holds its limit of {self._max_channels} channels"
        )

    async def publish(self, channel: str, data: Any, key: str | None = None) -> Published:
        stream = self._stream(channel)
        now = self._clock()
        dedup = self._dedup[channel]
        if key is not None:
            seen = dedup.lookup(key, now)
            if seen is not None:
                self.duplicates += 1
                return Published(Position(*seen), duplicate=True)
        if self._block:
            while stream.any_full():
                await stream.wait_progress()
            # The wait may have let the same key through on another task.
            if key is not None and (seen := dedup.lookup(key, now)) is not None:
                self.duplicates += 1
                return Published(Position(*seen), duplicate=True)
        stream.expire(now)
        seq = stream.head + 1
        stream.append(
            Message(channel, stream.epoch, seq, data, int(time.time() * 1000), now)
        )
        if key is not None:
            dedup.remember(key, stream.epoch, seq, now)
        self.publishes += 1
        return Published(Position(stream.epoch, seq), duplicate=False)

    async def attach(self, channel: str, sink: Sink) -> ChannelStream:
        stream = self._stream(channel)
        stream.expire(self._clock())
        stream.sinks.add(sink)
        return stream

    def detach(self, channel: str, sink: Sink) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.sinks.discard(sink)
            stream.progressed()
