"""One WebSocket connection (pub/sub, or ``/echo``): its reader, its heartbeat, its close handshake.

The reader is the connection's own task. It reads frames with the sans-I/O ``frame_reader``,
answers pings, and hands every message to the request handlers (``handlers``; ``/echo``
sends it back); every request of one read is handled before it reads again. Around it is
one cancel scope, whose deadline is the pong deadline (``heartbeat.PongDeadline``): when a
ping stays unanswered for ``heartbeat_timeout``, Trio cancels the reader and the connection
closes with 4000. The same scope is cancelled when the connection decides to close.

What it writes goes through its ``outbox`` (replies, and messages read from the channels'
broadcasts), written by the server's deliverer or, when the socket would block, by a writer
task in the connection's nursery. Ack-retransmit deadlines are in ``retransmit``. When the
connection ends, it runs the close handshake (``_finish``), stops its writer and leaves every
channel: nothing it started outlives it.

A connection is handed a ``ConnectionContext`` (what it may use of the server), never the
server itself. Bounds: ``max_message_size`` bytes and ``max_fragments`` frames per message
(the frame reader: 1009), ``max_control_queue`` replies or ``max_control_bytes`` bytes of
them before the reader stops reading (TCP backpressure then stops the client),
``close_timeout`` for the close handshake; the outbox and handlers state theirs.
"""

from __future__ import annotations

import trio

from . import access, protocol
from .codec import Encoding
from .context import ConnectionContext, ConnectionState
from .deflate import Agreement, Inflater
from .frame_reader import Control, FrameError, FrameReader
from .handlers import RequestHandlers
from .heartbeat import PongDeadline
from .outbox import Outbox
from .retransmit import Retransmits
from .stream import ServerStream
from .tokens import Identity
from .wire import CloseCode, Opcode
from .wsframe import control_frame

READ_SIZE = 65536

# Closes for bytes that broke the protocol: no close frame is parsed after them.
_PROTOCOL_ERRORS = (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD, CloseCode.TOO_BIG)
# Closes after which what was queued for the frames read before still goes out first.
_OWED_BEFORE_CLOSE = (*_PROTOCOL_ERRORS, CloseCode.UNSUPPORTED_DATA)
_OPEN = ConnectionState.OPEN


class Connection:
    __slots__ = (
        "_close_timeout",
        "_closing",
        "_frames",
        "_pings_sent",
        "_pong",
        "_reader_scope",
        "access",
        "close_code",
        "close_reason",
        "context",
        "echo",
        "encoding",
        "handlers",
        "outbox",
        "peer_closed",
        "remote",
        "retransmits",
        "state",
        "stream",
    )

    def __init__(
        self,
        context: ConnectionContext,
        stream: ServerStream,
        already_read: bytes,
        encoding: Encoding,
        remote: str,
        *,
        echo: bool = False,
        identity: Identity | None = None,
        compression: Agreement | None = None,
    ) -> None:
        self.context = context
        self.echo = echo
        self.stream = stream
        self.encoding = encoding
        self.remote = remote
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None  # set when the state leaves OPEN
        self.close_reason = ""
        self.peer_closed = False  # the client's close frame arrived (we answer it, then close)
        config = context.config
        self._close_timeout = config.close_timeout
        inflater = None
        if compression is not None:  # its zlib state only exists from the first compressed message
            inflater = Inflater(
                compression.client_max_window_bits, compression.client_no_context_takeover, config.max_message_size
            )
        self._frames = FrameReader(config.max_message_size, config.max_fragments, inflater)
        self._frames.feed(already_read)  # what the client sent right behind its request head
        self._reader_scope = trio.CancelScope()  # its deadline is the pong deadline
        self._pong = PongDeadline(self._reader_scope, config.heartbeat_timeout)
        self._closing = trio.CancelScope(shield=True)  # the close handshake; ``abort`` gives up on it
        self._pings_sent = 0
        bits = None if compression is None else compression.server_max_window_bits
        self.outbox = Outbox(self, stream, encoding, context, bits)
        self.retransmits = Retransmits(self, self.outbox, context.timer, context.metrics)
        self.outbox.sent_unacked = self.retransmits.arm
        # Identity (issue 13): the token's grants and rate buckets, and when it runs out.
        self.access = access.for_connection(context.security, identity, trio.current_time())
        self.handlers = RequestHandlers(self, self.outbox, self.retransmits, encoding, context, self.access)

    @property
    def user(self) -> str | None:
        """The token's ``sub`` (None without tokens)."""
        return self.access.user

    # -- what other tasks call -------------------------------------------------------

    def request_close(self, code: int, reason: str) -> None:
        """Start closing: the reader stops, the writer finishes its write and stops."""
        if self.state is not _OPEN:
            return
        self.state = ConnectionState.CLOSING
        self.close_code, self.close_reason = code, reason
        self._reader_scope.cancel()
        self.outbox.closing()

    def abort(self) -> None:
        """Stop waiting on the close handshake (the server's shutdown has run out of time)."""
        self._closing.cancel()

    @property
    def queued(self) -> int:
        return self.outbox.queued

    def ping(self) -> None:
        """The heartbeat scheduler: queue a ping, and give the peer until its timeout to answer."""
        if self.state is _OPEN:
            self._pings_sent = (self._pings_sent + 1) & 0xFFFFFFFF
            self.outbox.queue(control_frame(Opcode.PING, self._pings_sent.to_bytes(4, "big")))
            self._pong.pinged(trio.current_time())

    # -- token expiry (the server's ``expiries`` timer) ---------------------------------

    def _arm_expiry(self) -> None:
        left = self.access.seconds_left()
        if left is not None:
            self.context.expiries.arm(self, trio.current_time() + max(0.0, left))

    def token_refreshed(self, identity: Identity) -> None:
        """``refresh`` brought a new expiry: the old deadline no longer applies."""
        self.context.expiries.disarm(self)
        self._arm_expiry()

    def deadline_reached(self) -> None:
        """The token's ``exp`` passed: error ``token_expired``, then close 4001 (the error is
        flushed before the close frame)."""
        if self.state is not _OPEN:
            return
        left = self.access.seconds_left()
        if left is not None and left > 0:  # the clocks disagree by a hair: wait the rest
            self._arm_expiry()
            return
        self.context.metrics.count(self.context.metrics.errors, "token_expired")
        self.outbox.send_reply(
            protocol.error_frame("token_expired", "the connection token expired; connect with a new one")
        )
        self.request_close(CloseCode.TOKEN_EXPIRED, "token expired")

    # -- lifetime ---------------------------------------------------------------------

    async def run(self, nursery: trio.Nursery) -> None:
        """Serve until the connection ends and its close handshake is over (the close code
        and reason are then in ``close_code`` and ``close_reason``)."""
        context = self.context
        if not self.echo:
            config = context.config
            self.outbox.send_reply(
                protocol.welcome_frame(context.server_name, config.heartbeat_interval, config.max_message_size)
            )
        self.outbox.open(nursery)
        self.handlers.open(nursery)
        heartbeats = context.heartbeats
        heartbeats.add(self)
        self._arm_expiry()
        try:
            with self._reader_scope:
                await (self._echo_loop() if self.echo else self._read_loop())
            if self.state is _OPEN and self._reader_scope.cancelled_caught:
                context.metrics.heartbeat_timeouts.inc()
                self.request_close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
        finally:
            heartbeats.remove(self)
            context.expiries.disarm(self)
            self.retransmits.disarm()
            await self._finish()
            self.outbox.shut()  # also when ``abort`` cut the handshake short: no writer starts now
            self.handlers.shut()
            self.handlers.detach_all()

    async def _finish(self) -> None:
        """The close handshake, within ``close_timeout`` in all (and cut short by ``abort``).

        First the writer finishes the write under way (for our 1001 and 1008, the whole
        queue), so a close frame never follows half a frame. What the peer is owed goes
        before the close frame: after its close frame or a protocol error (1002, 1003, 1007,
        1009), the pongs, replies and echoes queued for what it sent before (RFC 6455
        5.5.2); messages still queued are dropped. A slow consumer's 4008 goes ahead of the
        data it replaces: the write under way stops between two socket sends, only the frame
        it was in is finished, and the close frame follows as soon as the socket takes it.
        The peer closed: answer with its code. We close: send our close frame, then
        wait for the peer's; after a protocol error (1002, 1007, 1009), stop sending and drop
        what the peer still sends until it closes, since closing a socket with unread input
        resets the connection, which can destroy the close frame on its way; after a
        heartbeat timeout, wait for nothing. The peer vanished (1006): nothing to send.
        """
        closing = self._closing
        closing.deadline = trio.current_time() + self._close_timeout
        with closing:  # shielded: the close handshake runs even when the server is stopping
            if self.state is _OPEN:  # the reader was cancelled from outside
                self.state = ConnectionState.CLOSING
                self.close_code, self.close_reason = CloseCode.LOST, "connection lost"
            code = self.close_code
            outbox = self.outbox
            writer_done = outbox.writer_done
            if code == CloseCode.SLOW_CONSUMER:
                outbox.shut()  # the writer stops at once, between two socket sends
            if code != CloseCode.LOST and writer_done is not None:
                await writer_done.wait()
            outbox.shut()
            if code != CloseCode.LOST:
                try:
                    owed = b""
                    if code == CloseCode.SLOW_CONSUMER:
                        self.stream.cut_backlog()  # only the frame under way is finished
                    elif self.peer_closed or code in _OWED_BEFORE_CLOSE:
                        owed = outbox.take_control()
                    await self.stream.send_close_frame(
                        None if code == CloseCode.NO_STATUS else code, self.close_reason, owed
                    )
                    if code in _PROTOCOL_ERRORS:
                        await self.stream.drain()
                    elif not self.peer_closed and code != CloseCode.HEARTBEAT_TIMEOUT:
                        while await self._receive_message() is not None:
                            pass  # what the peer sent before its close frame is dropped
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        self.state = ConnectionState.CLOSED
        self.stream.close_now()

    # -- reader -----------------------------------------------------------------------

    async def _receive_message(self) -> str | bytes | None:
        """The next message (text as ``str``, binary as ``bytes``); None once the connection ends.

        Pings are answered here (a pong queued like any reply, so they wait for the reply
        queue too); anything read lifts the pong deadline. It ends on the peer's close
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
                self._pong.heard()
                frames.feed(data)
                continue
            if not isinstance(event, Control):
                return event
            if event.opcode == Opcode.CLOSE:
                self.peer_closed = True
                if self.state is _OPEN:
                    self.state = ConnectionState.CLOSING
                    self.close_code, self.close_reason = event.code, event.reason
                self.outbox.peer_closed()  # the writer finishes the write under way, then stops
                return None
            if event.opcode == Opcode.PING and self.state is _OPEN:
                self.outbox.queue(control_frame(Opcode.PONG, event.payload))
                if self.outbox.crowded:
                    await self.outbox.wait_for_space()

    async def _settle(self) -> None:
        """Wait for this connection's publishes in flight and queue their replies (``handlers``).
        The client is not answering for the engine's round trip: no pong deadline meanwhile."""
        self._pong.excuse()
        try:
            await self.handlers.settle()
        finally:
            self._pong.resume()

    async def _read_loop(self) -> None:
        received = self.context.metrics.messages_in
        handle = self.handlers.handle
        outbox, pong = self.outbox, self._pong
        expect_text = not self.encoding.is_binary
        while (payload := await self._receive_message()) is not None:
            received.inc()
            if isinstance(payload, str) != expect_text:
                kind = "text" if expect_text else "binary"
                self.request_close(
                    CloseCode.UNSUPPORTED_DATA,
                    f"{self.encoding.subprotocol} carries {kind} frames only",
                )
                return
            # While a request waits on the server (a publish held up under policy ``block``, a
            # remote hub's I/O), the client's silence is not its fault: no pong deadline.
            pong.excuse()
            try:
                await handle(payload)
            finally:
                pong.resume()
            if self.state is not _OPEN:
                return
            if outbox.crowded:
                await outbox.wait_for_space()
        if self.peer_closed and self.handlers.in_flight:
            await self._settle()  # the client closed after publishing: their replies are owed

    async def _echo_loop(self) -> None:
        """``/echo``: every message back as it came (text stays text, binary stays binary;
        compressed when the connection negotiated compression and it is over the threshold)."""
        received = self.context.metrics.messages_in
        outbox = self.outbox
        frame = outbox.data_frame
        while (payload := await self._receive_message()) is not None:
            received.inc()
            if isinstance(payload, str):
                outbox.queue(frame(payload.encode("utf-8"), False))
            else:
                outbox.queue(frame(payload, True))
            if outbox.crowded:
                await outbox.wait_for_space()
