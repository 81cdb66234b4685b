"""A connection's outbox: the frames waiting to be written, and the writer task that waits for the socket.

Two queues: ``control`` (replies, pongs, pings, echoes: encoded frames, in order) and
``dirty`` (subscriptions whose cursor is behind their channel's head: their frames are not
queued at all, they are read from the broadcast when written). A publish only marks a
subscription dirty and registers the outbox with the server's deliverer, whose next pass
calls ``write_now``: replies first, then messages, up to ``WRITE_BUDGET`` bytes in one
non-blocking send. Frames come from the shared ``FrameCache``, so a message is encoded once
per encoding (and compressed once per window size, for connections that negotiated
permessage-deflate) however many subscribers write it. Only when the socket would block is a writer
task started (in the connection's nursery) to wait for it; most connections never need one.

Bounds, and what happens at each:
- a subscriber lagging its limit (``outbound_queue_size``, or ``max_unacked`` with acks)
  while its socket is backed up, or holding ``max_unacked`` sent and unacked messages, is
  slow: closed with 4008 (policy ``close``; history it is still replaying after a ``since``
  does not count, only messages published since) or its publishers wait (policy ``block``,
  see ``broadcast``). A subscriber whose next message was dropped from history: 4008.
- ``max_control_queue`` replies, or ``max_control_bytes`` bytes of them (replies, pings,
  pongs, ``/echo`` echoes): the reader stops reading (``wait_for_space``) until they are
  under both again, and TCP backpressure stops the client. What a client that never reads
  can make the server hold is then ``max_control_bytes`` plus the one frame that crossed it,
  plus one write in flight (see below), not a queue of ``max_control_queue`` whole messages.
- one write carries at most ``WRITE_BUDGET`` bytes (or one frame, if larger), and at most
  ``BATCH_PER_SUBSCRIPTION`` messages of one subscription.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from . import codec
from .codec import Encoding
from .context import ConnectionContext, ConnectionState
from .stream import ServerStream
from .subscription import Subscriber
from .wire import CloseCode
from .wsframe import data_frame, message_frame

WRITE_BUDGET = 256 * 1024
BATCH_PER_SUBSCRIPTION = 512

# Closes after which the writer still sends what is queued (bounded by close_timeout): the
# going-away client keeps its pending frames, the abusive one gets the error frames that explain.
_FLUSH_BEFORE_CLOSE = (CloseCode.GOING_AWAY, CloseCode.POLICY, CloseCode.TOKEN_EXPIRED)
_OPEN = ConnectionState.OPEN


class Owner(Protocol):
    """What the outbox needs of its connection."""

    state: ConnectionState
    close_code: int | None
    peer_closed: bool

    def request_close(self, code: int, reason: str) -> None: ...


def _nothing() -> None:
    pass


class Outbox:
    __slots__ = (
        "_deliverer",
        "_frame_cache",
        "_level",
        "_max_control",
        "_max_control_bytes",
        "_max_events",
        "_metrics",
        "_nursery",
        "_owner",
        "_space",
        "_threshold",
        "_wake",
        "_write_in_flight",
        "_writer_scope",
        "control",
        "control_bytes",
        "dirty",
        "encoding",
        "sent_unacked",
        "stream",
        "window_bits",
        "writer_done",
    )

    def __init__(
        self,
        owner: Owner,
        stream: ServerStream,
        encoding: Encoding,
        context: ConnectionContext,
        window_bits: int | None = None,
    ) -> None:
        self._owner = owner
        self.stream = stream
        self.encoding = encoding
        self.window_bits = window_bits  # permessage-deflate's window for our frames; None: plain
        self._threshold = context.config.compression_threshold
        self._level = context.config.compression_level
        self._deliverer = context.deliverer
        self._frame_cache = context.frames
        self._metrics = context.metrics
        self._max_control = context.config.max_control_queue
        self._max_events = context.config.outbound_queue_size  # presence events a watcher may lag
        self._max_control_bytes = context.config.max_control_bytes
        self.control: list[bytes] = []  # a list, not a deque: 56 bytes empty, not 624
        self.control_bytes = 0  # their total size
        self.dirty: dict[Subscriber, None] = {}
        self.sent_unacked: Any = _nothing  # called after a write that took unacked messages
        self._space: trio.Event | None = None  # the reader waits on it when replies pile up
        # The writer's task and what it waits on exist only once it is needed.
        self._nursery: trio.Nursery | None = None
        self._wake: trio.Event | None = None
        self._writer_scope: trio.CancelScope | None = None
        self.writer_done: trio.Event | None = None  # set when a started writer has ended
        self._write_in_flight = False  # the writer task has taken frames it has not yet sent

    # -- what the reader and the request handlers call ------------------------------

    def open(self, nursery: trio.Nursery) -> None:
        """Writers may start (in ``nursery``) from now on."""
        self._nursery = nursery

    def shut(self) -> None:
        """No writer starts any more, and a running one is cancelled."""
        self._nursery = None
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    def send_reply(self, frame: dict[str, Any]) -> None:
        """Encode a reply frame map and queue it (compressed like a message when it is over the
        compression threshold on a connection that negotiated compression)."""
        self.queue(self.data_frame(codec.encode(frame, self.encoding), self.encoding.is_binary))

    def data_frame(self, payload: bytes, binary: bool) -> bytes:
        """The frame for one payload of this connection's own (a reply, an echo)."""
        if self.window_bits is None:  # most connections: the plain frame, one call fewer
            return data_frame(payload, binary=binary)
        return message_frame(
            payload, binary=binary, window_bits=self.window_bits, threshold=self._threshold, level=self._level
        )

    def queue(self, frame: bytes) -> None:
        """Queue an encoded frame (reply, ping, pong, echo) for the deliverer's next pass."""
        self.control.append(frame)
        self.control_bytes += len(frame)
        self._deliverer.schedule(self)

    def mark(self, subscription: Subscriber) -> None:
        """``subscription`` has messages to write: include it in the next pass."""
        self.dirty[subscription] = None
        self._deliverer.schedule(self)

    def forget(self, subscription: Subscriber) -> None:
        self.dirty.pop(subscription, None)

    @property
    def crowded(self) -> bool:
        """Replies are queued up to ``max_control_queue`` or ``max_control_bytes``: the reader
        should wait."""
        return len(self.control) >= self._max_control or self.control_bytes >= self._max_control_bytes

    @property
    def waiting_for_space(self) -> bool:
        """The reader is waiting in ``wait_for_space``."""
        return self._space is not None

    async def wait_for_space(self) -> None:
        """Wait until the queued replies are under both bounds again."""
        if self._space is None:
            self._space = trio.Event()
        await self._space.wait()

    @property
    def queued(self) -> int:
        """Frames waiting: replies, and messages subscribers are behind by."""
        return len(self.control) + sum(max(0, subscription.lag) for subscription in self.dirty)

    @property
    def pending(self) -> bool:
        return bool(self.control or self.dirty or self.stream.backlog)

    def take_control(self) -> bytes:
        """Everything queued in ``control`` (pongs, replies, echoes), taken out: what is owed
        before a close frame that answers the peer's close or its protocol error."""
        data = b"".join(self.control)
        self.control.clear()
        self.control_bytes = 0
        return data

    def closing(self) -> None:
        """The connection decided to close: a started writer (or one with work) finishes."""
        if self._wake is not None or self.pending:
            self._wake_writer()

    def peer_closed(self) -> None:
        """The peer's close frame arrived: a running writer finishes its write and stops."""
        if self._wake is not None:
            self._wake.set()

    # -- what a subscription's broadcast and the deliverer call -----------------------

    def notified(self, subscription: Subscriber) -> None:
        """A message was sent on ``subscription``'s channel (called for every subscriber)."""
        if self._owner.state is not _OPEN:
            return  # closing: a flush (1001, 1008) takes what was queued, nothing published after
        # Over the limit is slow when the client holds it up: its socket is backed up (a
        # backlog, or the writer waiting on it), or it has not acked what it was sent. Messages
        # merely not written yet are not its fault: the deliverer's next pass writes them.
        # (Publishes pipelined in one read all arrive before that pass; the lag they add is
        # bounded by the read size, and the channel's history bounds any lag.)
        # The cheap bound first (overdue <= lag), with ``Subscriber.lag`` inlined (the
        # property call alone costs ~100 ns here, for every subscriber of every publish).
        tracker, limit = subscription.tracker, subscription.limit
        behind = subscription.cursor if tracker is None else min(subscription.cursor, tracker.acked)
        if (
            subscription.broadcast.head - behind > limit  # type: ignore[union-attr]
            and subscription.overdue > limit
            and (not self.stream.idle or subscription.unacked >= limit)
        ):
            self.slow_consumer(subscription)
            return
        if subscription not in self.dirty:
            self.dirty[subscription] = None
            self._deliverer.schedule(self)

    def presence_notified(self, subscription: Subscriber) -> None:
        """A join/leave for a watching subscription: write it with the channel's messages, in
        their order. A watcher holding ``outbound_queue_size`` unwritten events is slow (4008)."""
        if self._owner.state is not _OPEN:
            return
        events = subscription.events
        if events is not None and len(events) > self._max_events:
            self.slow_consumer(subscription)
            return
        if subscription not in self.dirty:
            self.dirty[subscription] = None
            self._deliverer.schedule(self)

    def slow_consumer(self, subscription: Subscriber) -> None:
        if self._owner.state is _OPEN:
            self._metrics.slow_consumer_closes.inc()
        self._owner.request_close(
            CloseCode.SLOW_CONSUMER, f"slow consumer on {subscription.channel}; resume with since"
        )

    def write_now(self) -> None:
        """The deliverer's pass: write what is queued in one non-blocking send, if the socket
        takes it; whatever cannot go now (a send under way, a full socket, more than one
        write's worth, a close in progress) is left to the writer task."""
        if self._owner.state is not _OPEN:
            # Closing: a writer flushing before the close (1001, 1008) takes what is new; no
            # writer starts now, and nothing is written behind a close frame from here.
            if self._wake is not None:
                self._wake.set()
            return
        if self._write_in_flight or not self.stream.idle:
            self._wake_writer()  # a send is under way (or a backlog waits): the writer goes next
            return
        data, parts, delivered = self._collect()
        if not data:
            return
        frames = len(parts)
        try:
            complete = self.stream.send_nowait(data, parts)
        except trio.BrokenResourceError:
            self._owner.request_close(CloseCode.LOST, "connection lost")
            return
        self._count_sent(frames, delivered)
        if not complete or self.control or self.dirty:
            self._wake_writer()

    # -- the writer task --------------------------------------------------------------

    def _wake_writer(self) -> None:
        """Wake the writer task, starting it the first time: most connections never need it."""
        if self._wake is None:
            if self._nursery is None:
                return  # the connection has finished
            self._wake, self.writer_done = trio.Event(), trio.Event()
            self._writer_scope = trio.CancelScope()
            self._nursery.start_soon(self._writer, self._writer_scope)
        self._wake.set()

    async def _writer(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._write_loop()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._owner.request_close(CloseCode.LOST, "connection lost")
            finally:
                assert self.writer_done is not None
                self.writer_done.set()

    async def _write_loop(self) -> None:
        stream, owner = self.stream, self._owner
        while True:
            if owner.state is not _OPEN and (
                owner.close_code not in _FLUSH_BEFORE_CLOSE or owner.peer_closed or not self.pending
            ):
                return
            if not self.pending:
                assert self._wake is not None
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            self._write_in_flight = True
            try:
                data, parts, delivered = self._collect()
                await stream.send_all(data, parts)  # the backlog of a non-blocking send goes first
            finally:
                self._write_in_flight = False
            self._count_sent(len(parts), delivered)

    def _count_sent(self, frames: int, delivered: int) -> None:
        if frames:
            self._metrics.messages_out.inc(frames)
        if delivered:
            self._metrics.deliveries.inc(delivered)

    def _collect(self) -> tuple[bytes, list[bytes], int]:
        """Take replies, then messages, up to the write budget: (bytes, the frames, deliveries).

        A presence watcher's join/leave frames go between its channel's messages, each after
        the message that was the head when it happened (``PresenceEvent.after``)."""
        parts: list[bytes] = []
        size = 0
        control = self.control
        for part in control:
            if size >= WRITE_BUDGET:
                break
            parts.append(part)
            size += len(part)
        replies = len(parts)
        del control[:replies]  # at most max_control_queue (+ one read's pings) long
        self.control_bytes -= size
        if self._space is not None and not self.crowded:
            self._space.set()
            self._space = None
        dirty = self.dirty
        if not dirty:  # replies only (an echo connection's every pass)
            return b"".join(parts), parts, 0
        encoding, bits = self.encoding, self.window_bits
        cache = self._frame_cache
        frames = cache.table(encoding, bits)
        now = trio.current_time()
        unacked_sends = False
        for subscription in list(dirty):
            if size >= WRITE_BUDGET:
                break
            broadcast = subscription.broadcast
            assert broadcast is not None
            messages = broadcast.after(subscription.cursor, BATCH_PER_SUBSCRIPTION)
            if messages is None:  # its next message was dropped from history
                del dirty[subscription]
                self.slow_consumer(subscription)
                break
            taken = 0
            events = subscription.events
            if not events:
                for message in messages:
                    frame = frames.get(message) or cache.encode(message, encoding, bits)
                    parts.append(frame)
                    size += len(frame)
                    taken += 1
                    if size >= WRITE_BUDGET:
                        break
            else:  # a presence watcher with joins/leaves pending: each goes after its message
                for message in messages:
                    while events and events[0].after < message.seq:
                        frame = events.popleft().frame(encoding)
                        parts.append(frame)
                        size += len(frame)
                        replies += 1  # a notice, not a delivery
                    frame = frames.get(message) or cache.encode(message, encoding, bits)
                    parts.append(frame)
                    size += len(frame)
                    taken += 1
                    if size >= WRITE_BUDGET:
                        break
                cursor = messages[taken - 1].seq if taken else subscription.cursor
                while events and events[0].after <= cursor:
                    frame = events.popleft().frame(encoding)
                    parts.append(frame)
                    size += len(frame)
                    replies += 1
            if taken:
                subscription.cursor = messages[taken - 1].seq
                tracker = subscription.tracker
                if tracker is not None and subscription.cursor > tracker.sent:
                    tracker.on_sent(subscription.cursor, now)
                    unacked_sends = True
                broadcast.progressed()
            if subscription.cursor >= broadcast.head and not events:
                del dirty[subscription]
        if unacked_sends:
            self.sent_unacked()  # the first unacked send starts a retransmit deadline
        return b"".join(parts), parts, len(parts) - replies
