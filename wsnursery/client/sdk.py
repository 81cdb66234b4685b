"""The client SDK: one anyio task group per client, protocol state in the sans-I/O core.

Tasks (all inside the task group that ``connect`` opens; none outlives the ``async with``):

- the supervisor: connects (with backoff), and per connection runs a task group of three
  tasks, each in its own cancel scope: the reader (frames in -> core -> effects), the
  writer/timer loop (the only task that writes the socket: queued frames, due publishes,
  request retries, the core's ack/replay timers) and the heartbeat (ping, detect a dead link).
  When a connection ends, that group is cancelled, the state is rewound for the next
  connection (``ChannelReceiver.on_reconnect``, ``PublishTracker.on_reconnect``) and the
  supervisor reconnects.

Every per-channel decision (order, repeats, gaps, replay, acks) is made by
:class:`~wsnursery.reliability.ChannelReceiver`; publish keys and retries by
:class:`~wsnursery.reliability.PublishTracker`. This module only moves frames and effects.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs

from .. import codec
from ..codec import Encoding
from ..reliability import (
    ChannelReceiver,
    Deliver,
    Gap,
    Message,
    PublishTracker,
    PublishWindowFull,
    SendAck,
    SendReplay,
)
from .errors import ClientError, Closed, ConnectionClosed, Forbidden, GaveUp, ServerError
from .transport import HandshakeRejected, TransportClosed, TransportError, WebSocketTransport, open_transport

log = logging.getLogger("wsnursery.client")

PROTOCOL_VERSION = 1
# Close codes after which reconnecting would only repeat the refusal.
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})
CLOSE_POLICY = 1008

_ENCODINGS = {"json": Encoding.JSON, "cbor": Encoding.CBOR}


# ----------------------------------------------------------------------------- public values


@attrs.frozen
class Published:
    """Where a confirmed publish landed: ``seq`` in stream ``epoch`` of ``channel``."""

    channel: str
    epoch: str
    seq: int
    key: str


@attrs.frozen
class ClientStats:
    """The SDK's own counters (a snapshot; ``client.stats`` makes a fresh one)."""

    connects: int  # connections that got a welcome, the first included
    reconnects: int  # of those, the ones after the first
    connect_failures: int  # attempts that did not get as far as a welcome
    aborts: int  # client.abort() calls
    heartbeat_timeouts: int  # connections dropped for want of a pong or any traffic
    replays_requested: int  # replay requests sent (gap repair, and re-asks)
    retransmits_seen: int  # repeats dropped: server retransmits, replays, duplicated frames
    stale_dropped: int  # frames of a stream the subscription no longer follows
    gaps: int  # Gap events handed to the application
    delivered: int  # messages handed to subscriptions, in order, once each
    published: int  # publishes confirmed
    publish_retries: int  # publish frames sent again (timeout or reconnect), same key
    requests_resent: int  # subscribe/replay/unsubscribe re-sent after request_timeout
    server_errors: int  # error frames received


@attrs.frozen(kw_only=True)
class Options:
    """Client settings; ``connect(url, **options)`` takes these as keyword arguments."""

    encoding: str = attrs.field(default="cbor", validator=attrs.validators.in_(tuple(_ENCODINGS)))
    request_timeout: float = 2.0  # no reply in this long: the request is sent again
    connect_timeout: float = 10.0  # TCP connect + handshake + welcome
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 10.0
    max_reconnects: int = 10  # consecutive failed attempts before GaveUp
    backoff_base: float = 0.1  # reconnect delay: min(backoff_max, base * 2**n) * U(0.5, 1)
    backoff_max: float = 10.0
    publish_backoff_max: float = 5.0  # cap on the extra jittered wait between publish retries
    max_pending_publishes: int = 256  # unconfirmed publishes; publish() waits past it
    buffer_size: int = 1024  # per-subscription delivery buffer (default for subscribe())
    close_timeout: float = 1.0  # graceful close handshake on exit
    max_message_size: int = 64 * 2**20  # largest message accepted from the server
    seed: int | None = None  # seeds the jitter (reconnect and retry timing) for reproducible runs
    extra_headers: tuple[tuple[str, str], ...] = ()
    ssl_context: Any = None

    def __attrs_post_init__(self) -> None:
        for name in ("request_timeout", "connect_timeout", "heartbeat_interval",
                     "heartbeat_timeout", "backoff_base", "backoff_max", "close_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number of seconds greater than 0, not {value!r}")
        for name in ("max_pending_publishes", "buffer_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1")
        if not (isinstance(self.max_reconnects, int) and self.max_reconnects >= 0):
            raise ValueError("max_reconnects must be a whole number of at least 0")


# ----------------------------------------------------------------------------- internals


class _Outcome:
    """How one connection ended (set once by whichever task noticed first)."""

    def __init__(self, kind: str, error: BaseException | None = None) -> None:
        self.kind = kind  # "lost", "closing", "fatal"
        self.error = error


class _Connection:
    """One live connection: its transport and per-connection bookkeeping."""

    def __init__(self, transport: WebSocketTransport, encoding: Encoding, welcome: dict[str, Any]) -> None:
        self.transport = transport
        self.encoding = encoding
        self.welcome = welcome
        size = welcome.get("max_message_size")
        self.max_message_size = size if isinstance(size, int) and size > 0 else None
        self.outcome: _Outcome | None = None
        self.scope: anyio.CancelScope | None = None
        # One cancel scope per task, so each can be stopped on its own (the heartbeat
        # stops first on a graceful close); ``scope`` ends them all.
        self.reader_scope = anyio.CancelScope()
        self.writer_scope = anyio.CancelScope()
        self.heartbeat_scope = anyio.CancelScope()
        self.paused = False  # the reader is waiting for the application (backpressure)
        self.healthy = False  # welcome + every (re)subscribe answered

    def end(self, outcome: _Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
        if self.scope is not None:
            self.scope.cancel()


class _Waiter:
    __slots__ = ("event", "result", "error")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def resolve(self, result: Any) -> None:
        self.result = result
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


@attrs.define
class _Counters:
    connects: int = 0
    connect_failures: int = 0
    aborts: int = 0
    heartbeat_timeouts: int = 0
    replays_requested: int = 0
    retransmits_seen: int = 0
    stale_dropped: int = 0
    gaps: int = 0
    delivered: int = 0
    published: int = 0
    requests_resent: int = 0
    server_errors: int = 0


# ----------------------------------------------------------------------------- subscription


class _SubscriptionClosed(Closed):
    """Raised by ``receive`` on a closed subscription (``async for`` just ends)."""



class Subscription:
    """A subscription to one channel: ``async with client.subscribe(channel) as messages``.

    Iterating yields, strictly in ``seq`` order and never twice:

    - :class:`Message` (``channel``, ``epoch``, ``seq``, ``data``, ``ts``) for each message;
    - :class:`Gap` (``channel``, ``expected_seq``, ``resumed_at_seq``, ``reason``) right before
      the first message after a loss the server could not repair: ``reason`` is
      ``"history_exceeded"`` (the server no longer held them) or ``"epoch_changed"`` (the
      stream was replaced, e.g. the hub restarted). Loss is always reported, never silent.

    Entering sends ``subscribe`` and returns once the server confirmed it (messages
    published after that are delivered). Leaving unsubscribes. Iteration ends
    (``StopAsyncIteration``) once the subscription is closed; it raises ``GaveUp``,
    ``ConnectionClosed``, ``Forbidden`` or ``Closed`` when the client ends, after the messages
    already buffered, and ``ServerError`` when the server refused a (re)subscribe.

    ``data`` is as published; bytes come back as bytes whichever encodings the publisher and
    the subscriber use (a map of exactly the form ``{"$bytes": <base64>}`` is read as bytes).

    Backpressure: at most ``buffer_size`` items wait for the application (one frame's worth
    more after a replay fills a hole); past that the client stops reading the socket until
    the application catches up, so nothing grows without bound. A server that then finds
    the subscriber too slow closes with 4008; the client reconnects and resumes.
    """

    def __init__(
        self, client: Client, channel: str, ack: bool, buffer_size: int,
        since: tuple[str, int] | None = None,
    ) -> None:
        if not isinstance(channel, str):
            raise TypeError("channel must be a string")
        if since is not None:
            epoch, seq = since
            if not isinstance(epoch, str) or type(seq) is not int or seq < 0:
                raise ValueError("since must be (epoch: str, seq: int >= 0)")
            since = (epoch, seq)
        self.since = since
        self.client = client
        self.channel = channel
        self.ack = ack
        self.buffer_size = buffer_size
        self.receiver = ChannelReceiver(
            channel, ack=ack, replay_timeout=client.options.request_timeout
        )
        self._buffer: deque[Message | Gap] = deque()
        self._readable = anyio.Event()
        self._space = anyio.Event()
        self._confirmed = anyio.Event()  # the first subscribed reply (or an error)
        self._state = "new"  # new -> active -> closed
        self._error: BaseException | None = None
        self._reset_connection_state()

    def _reset_connection_state(self) -> None:
        # id -> (since sent, when); repositioning requests (subscribe/replay) not yet answered
        self.outstanding: dict[int, tuple[tuple[str, int] | None, float]] = {}
        self.confirmed = False  # the subscribe was answered on this connection
        self.server_epoch: str | None = None
        # Acks: the server rejects an ack past what it sent since its last reposition, so
        # an ack never goes past ``ack_ceiling`` nor past the ``since`` of a request the
        # server may be processing (see Client._flush_ack).
        self.ack_ceiling = 0
        self.ack_owed = 0
        self.ack_sent = 0

    # -- the application side --------------------------------------------------------

    @property
    def position(self) -> tuple[str, int] | None:
        """``(epoch, seq)`` of the last message delivered to this subscription's buffer."""
        return self.receiver.position

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    def __len__(self) -> int:
        return len(self._buffer)

    async def __aenter__(self) -> Subscription:
        if self._state != "new":
            raise RuntimeError("a Subscription can be entered only once")
        self.client._add_subscription(self)
        self._state = "active"
        try:
            await self._confirmed.wait()
            if self._error is not None:
                raise self._error
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop delivering and unsubscribe (the unsubscribe is sent in the background)."""
        if self._state == "closed":
            return
        was_active = self._state == "active"
        self._state = "closed"
        if was_active:
            self.client._remove_subscription(self)
        self._readable.set()
        self._space.set()

    def __aiter__(self) -> AsyncIterator[Message | Gap]:
        return self

    async def __anext__(self) -> Message | Gap:
        try:
            return await self.receive()
        except _SubscriptionClosed:
            raise StopAsyncIteration from None

    async def receive(self) -> Message | Gap:
        """The next :class:`Message` or :class:`Gap`; ``Closed`` once the subscription is."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._state == "closed":
                raise _SubscriptionClosed(f"the subscription to {self.channel} is closed")
            if self._state == "new":
                raise RuntimeError("enter the subscription (async with) before reading it")
            self._readable = anyio.Event()
            await self._readable.wait()
        item = self._buffer.popleft()
        if len(self._buffer) < self.buffer_size:
            self._space.set()
        return item

    # -- the client side ---------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self._state == "active" and len(self._buffer) >= self.buffer_size

    def _push(self, item: Message | Gap) -> None:
        self._buffer.append(item)
        self._readable.set()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._confirmed.set()
        self._readable.set()
        self._space.set()

    async def _wait_space(self) -> None:
        while self.full and self._error is None:
            self._space = anyio.Event()
            await self._space.wait()


# ----------------------------------------------------------------------------- client


class Client:
    """A pub/sub client. Make one with ``async with wsnursery.client.connect(url) as client``."""

    def __init__(self, url: str, options: Options) -> None:
        self.url = url
        self.options = options
        self._encoding = _ENCODINGS[options.encoding]
        self._rng = random.Random(options.seed)
        self._ids = itertools.count(1)  # request ids, shared with the publish tracker
        self._publishes = PublishTracker(
            rng=self._rng,
            base=options.request_timeout,
            cap=options.publish_backoff_max,
            max_pending=options.max_pending_publishes,
            ids=self._ids,
            # Keys must differ between clients even when two share a seed.
            client_prefix=secrets.token_hex(8),
        )
        self._publish_waiters: dict[str, _Waiter] = {}
        self._window = anyio.Event()
        self._subscriptions: dict[str, Subscription] = {}
        self._unsubscribes: dict[str, tuple[int, float | None]] = {}  # channel -> (id, sent at)
        self._conn: _Connection | None = None
        self._ready = anyio.Event()  # the first connection is up, or the client failed
        self._stopped = anyio.Event()  # the supervisor has returned
        self._wake = anyio.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._counters = _Counters()
        self._retired = _Counters()  # counters of closed subscriptions' receivers
        self._task_group: Any = None

    # -- public API --------------------------------------------------------------------

    @property
    def stats(self) -> ClientStats:
        c, r = self._counters, self._retired
        receivers = [sub.receiver for sub in self._subscriptions.values()]
        return ClientStats(
            connects=c.connects,
            reconnects=max(0, c.connects - 1),
            connect_failures=c.connect_failures,
            aborts=c.aborts,
            heartbeat_timeouts=c.heartbeat_timeouts,
            replays_requested=c.replays_requested,
            retransmits_seen=r.retransmits_seen + sum(x.duplicates_dropped for x in receivers),
            stale_dropped=r.stale_dropped + sum(x.stale_dropped for x in receivers),
            gaps=r.gaps + sum(x.gaps_reported for x in receivers),
            delivered=c.delivered,
            published=c.published,
            publish_retries=self._publishes.retries,
            requests_resent=c.requests_resent,
            server_errors=c.server_errors,
        )

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.outcome is None

    @property
    def error(self) -> BaseException | None:
        """Why the client ended (GaveUp, Forbidden, ConnectionClosed, Closed), or None."""
        return self._error

    @property
    def welcome(self) -> dict[str, Any] | None:
        """The current connection's ``welcome`` frame."""
        return self._conn.welcome if self._conn is not None else None

    def subscribe(
        self, channel: str, *, ack: bool = True, buffer_size: int | None = None,
        since: tuple[str, int] | None = None,
    ) -> Subscription:
        """A :class:`Subscription` to enter with ``async with``.

        ``ack=True`` (the default) asks the server for acknowledged delivery: it re-sends
        what the client did not acknowledge. ``ack=False`` relies on gap detection and
        ``since`` on reconnect only (a lost final message is noticed only when the next
        one arrives). ``since=(epoch, seq)`` resumes after a position held from earlier (a
        previous ``subscription.position``); without it delivery starts after the head.
        """
        return Subscription(self, channel, ack, buffer_size or self.options.buffer_size, since)

    async def publish(self, channel: str, data: Any) -> Published:
        """Publish ``data``; returns once the server holds it (``published``).

        Survives reconnects: unconfirmed publishes are re-sent with the same idempotency key,
        so the server stores each at most once. Waits while ``max_pending_publishes`` are
        unconfirmed. Raises ``ValueError`` for data outside the shared data model or too big
        for the server, ``ServerError``/``Forbidden`` when the server refuses it, and the
        client's error (``GaveUp`` ...) when the client ends first. Cancelling ``publish``
        abandons it: the message may or may not have been stored.
        """
        if not isinstance(channel, str):
            raise TypeError("channel must be a string")
        codec.check_value(data)
        while True:
            self._check_usable()
            try:
                pending = self._publishes.new_publish(channel, data, anyio.current_time())
                break
            except PublishWindowFull:
                self._window = anyio.Event() if self._window.is_set() else self._window
                await self._window.wait()
        waiter = _Waiter()
        self._publish_waiters[pending.key] = waiter
        self._wake.set()
        try:
            await waiter.event.wait()
        except BaseException:
            if self._publish_waiters.pop(pending.key, None) is not None:
                self._publishes.cancel(pending.key)
                self._window.set()
            raise
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def abort(self) -> None:
        """Drop the TCP connection abruptly (RST, no close frame), as if the network died.

        For fault tests: the client notices at once and reconnects by itself.
        """
        conn = self._conn
        if conn is not None and conn.outcome is None:
            self._counters.aborts += 1
            conn.transport.abort()
            conn.end(_Outcome("lost", TransportClosed(1006, "aborted by client.abort()")))

    # -- lifetime ---------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise Closed("the client is closed")

    def _fail(self, error: BaseException) -> None:
        """End the client: every waiter raises ``error``."""
        if self._error is None:
            self._error = error
        error = self._error
        for waiter in self._publish_waiters.values():
            waiter.fail(error)
        self._publish_waiters.clear()
        self._window.set()
        for sub in list(self._subscriptions.values()):
            sub._fail(error)
        self._ready.set()
        conn = self._conn
        if conn is not None:
            conn.end(_Outcome("fatal", error))

    async def _wait_ready(self) -> None:
        await self._ready.wait()
        if self._error is not None:
            raise self._error

    async def _shutdown(self) -> None:
        """Close gracefully (close frame, wait for the server's) within close_timeout."""
        self._closing = True
        conn = self._conn
        with anyio.move_on_after(self.options.close_timeout, shield=True):
            if conn is not None and conn.outcome is None:
                conn.heartbeat_scope.cancel()
                conn.transport.queue_close(1000, "client closing")
                self._wake.set()
                await self._stopped.wait()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        if self._error is None:
            self._error = Closed("the client is closed")
            self._fail(self._error)

    async def _run(self) -> None:
        """The supervisor: connect, serve, reconnect with backoff, give up."""
        try:
            await self._supervise()
        except Exception as exc:  # a bug: make it visible to every caller
            log.exception("client supervisor failed")
            self._fail(exc)
        finally:
            self._conn = None
            self._stopped.set()

    async def _supervise(self) -> None:
        options = self.options
        retries = 0  # reconnect attempts since the last healthy connection
        last_error: BaseException | None = None
        first = True
        while not self._closing and self._error is None:
            if not first:
                if retries >= options.max_reconnects:
                    self._fail(GaveUp(retries, last_error))
                    return
                retries += 1
                delay = min(options.backoff_max, options.backoff_base * 2 ** (retries - 1))
                await anyio.sleep(delay * self._rng.uniform(0.5, 1.0))
                if self._closing:
                    return
            first = False
            try:
                conn = await self._open()
            except (Forbidden, ConnectionClosed) as exc:
                self._fail(exc)
                return
            except Exception as exc:  # OSError, TimeoutError, TransportError, h11, decode...
                self._counters.connect_failures += 1
                last_error = exc
                log.info("connect to %s failed: %s", self.url, exc)
                continue
            self._counters.connects += 1
            outcome = await self._serve(conn)
            self._ready.set()
            if outcome.kind == "fatal":
                self._fail(outcome.error or Closed("connection ended"))
                return
            if conn.healthy:
                retries = 0
            last_error = outcome.error
            if outcome.kind == "lost":
                log.info("connection to %s lost: %s", self.url, outcome.error)

    async def _open(self) -> _Connection:
        options = self.options
        with anyio.fail_after(options.connect_timeout):
            try:
                transport = await open_transport(
                    self.url,
                    [self._encoding.subprotocol],
                    max_message_size=options.max_message_size,
                    extra_headers=list(options.extra_headers),
                    ssl_context=options.ssl_context,
                )
            except HandshakeRejected as exc:
                if exc.status in (401, 403):
                    raise Forbidden(f"handshake refused with HTTP {exc.status}", close_code=exc.status) from exc
                raise
            try:
                encoding = Encoding.JSON
                if transport.subprotocol is not None:
                    encoding = Encoding(transport.subprotocol)
                welcome = codec.decode(await transport.receive(), encoding)
                if welcome.get("type") != "welcome":
                    raise TransportError(f"expected a welcome frame, got {welcome.get('type')!r}")
                if welcome.get("protocol") != PROTOCOL_VERSION:
                    raise ConnectionClosed(1002, f"server speaks protocol {welcome.get('protocol')!r}, not 1")
            except TransportClosed as exc:
                await transport.aclose()
                if exc.code == CLOSE_POLICY:
                    raise Forbidden(exc.reason, close_code=CLOSE_POLICY) from exc
                raise
            except BaseException:
                await transport.aclose()
                raise
        return _Connection(transport, encoding, welcome)

    async def _serve(self, conn: _Connection) -> _Outcome:
        """Run one connection until it ends; returns how it ended."""
        self._conn = conn
        conn.transport.on_outgoing = self._wake_writer  # not _wake.set: _wake is replaced
        self._on_connected(conn)
        try:
            async with anyio.create_task_group() as group:
                conn.scope = group.cancel_scope
                if conn.outcome is not None:  # ended before the tasks started (abort)
                    group.cancel_scope.cancel()
                group.start_soon(self._reader, conn)
                group.start_soon(self._writer, conn)
                group.start_soon(self._heartbeat, conn)
        finally:
            self._conn = None
            with anyio.CancelScope(shield=True):
                # Send what is queued (our close frame, or the answer to the server's)
                # unless the link is dead or a cancelled send left half a frame behind.
                if conn.transport.has_outgoing and conn.transport.can_flush:
                    with anyio.move_on_after(self.options.close_timeout):
                        try:
                            await conn.transport.flush()
                        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                            pass
                await conn.transport.aclose()
        if conn.outcome is None:
            conn.outcome = _Outcome("closing" if self._closing else "lost")
        return conn.outcome

    def _on_connected(self, conn: _Connection) -> None:
        """A fresh connection: resubscribe everything, make every unconfirmed publish due."""
        self._unsubscribes.clear()  # a new connection holds no subscriptions
        for sub in self._subscriptions.values():
            sub.receiver.on_reconnect()
            sub._reset_connection_state()
        self._publishes.on_reconnect(anyio.current_time())
        self._check_healthy(conn)
        self._wake.set()

    def _check_healthy(self, conn: _Connection) -> None:
        if not conn.healthy and all(sub.confirmed for sub in self._subscriptions.values()):
            conn.healthy = True
            self._ready.set()

    # -- subscriptions (called by Subscription) ----------------------------------------

    def _add_subscription(self, sub: Subscription) -> None:
        self._check_usable()
        if sub.channel in self._subscriptions:
            raise ValueError(f"already subscribed to {sub.channel!r} on this client")
        self._subscriptions[sub.channel] = sub
        self._unsubscribes.pop(sub.channel, None)  # the subscribe repositions it anyway
        self._wake.set()

    def _remove_subscription(self, sub: Subscription) -> None:
        if self._subscriptions.get(sub.channel) is not sub:
            return
        del self._subscriptions[sub.channel]
        receiver = sub.receiver
        self._retired.retransmits_seen += receiver.duplicates_dropped
        self._retired.stale_dropped += receiver.stale_dropped
        self._retired.gaps += receiver.gaps_reported
        if self._conn is not None and self._error is None and not self._closing:
            self._unsubscribes[sub.channel] = (next(self._ids), None)
            self._wake.set()

    # -- sending (sync: encode and queue; the writer flushes) ---------------------------

    def _wake_writer(self) -> None:
        self._wake.set()

    def _send(self, conn: _Connection, frame: dict[str, Any]) -> int:
        if conn.outcome is not None:
            return 0
        payload = codec.encode(frame, conn.encoding)
        if conn.encoding is Encoding.JSON:
            size = conn.transport.queue_message(payload.decode("utf-8"))
        else:
            size = conn.transport.queue_message(payload)
        self._wake.set()
        return size

    def _send_subscribe(self, conn: _Connection, sub: Subscription, now: float) -> None:
        request_id = next(self._ids)
        since = sub.receiver.position or sub.since
        frame: dict[str, Any] = {"type": "subscribe", "id": request_id, "channel": sub.channel, "ack": sub.ack}
        if since is not None:
            frame["since"] = {"epoch": since[0], "seq": since[1]}
        sub.outstanding[request_id] = (since, now)
        self._send(conn, frame)

    def _send_replay(self, conn: _Connection, sub: Subscription, since: tuple[str, int], now: float) -> None:
        request_id = next(self._ids)
        sub.outstanding[request_id] = (since, now)
        self._counters.replays_requested += 1
        self._send(conn, {
            "type": "replay", "id": request_id, "channel": sub.channel,
            "since": {"epoch": since[0], "seq": since[1]},
        })

    def _flush_ack(self, conn: _Connection, sub: Subscription) -> None:
        """Send the owed cumulative ack, never past what the server is sure to have sent.

        The server answers an ack past its last sent seq with an error frame (and closes
        with 1008 after ``max_errors`` of them). After a reposition (subscribe, replay) its
        count restarts at the ``since`` it was given, while frames it sent before may still
        be on their way to us; so an ack stays at or below the ``since`` of every
        repositioning request not yet answered, and at or below the highest seq received
        since the last answered one.
        """
        allowed = sub.ack_ceiling
        for since, _ in sub.outstanding.values():
            allowed = min(allowed, since[1] if since is not None and since[0] == sub.server_epoch else 0)
        target = min(sub.ack_owed, allowed)
        if target > sub.ack_sent:
            sub.ack_sent = target
            self._send(conn, {"type": "ack", "channel": sub.channel, "seq": target})

    def _apply(self, conn: _Connection, sub: Subscription, effects: list[Any], now: float) -> None:
        for effect in effects:
            if isinstance(effect, Deliver):
                sub._push(effect.message)
                self._counters.delivered += 1
            elif isinstance(effect, Gap):
                sub._push(effect)
            elif isinstance(effect, SendAck):
                sub.ack_owed = max(sub.ack_owed, effect.seq)
            elif isinstance(effect, SendReplay):
                self._send_replay(conn, sub, effect.since, now)
        if sub.ack:
            self._flush_ack(conn, sub)

    # -- reader -------------------------------------------------------------------------

    async def _reader(self, conn: _Connection) -> None:
        with conn.reader_scope:
            transport = conn.transport
            try:
                while True:
                    payload = await transport.receive()
                    try:
                        frame = codec.decode(payload, conn.encoding)
                    except codec.DecodeError as exc:
                        raise TransportClosed(1002, f"undecodable frame from the server: {exc}") from None
                    sub = self._dispatch(conn, frame)
                    if sub is not None and sub.full:
                        conn.paused = True
                        try:
                            await sub._wait_space()
                        finally:
                            conn.paused = False
            except TransportClosed as exc:
                conn.end(self._classify_close(exc))

    def _classify_close(self, exc: TransportClosed) -> _Outcome:
        if self._closing:
            return _Outcome("closing", exc)
        if exc.code == CLOSE_POLICY:
            return _Outcome("fatal", Forbidden(exc.reason, close_code=CLOSE_POLICY))
        if exc.code in FATAL_CLOSE_CODES and exc.remote:
            return _Outcome("fatal", ConnectionClosed(exc.code, exc.reason))
        return _Outcome("lost", exc)

    def _dispatch(self, conn: _Connection, frame: dict[str, Any]) -> Subscription | None:
        """Act on one frame; returns the subscription a message went to (for backpressure)."""
        kind = frame.get("type")
        now = anyio.current_time()
        if kind == "message":
            sub = self._subscriptions.get(frame.get("channel"))  # type: ignore[arg-type]
            epoch, seq = frame.get("epoch"), frame.get("seq")
            if sub is None or not isinstance(epoch, str) or type(seq) is not int:
                return None
            if epoch == sub.server_epoch and seq > sub.ack_ceiling:
                sub.ack_ceiling = seq
            # ``{"$bytes": base64}`` is how bytes travel in JSON. Undo it in both encodings:
            # a JSON publisher's bytes reach CBOR subscribers in that form too (the server
            # stores the map as sent), and data should not depend on who used which encoding.
            data = codec.bytes_from_json(frame.get("data"))
            self._apply(conn, sub, sub.receiver.on_message(epoch, seq, data, frame.get("ts"), now), now)
            return sub
        request_id = frame.get("id")
        if kind == "published":
            publish = self._publishes.on_published(request_id, frame.get("epoch"), frame.get("seq"))  # type: ignore[arg-type]
            if publish is not None:
                self._counters.published += 1
                self._window.set()
                waiter = self._publish_waiters.pop(publish.key, None)
                if waiter is not None:
                    waiter.resolve(Published(publish.channel, frame.get("epoch"), frame.get("seq"), publish.key))  # type: ignore[arg-type]
        elif kind in ("subscribed", "replaying"):
            sub = self._subscriptions.get(frame.get("channel"))  # type: ignore[arg-type]
            if sub is not None and request_id in sub.outstanding:
                self._repositioned(conn, sub, request_id, frame, now, subscribed=kind == "subscribed")
        elif kind == "unsubscribed":
            channel = frame.get("channel")
            entry = self._unsubscribes.get(channel)  # type: ignore[arg-type]
            if entry is not None and entry[0] == request_id:
                del self._unsubscribes[channel]  # type: ignore[arg-type]
        elif kind == "error":
            self._on_error(conn, frame, now)
        # "welcome" again, or a type this client does not know: nothing to do
        return None

    def _repositioned(
        self, conn: _Connection, sub: Subscription, request_id: int, frame: dict[str, Any],
        now: float, *, subscribed: bool,
    ) -> None:
        epoch, seq, recovered = frame.get("epoch"), frame.get("seq"), frame.get("recovered")
        since, _ = sub.outstanding.pop(request_id)
        # Requests sent before this one were processed before it: their replies are lost.
        for older in [i for i in sub.outstanding if i < request_id]:
            del sub.outstanding[older]
        if not isinstance(epoch, str) or type(seq) is not int:
            return
        if epoch != sub.server_epoch:
            sub.server_epoch = epoch
            sub.ack_owed = sub.ack_sent = 0
        if since is None:
            sub.ack_ceiling = seq
        elif since[0] == epoch:
            sub.ack_ceiling = since[1]
        else:
            sub.ack_ceiling = 0
        sub.ack_sent = min(sub.ack_sent, sub.ack_ceiling)
        effects = sub.receiver.on_subscribed(epoch, seq, bool(recovered), since)
        if subscribed and not sub.confirmed:
            sub.confirmed = True
            sub._confirmed.set()
            self._check_healthy(conn)
        self._apply(conn, sub, effects, now)

    def _on_error(self, conn: _Connection, frame: dict[str, Any], now: float) -> None:
        self._counters.server_errors += 1
        code, reason = str(frame.get("code")), str(frame.get("reason", ""))
        request_id = frame.get("id")
        error: ServerError = Forbidden(reason) if code == "forbidden" else ServerError(code, reason)
        log.debug("server error %s: %s (id %r)", code, reason, request_id)
        if type(request_id) is not int:
            return  # an ack refused, say: nothing waits for it
        publish = self._publishes.cancel(request_id)
        if publish is not None:
            self._window.set()
            waiter = self._publish_waiters.pop(publish.key, None)
            if waiter is not None:
                waiter.fail(error)
            return
        for sub in list(self._subscriptions.values()):
            if request_id in sub.outstanding:
                since, _ = sub.outstanding.pop(request_id)
                if not sub.confirmed:  # the (re)subscribe was refused: the subscription ends
                    del self._subscriptions[sub.channel]
                    sub._fail(error)
                    self._check_healthy(conn)
                return
        for channel, (unsubscribe_id, _) in list(self._unsubscribes.items()):
            if unsubscribe_id == request_id:  # not_subscribed: it is gone either way
                del self._unsubscribes[channel]
                return

    # -- writer / timers -------------------------------------------------------------------

    async def _writer(self, conn: _Connection) -> None:
        with conn.writer_scope:
            transport = conn.transport
            try:
                while True:
                    now = anyio.current_time()
                    if not self._closing:
                        self._timers(conn, now)
                    if transport.has_outgoing:
                        await transport.flush()
                        continue
                    deadline = self._next_deadline(conn)
                    with anyio.move_on_after(max(0.0, deadline - now) if deadline is not None else math.inf):
                        await self._wake.wait()
                    self._wake = anyio.Event()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                conn.end(_Outcome("closing" if self._closing else "lost", exc))

    def _timers(self, conn: _Connection, now: float) -> None:
        timeout = self.options.request_timeout
        for sub in list(self._subscriptions.values()):
            last_sent = max((sent for _, sent in sub.outstanding.values()), default=None)
            if not sub.confirmed:
                if last_sent is None or now >= last_sent + timeout:
                    if last_sent is not None:
                        self._counters.requests_resent += 1
                    self._send_subscribe(conn, sub, now)
                continue
            if last_sent is not None and now >= last_sent + timeout and sub.receiver.position is not None:
                # A replay answer went missing: ask again from where we are (costs nothing
                # we already hold) so the ack bookkeeping learns where the server stands.
                self._counters.requests_resent += 1
                self._send_replay(conn, sub, sub.receiver.position, now)
            self._apply(conn, sub, sub.receiver.tick(now), now)
        for channel, (request_id, sent_at) in list(self._unsubscribes.items()):
            if sent_at is None or now >= sent_at + timeout:
                if sent_at is not None:
                    self._counters.requests_resent += 1
                self._unsubscribes[channel] = (request_id, now)
                self._send(conn, {"type": "unsubscribe", "id": request_id, "channel": channel})
        limit = conn.max_message_size
        for publish in self._publishes.due(now):
            # Retry no sooner than request_timeout, plus the tracker's jittered backoff.
            publish.due_at += timeout
            frame = {"type": "publish", "id": publish.request_id, "channel": publish.channel,
                     "data": publish.data, "key": publish.key}
            payload = codec.encode(frame, conn.encoding)
            if limit is not None and len(payload) > limit:
                self._publishes.cancel(publish.key)
                self._window.set()
                waiter = self._publish_waiters.pop(publish.key, None)
                if waiter is not None:
                    waiter.fail(ValueError(
                        f"publish of {len(payload)} bytes is over the server's max_message_size ({limit})"
                    ))
                continue
            conn.transport.queue_message(payload.decode("utf-8") if conn.encoding is Encoding.JSON else payload)

    def _next_deadline(self, conn: _Connection) -> float | None:
        deadlines = []
        timeout = self.options.request_timeout
        for sub in self._subscriptions.values():
            last_sent = max((sent for _, sent in sub.outstanding.values()), default=None)
            if last_sent is not None:
                deadlines.append(last_sent + timeout)
            elif not sub.confirmed:
                deadlines.append(-math.inf)
            receiver_deadline = sub.receiver.next_deadline()
            if receiver_deadline is not None:
                deadlines.append(receiver_deadline)
        for _, sent_at in self._unsubscribes.values():
            deadlines.append(-math.inf if sent_at is None else sent_at + timeout)
        publish_deadline = self._publishes.next_deadline()
        if publish_deadline is not None:
            deadlines.append(publish_deadline)
        return min(deadlines, default=None)

    # -- heartbeat ---------------------------------------------------------------------

    async def _heartbeat(self, conn: _Connection) -> None:
        with conn.heartbeat_scope:
            options = self.options
            transport = conn.transport
            for number in itertools.count():
                await anyio.sleep(options.heartbeat_interval)
                if conn.paused:
                    continue  # we are not reading: silence proves nothing
                received = transport.bytes_in
                transport.pong_event = anyio.Event()
                transport.queue_ping(b"hb%d" % number)
                with anyio.move_on_after(options.heartbeat_timeout):
                    await transport.pong_event.wait()
                    continue
                if conn.paused or transport.bytes_in != received:
                    continue  # no pong yet, but the link carries traffic
                self._counters.heartbeat_timeouts += 1
                transport.abort()
                conn.end(_Outcome("lost", TransportClosed(4000, "heartbeat timeout: no pong, no traffic")))
                return


# ----------------------------------------------------------------------------- connect


@asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[Client]:
    """Connect to a wsnursery server; ``async with connect(url) as client``.

    Returns once the first connection is up (retrying like a reconnect: ``GaveUp`` after
    ``max_reconnects`` failed retries; ``Forbidden`` at once on close 1008 or HTTP 401/403).
    On exit every task of the client is done: the connection is closed (close frame 1000,
    up to ``close_timeout``) and unconfirmed publishes are abandoned.

    Options (keyword arguments): see :class:`Options`.
    """
    client = Client(url, Options(**options))
    try:
        async with anyio.create_task_group() as group:
            client._task_group = group
            group.start_soon(client._run)
            try:
                await client._wait_ready()
                yield client
            finally:
                await client._shutdown()
    except BaseExceptionGroup as group_error:
        sole = _sole_exception(group_error)
        if sole is None:
            raise
        raise sole from sole.__cause__


def _sole_exception(group: BaseExceptionGroup) -> BaseException | None:
    """The one exception inside (nested) single-member groups, or None."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


__all__ = [
    "Client",
    "ClientError",
    "ClientStats",
    "Options",
    "Published",
    "Subscription",
    "connect",
]
