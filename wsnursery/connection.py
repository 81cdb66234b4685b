"""One WebSocket connection (pub/sub, or ``/echo``): its reader, and a nursery for its writer.

The reader (the connection's own task) reads frames with the sans-I/O ``frame_reader``,
answers pings, parses requests and acts on them; every request in one read is handled
before it reads again. The writer task writes the frames the server's deliverer could not
write without blocking (replies and messages, coalesced into one write). Each runs in its
own cancel scope, and the writer in the connection's nursery, so when the connection ends,
every task it started is gone. Pings come from the server's one heartbeat
task (see ``heartbeat``), which closes a connection with 4000 when nothing arrives in time.

Every subscription is a cursor into its channel's shared history (see ``hub``): a publish
only marks the subscription dirty and registers the connection with the server's
deliverer (see ``delivery``), whose next pass writes the frames the hub encoded once, and
the connection's replies, with one non-blocking send. Only when the socket would block
does the connection's writer task take over, and it waits for the socket. Bounds and what
happens at each:
- a subscriber lagging ``outbound_queue_size`` messages (``max_unacked`` with acks) while
  its socket is backed up, or holding ``max_unacked`` sent and unacked ones, is slow: closed
  with 4008 (policy ``close``; history it is still replaying after a ``since`` does not
  count, only messages published since then) or its publishers wait (policy ``block``);
- replies queued past ``max_control_queue``: the reader stops reading until they are sent;
- one write carries at most ``WRITE_BUDGET`` bytes (or one frame, if larger);
- ``max_subscriptions`` per connection, ``max_errors`` error frames before a 1008 close.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING, Any

import trio

from . import codec, logs, protocol
from .codec import Encoding
from .frame_reader import Control, FrameError, FrameReader
from .protocol import Position, ProtocolError
from .reliability import AckTracker
from .wire import CloseCode, Opcode
from .wsframe import control_frame, data_frame

if TYPE_CHECKING:
    from .broadcast import Broadcast
    from .server import Server
    from .stream import ServerStream

log = logs.get("connection")

READ_SIZE = 65536
WRITE_BUDGET = 256 * 1024
BATCH_PER_SUBSCRIPTION = 512

# Closes after which the writer still sends what is queued (bounded by close_timeout): the
# going-away client keeps its pending frames, the abusive one gets the error frames that explain.
_FLUSH_BEFORE_CLOSE = (CloseCode.GOING_AWAY, CloseCode.POLICY)
# Closes for bytes that broke the protocol: no close frame is parsed after them.
_PROTOCOL_ERRORS = (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD, CloseCode.TOO_BIG)


class Subscription:
    """A connection's cursor into one channel's stream (a ``hub.Sink``)."""

    __slots__ = ("connection", "channel", "broadcast", "cursor", "tracker", "limit", "ready", "replay_end")

    def __init__(self, connection: Connection, channel: str, tracker: AckTracker | None) -> None:
        self.connection = connection
        self.channel = channel
        self.broadcast: Broadcast | None = None
        self.cursor = 0  # seq of the last message written to the client
        self.tracker = tracker
        config = connection.server.config
        self.limit = config.max_unacked if tracker else config.outbound_queue_size
        self.ready = False
        self.replay_end = 0  # the head when the cursor was placed: history up to it is a replay

    @property
    def lag(self) -> int:
        assert self.broadcast is not None
        behind = self.cursor if self.tracker is None else min(self.cursor, self.tracker.acked)
        return self.broadcast.head - behind

    @property
    def unacked(self) -> int:
        """Messages written to the client and not acknowledged (0 without acks)."""
        return 0 if self.tracker is None else max(0, self.cursor - self.tracker.acked)

    @property
    def overdue(self) -> int:
        """The lag that makes a slow consumer: messages published since the cursor was placed.

        A resume (``since``) or ``replay`` may start far back in history (up to ``history_size``);
        catching up on that is not slowness, falling behind the live stream is. (``full``, for the
        ``block`` policy, keeps counting the whole lag: publishers wait rather than evict history
        a subscriber still has to read.)
        """
        assert self.broadcast is not None
        return min(self.lag, self.broadcast.head - self.replay_end)

    @property
    def full(self) -> bool:
        return self.ready and self.lag >= self.limit

    def notify(self) -> None:
        if self.ready:
            self.connection.subscription_notified(self)


class Connection:
    def __init__(
        self,
        server: Server,
        stream: ServerStream,
        already_read: bytes,
        encoding: Encoding,
        remote: str,
        *,
        echo: bool = False,
    ) -> None:
        self.server = server
        self.echo = echo
        self.config = server.config
        self.hub = server.hub
        self.stream = stream
        self._frames = FrameReader(self.config.max_message_size)
        self._frames.feed(already_read)  # what the client sent right behind its request head
        self.encoding = encoding
        self.remote = remote
        self.subscriptions: dict[str, Subscription] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._peer_closed = False  # the client's close frame arrived (we answer it, then close)
        self._parser = server.request_parser
        self._control: collections.deque[bytes] = collections.deque()
        self._control_space: trio.Event | None = None  # the reader waits on it when replies pile up
        self._dirty: dict[Subscription, None] = {}
        self._acking: set[Subscription] = set()
        # The writer's task and what it waits on exist only once it is needed (most never are).
        self._wake: trio.Event | None = None
        self._deliverer = server.deliverer
        self._frame_cache = server.frames
        self._write_in_flight = False  # the writer task has taken frames it has not yet sent
        self._timer = server.timer  # wakes us at the earliest ack-retransmit deadline
        self._nursery: trio.Nursery | None = None
        self._writer_scope: trio.CancelScope | None = None
        self._writer_done: trio.Event | None = None
        self._reader_scope = trio.CancelScope()
        self._closing = trio.CancelScope(shield=True)  # the close handshake; ``abort`` gives up on it
        self._errors = 0
        self._pings_sent = 0

    # -- what other tasks call -------------------------------------------------------

    def subscription_notified(self, subscription: Subscription) -> None:
        if self.close_code is not None:
            return  # closing: a flush (1001, 1008) takes what was queued, nothing published after
        # Over the limit is slow when the client holds it up: its socket is backed up (a
        # backlog, or the writer waiting on it), or it has not acked what it was sent. Messages
        # merely not written yet are not its fault: the deliverer's next pass writes them.
        # (Publishes pipelined in one read all arrive before that pass; the lag they add is
        # bounded by the read size, and the channel's history bounds any lag.)
        # Called for every subscriber on every publish: the cheap bound first (overdue <= lag),
        # with ``Subscription.lag`` inlined (the property call alone costs ~100 ns here).
        tracker, limit = subscription.tracker, subscription.limit
        behind = subscription.cursor if tracker is None else min(subscription.cursor, tracker.acked)
        if (
            subscription.broadcast.head - behind > limit  # type: ignore[union-attr]
            and subscription.overdue > limit
            and (not self.stream.idle or subscription.unacked >= limit)
        ):
            self.slow_consumer(subscription)
            return
        if subscription not in self._dirty:
            self._dirty[subscription] = None
            self._deliverer.schedule(self)

    def write_now(self) -> None:
        """The deliverer's pass: write what is queued in one non-blocking send, if the socket
        takes it; whatever cannot go now (a send under way, a full socket, more than one
        write's worth, a close in progress) is left to the writer task."""
        if self.close_code is not None:
            # Closing: a writer flushing before the close (1001, 1008) takes what is new; no
            # writer starts now, and nothing is written behind a close frame from here.
            if self._wake is not None:
                self._wake.set()
            return
        if self._write_in_flight or not self.stream.idle:
            self._wake_writer()  # a send is under way (or a backlog waits): the writer goes next
            return
        data, frames, delivered = self._collect()
        if not data:
            return
        try:
            complete = self.stream.send_nowait(data)
        except trio.BrokenResourceError:
            self.request_close(CloseCode.LOST, "connection lost")
            return
        self._count_sent(frames, delivered)
        if not complete or self._control or self._dirty:
            self._wake_writer()

    def _wake_writer(self) -> None:
        """Wake the writer task, starting it the first time: most connections never need it."""
        if self._wake is None:
            if self._nursery is None:
                return  # the connection has finished
            self._wake, self._writer_done = trio.Event(), trio.Event()
            self._writer_scope = trio.CancelScope()
            self._nursery.start_soon(self._writer, self._writer_scope)
        self._wake.set()

    def slow_consumer(self, subscription: Subscription) -> None:
        if self.close_code is None:
            self.server.metrics.slow_consumer_closes.inc()
        self.request_close(
            CloseCode.SLOW_CONSUMER, f"slow consumer on {subscription.channel}; resume with since"
        )

    def request_close(self, code: int, reason: str) -> None:
        """Start closing: the reader stops, the writer finishes its write and stops."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self._reader_scope.cancel()
        if self._wake is not None or self._control or self._dirty or self.stream.backlog:
            self._wake_writer()

    def abort(self) -> None:
        """Stop waiting on the close handshake (the server's shutdown has run out of time)."""
        self._closing.cancel()

    @property
    def queued(self) -> int:
        return len(self._control) + sum(max(0, sub.lag) for sub in self._dirty)

    # -- lifetime ---------------------------------------------------------------------

    async def run(self, nursery: trio.Nursery) -> None:
        """Serve until the connection ends; returns the close code (for the log line)."""
        if not self.echo:
            self._enqueue(
                protocol.welcome_frame(
                    self.server.server_name, self.config.heartbeat_interval, self.config.max_message_size
                )
            )
        self._nursery = nursery
        heartbeats = self.server.heartbeats
        heartbeats.add(self)
        try:
            with self._reader_scope:
                await (self._echo_loop() if self.echo else self._read_loop())
        finally:
            heartbeats.remove(self)
            self._timer.disarm(self)
            await self._finish()
            self._nursery = None  # no writer starts after this
            for subscription in self.subscriptions.values():
                self.hub.detach(subscription.channel, subscription)

    def _stop_writer(self) -> None:
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    async def _wait_control_space(self) -> None:
        if self._control_space is None:
            self._control_space = trio.Event()
        await self._control_space.wait()

    async def _finish(self) -> None:
        """The close handshake, within ``close_timeout`` in all (and cut short by ``abort``).

        First the writer finishes the write under way (for our 1001 and 1008, the whole
        queue), so a close frame never follows half a frame. The peer closed: answer with
        its code (what is still queued is dropped). We close: send our close frame, then
        wait for the peer's; after a protocol error (1002, 1007, 1009), stop sending and drop
        what the peer still sends until it closes, since closing a socket with unread input
        resets the connection, which can destroy the close frame on its way; after a
        heartbeat timeout, wait for nothing. The peer vanished (1006): nothing to send.
        """
        closing = self._closing
        closing.deadline = trio.current_time() + self.config.close_timeout
        with closing:  # shielded: the close handshake runs even when the server is stopping
            if self.close_code is None:  # the reader was cancelled from outside
                self.close_code, self.close_reason = CloseCode.LOST, "connection lost"
            code = self.close_code
            if code != CloseCode.LOST and self._writer_done is not None:
                await self._writer_done.wait()
            self._stop_writer()
            if code != CloseCode.LOST:
                try:
                    await self.stream.send_close_frame(None if code == CloseCode.NO_STATUS else code, self.close_reason)
                    if code in _PROTOCOL_ERRORS:
                        await self.stream.drain()
                    elif not self._peer_closed and code != CloseCode.HEARTBEAT_TIMEOUT:
                        while await self._receive_message() is not None:
                            pass  # what the peer sent before its close frame is dropped
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        self.stream.close_now()

    # -- reader -----------------------------------------------------------------------

    async def _receive_message(self) -> str | bytes | None:
        """The next message (text as ``str``, binary as ``bytes``); None once the connection ends.

        Pings are answered here (a pong queued like any reply, so they wait for the reply
        queue too), pongs only count as traffic for the heartbeat. It ends on the peer's close
        frame, the end of the stream (1006), or a protocol error (its close code).
        """
        frames = self._frames
        while True:
            try:
                event = frames.next_event()
            except FrameError as exc:
                self.request_close(exc.code, exc.reason)
                return None
            if event is None:
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.request_close(CloseCode.LOST, "connection lost")
                    return None
                frames.feed(data)
                continue
            if type(event) is not Control:
                return event
            if event.opcode == Opcode.CLOSE:
                self._peer_closed = True
                if self.close_code is None:
                    self.close_code, self.close_reason = event.code, event.reason
                if self._wake is not None:
                    self._wake.set()  # the writer finishes the write under way, then stops
                return None
            if event.opcode == Opcode.PING and self.close_code is None:
                self._queue_frame(control_frame(Opcode.PONG, event.payload))
                if len(self._control) >= self.config.max_control_queue:
                    await self._wait_control_space()

    async def _read_loop(self) -> None:
        metrics = self.server.metrics
        expect_text = not self.encoding.is_binary
        while (payload := await self._receive_message()) is not None:
            metrics.messages_in.inc()
            if isinstance(payload, str) != expect_text:
                kind = "text" if expect_text else "binary"
                self.request_close(
                    CloseCode.UNSUPPORTED_DATA,
                    f"{self.encoding.subprotocol} carries {kind} frames only",
                )
                return
            try:
                request = self._parser.parse(codec.decode(payload, self.encoding))
                await self._dispatch(request, len(payload))
            except codec.DecodeError as exc:
                await self._error(ProtocolError("bad_request", str(exc)))
            except ProtocolError as exc:
                await self._error(exc)
            if self.close_code is not None:
                return
            if len(self._control) >= self.config.max_control_queue:
                await self._wait_control_space()

    async def _echo_loop(self) -> None:
        """``/echo``: every message back as it came (text stays text, binary stays binary)."""
        received = self.server.metrics.messages_in
        control, limit = self._control, self.config.max_control_queue
        while (payload := await self._receive_message()) is not None:
            received.inc()
            if isinstance(payload, str):
                self._queue_frame(data_frame(payload.encode("utf-8"), binary=False))
            else:
                self._queue_frame(data_frame(payload, binary=True))
            if len(control) >= limit:
                await self._wait_control_space()

    async def _dispatch(self, request: protocol.Request, size: int) -> None:
        if isinstance(request, protocol.Publish):
            await self._publish(request, size)
        elif isinstance(request, protocol.Ack):
            self._ack(request)
        elif isinstance(request, protocol.Subscribe):
            await self._subscribe(request)
        elif isinstance(request, protocol.Unsubscribe):
            self._unsubscribe(request)
        else:
            await self._replay(request)

    async def _publish(self, request: protocol.Publish, size: int) -> None:
        data = request.data
        try:
            codec.check_value(data)  # first: it bounds the depth bytes_from_json recurses to
            if not self.encoding.is_binary:
                # JSON carries bytes as {"$bytes": base64}: store real bytes, so a CBOR reader
                # gets bytes and a JSON reader the same form back.
                data = codec.bytes_from_json(data)
        except codec.ValueNotCarried as exc:
            raise ProtocolError("bad_request", str(exc), request.id) from None
        try:
            published = await self.hub.publish(request.channel, data, request.key, size)
        except ProtocolError as exc:
            exc.request_id = request.id
            raise
        metrics = self.server.metrics
        (metrics.duplicate_publishes if published.duplicate else metrics.publishes).inc()
        self._enqueue(protocol.published_frame(request.id, request.channel, published.position))

    async def _subscribe(self, request: protocol.Subscribe) -> None:
        subscription = self.subscriptions.get(request.channel)
        if subscription is None:
            if len(self.subscriptions) >= self.config.max_subscriptions:
                raise ProtocolError(
                    "too_many_subscriptions",
                    f"at most {self.config.max_subscriptions} subscriptions per connection",
                    request.id,
                )
            subscription = Subscription(self, request.channel, self._tracker(request.ack))
            try:
                subscription.broadcast = await self.hub.attach(request.channel, subscription)
            except ProtocolError as exc:
                exc.request_id = request.id
                raise
            try:
                _check_since(subscription.broadcast, request.since, request.id)
            except ProtocolError:  # a refused subscribe leaves no subscription behind
                self.hub.detach(request.channel, subscription)
                raise
            self.subscriptions[request.channel] = subscription
        else:
            assert subscription.broadcast is not None
            _check_since(subscription.broadcast, request.since, request.id)  # before changing it
        if request.ack != (subscription.tracker is not None):
            subscription.tracker = self._tracker(request.ack)
            subscription.limit = (
                self.config.max_unacked if request.ack else self.config.outbound_queue_size
            )
        start, recovered = await self._position(subscription, request.since, request.id)
        self._enqueue(protocol.subscribed_frame(request.id, request.channel, start, recovered))

    def _tracker(self, ack: bool) -> AckTracker | None:
        if not ack:
            return None
        config = self.config
        return AckTracker(
            ack_timeout=config.ack_timeout,
            max_timeout=config.ack_max_timeout,
            max_unacked=config.max_unacked,
        )

    async def _position(
        self, subscription: Subscription, since: Position | None, request_id: int | None
    ) -> tuple[Position, bool]:
        """Point the cursor just after ``since`` (or at the head); say if nothing was lost."""
        broadcast = subscription.broadcast
        assert broadcast is not None
        _check_since(broadcast, since, request_id)
        if since is None:
            cursor, recovered = broadcast.head, True
        elif await self.hub.recover(subscription.channel, since):
            cursor, recovered = since.seq, True
        else:
            cursor, recovered = broadcast.oldest - 1, False
        subscription.cursor = cursor
        subscription.replay_end = broadcast.head
        if subscription.tracker is not None:
            subscription.tracker.reset_to(cursor)
            self._acking.add(subscription)
        else:
            self._acking.discard(subscription)
        subscription.ready = True
        if cursor < broadcast.head:
            self._dirty[subscription] = None
            self._deliverer.schedule(self)
        return broadcast.position, recovered

    def _unsubscribe(self, request: protocol.Unsubscribe) -> None:
        subscription = self._require(request.channel, request.id)
        del self.subscriptions[request.channel]
        self._dirty.pop(subscription, None)
        self._acking.discard(subscription)
        self.hub.detach(request.channel, subscription)
        self._enqueue(protocol.unsubscribed_frame(request.id, request.channel))

    def _ack(self, request: protocol.Ack) -> None:
        subscription = self._require(request.channel, request.id)
        if subscription.tracker is None:
            raise ProtocolError("bad_request", f"{request.channel} was subscribed without ack", request.id)
        result = subscription.tracker.on_ack(request.seq)
        if result.error_code is not None:
            raise ProtocolError(result.error_code, result.error_reason or "bad ack", request.id)
        if result.newly_acked:
            assert subscription.broadcast is not None
            subscription.broadcast.progressed()
            self._arm_retransmit()  # an ack resets the backoff: the next one may be due sooner

    async def _replay(self, request: protocol.Replay) -> None:
        subscription = self._require(request.channel, request.id)
        start, recovered = await self._position(subscription, request.since, request.id)
        self._enqueue(protocol.replaying_frame(request.id, request.channel, start, recovered))

    def _require(self, channel: str, request_id: int | None) -> Subscription:
        subscription = self.subscriptions.get(channel)
        if subscription is None:
            raise ProtocolError("not_subscribed", f"not subscribed to {channel}", request_id)
        return subscription

    async def _error(self, error: ProtocolError) -> None:
        self.server.metrics.count(self.server.metrics.errors, error.code)
        self._enqueue(protocol.error_frame(error.code, error.reason, error.request_id))
        self._errors += 1
        if self._errors >= self.config.max_errors:
            self.request_close(CloseCode.POLICY, f"too many errors ({self._errors})")

    def _enqueue(self, frame: dict[str, Any]) -> None:
        payload = codec.encode(frame, self.encoding)
        self._queue_frame(data_frame(payload, binary=self.encoding.is_binary))

    def _queue_frame(self, frame: bytes) -> None:
        """Queue a reply (or ping) frame for the deliverer's next pass."""
        self._control.append(frame)
        self._deliverer.schedule(self)

    # -- writer -----------------------------------------------------------------------

    async def _writer(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._write_loop()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.request_close(CloseCode.LOST, "connection lost")
            finally:
                assert self._writer_done is not None
                self._writer_done.set()

    async def _write_loop(self) -> None:
        stream = self.stream
        while True:
            if self.close_code is not None and (
                self.close_code not in _FLUSH_BEFORE_CLOSE
                or self._peer_closed
                or not (self._control or self._dirty or stream.backlog)
            ):
                return
            if not (self._control or self._dirty or stream.backlog):
                assert self._wake is not None
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            self._write_in_flight = True
            try:
                data, frames, delivered = self._collect()
                await stream.send_all(data)  # the backlog of a non-blocking send goes first
            finally:
                self._write_in_flight = False
            self._count_sent(frames, delivered)

    def _count_sent(self, frames: int, delivered: int) -> None:
        metrics = self.server.metrics
        if frames:
            metrics.messages_out.inc(frames)
        if delivered:
            metrics.deliveries.inc(delivered)

    def _collect(self) -> tuple[bytes, int, int]:
        """Take replies, then messages, up to the write budget: (bytes, frames, deliveries)."""
        parts: list[bytes] = []
        size = 0
        control = self._control
        while control and size < WRITE_BUDGET:
            part = control.popleft()
            parts.append(part)
            size += len(part)
        if len(control) < self.config.max_control_queue:
            if self._control_space is not None:
                self._control_space.set()
                self._control_space = None
        replies = len(parts)
        encoding = self.encoding
        cache = self._frame_cache
        frames = cache.table(encoding)
        now = trio.current_time()
        acked_sends = False
        for subscription in list(self._dirty):
            if size >= WRITE_BUDGET:
                break
            stream = subscription.broadcast
            assert stream is not None
            messages = stream.after(subscription.cursor, BATCH_PER_SUBSCRIPTION)
            if messages is None:
                del self._dirty[subscription]
                self.slow_consumer(subscription)
                break
            taken = 0
            for message in messages:
                frame = frames.get(message) or cache.encode(message, encoding)
                parts.append(frame)
                size += len(frame)
                taken += 1
                if size >= WRITE_BUDGET:
                    break
            if taken:
                subscription.cursor = messages[taken - 1].seq
                tracker = subscription.tracker
                if tracker is not None and subscription.cursor > tracker.sent:
                    tracker.on_sent(subscription.cursor, now)
                    acked_sends = True
                stream.progressed()
            if subscription.cursor >= stream.head:
                del self._dirty[subscription]
        if acked_sends:
            self._arm_retransmit()  # the first unacked send starts a deadline
        return b"".join(parts), len(parts), len(parts) - replies

    def _next_deadline(self) -> float:
        deadline = math.inf
        for subscription in self._acking:
            assert subscription.tracker is not None
            due = subscription.tracker.next_deadline()
            if due is not None and due < deadline:
                deadline = due
        return deadline

    def _arm_retransmit(self) -> None:
        if self.close_code is not None:
            return  # the connection is ending (its timer was disarmed, or is about to be)
        deadline = self._next_deadline()
        if deadline < math.inf:
            self._timer.arm(self, deadline)

    def deadline_reached(self) -> None:
        """The server's timer: an ack deadline passed. Re-send from the oldest unacked message."""
        if self.close_code is not None:
            return
        self._retransmit()
        if self._dirty:
            self._deliverer.schedule(self)
        self._arm_retransmit()

    def _retransmit(self) -> None:
        if not self._acking:
            return
        now = trio.current_time()
        for subscription in self._acking:
            assert subscription.tracker is not None
            first = subscription.tracker.due(now)
            if first is not None:
                subscription.cursor = min(subscription.cursor, first - 1)
                subscription.tracker.on_resent(now)
                self.server.metrics.retransmits.inc()
                self._dirty[subscription] = None

    # -- heartbeat (driven by the server's ``heartbeat.Heartbeats``) -------------------

    def ping(self) -> None:
        if self.close_code is None:
            self._pings_sent = (self._pings_sent + 1) & 0xFFFFFFFF
            self._queue_frame(control_frame(Opcode.PING, self._pings_sent.to_bytes(4, "big")))

    def heard(self) -> int:
        return self.stream.bytes_in

    def heartbeat_timeout(self) -> None:
        if self.close_code is None:
            self.server.metrics.heartbeat_timeouts.inc()
        self.request_close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")


def _check_since(stream: Broadcast, since: Position | None, request_id: int | None) -> None:
    """Refuse a ``since`` ahead of the stream (same epoch, seq past the head)."""
    if since is not None and since.epoch == stream.epoch and since.seq > stream.head:
        raise ProtocolError(
            "bad_request", f"since.seq {since.seq} is ahead of the stream (at {stream.head})", request_id
        )

