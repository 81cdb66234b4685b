"""The client SDK's I/O shell: anyio tasks that move bytes, time and effects.

Every decision is made by the sans-I/O :class:`~wsnursery.client.session.ClientSession`;
this module feeds it events and carries out the effects it returns. Tasks, all inside the
task group ``connect`` opens (none outlives the ``async with``):

- the supervisor: asks the session for the next attempt (which URL, after what delay),
  connects, and per connection runs a task group of three tasks: the reader (frames in ->
  session -> effects; messages handed to the subscriptions' memory object streams), the
  timers (tick the session when something is due: requests and publishes to (re)send, acks,
  replays, pings, the heartbeat verdict) and the writer (the only task that writes the
  socket), plus, when the session asks for a fresh token, a short task that runs the
  application's token callable. When the connection ends, that group is cancelled and the
  session decides whether to reconnect.

Backpressure: each subscription is a bounded anyio memory object stream. When one is full
the reader waits for the application to read (:attr:`Client.reading_paused`): it reads no
more frames, so it sends no more acks; the server then sees a slow consumer (its unacked
window fills, its socket backs up) and closes with 4008; the client reconnects and resumes
with ``since`` once the application reads again. Nothing is lost and nothing grows.
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from .. import codec
from ..codec import Encoding
from ..protocol import Position
from ..wire import CloseCode
from .effects import (
    DropConnection,
    Effect,
    FetchToken,
    PublishConfirmed,
    PublishFailed,
    Ready,
    SendFrame,
    SendPing,
    SubscriptionConfirmed,
    SubscriptionRefused,
    ToApp,
)
from .errors import ClientError, Closed, TransportClosed
from .options import ENCODINGS, ClientStats, Options, Published, is_token
from .publisher import PublishWindowFull
from .session import ClientSession, LinkState
from .subscription import Subscription, SubscriptionState
from .transport import WebSocketTransport, open_transport, parse_url

log = logging.getLogger("wsnursery.client")

__all__ = [
    "Client",
    "ClientError",
    "ClientStats",
    "Options",
    "Published",
    "Subscription",
    "SubscriptionState",
    "connect",
]

_LINK_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Connection:
    """One live connection: its transport, its task group, and why it ended (set once)."""

    def __init__(self, transport: WebSocketTransport, encoding: Encoding) -> None:
        self.transport = transport
        self.encoding = encoding
        self.group: anyio.abc.TaskGroup | None = None
        self.writable = anyio.Event()  # bytes were queued: the writer should flush
        self.ended = False
        self.error: BaseException | None = None

    def end(self, error: BaseException | None) -> None:
        if not self.ended:
            self.ended, self.error = True, error
        if self.group is not None:
            self.group.cancel_scope.cancel()


class _Waiter:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Published | None = None
        self.error: BaseException | None = None

    def resolve(self, result: Published) -> None:
        self.result = result
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


class Client:
    """A pub/sub client. Make one with ``async with wsnursery.client.connect(url) as client``."""

    def __init__(self, urls: str | Sequence[str], options: Options) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls or not all(isinstance(url, str) for url in self.urls):
            raise ValueError("connect() needs a ws:// URL or a list of them")
        for url in self.urls:
            parse_url(url)  # a bad URL is a ValueError now, not max_reconnects failures later
        self.options = options
        self.session = ClientSession(
            self.urls,
            options,
            # Keys must differ between clients even when two share a seed.
            client_prefix=secrets.token_hex(8),
        )
        self._encoding = ENCODINGS[options.encoding]
        self._publish_waiters: dict[str, _Waiter] = {}
        self._window = anyio.Event()
        self._subscriptions: dict[str, Subscription] = {}
        # Subscriptions whose inbox overflowed, in order (a set): the reader drains them
        # before its next frame, instead of looking at every subscription per frame.
        self._overflowing: dict[Subscription, None] = {}
        self._conn: _Connection | None = None
        self._ready = anyio.Event()  # the first connection is up, or the client failed
        self._stopped = anyio.Event()  # the supervisor has returned
        self._wake = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def url(self) -> str:
        """The node the client is connected to (or tries next)."""
        return self.session.url

    # -- public API --------------------------------------------------------------------

    @property
    def stats(self) -> ClientStats:
        return self.session.stats

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.ended

    @property
    def reading_paused(self) -> bool:
        """The reader waits for the application to read a full subscription (backpressure)."""
        return self.session.paused

    @property
    def error(self) -> BaseException | None:
        """Why the client ended (GaveUp, Forbidden, ConnectionClosed, Closed), or None."""
        return self.session.error

    @property
    def welcome(self) -> dict[str, Any] | None:
        """The current connection's ``welcome`` frame."""
        return self.session.welcome if self._conn is not None else None

    def subscribe(
        self,
        channel: str,
        *,
        ack: bool = True,
        buffer_size: int | None = None,
        since: Position | tuple[str, int] | None = None,
    ) -> Subscription:
        """A :class:`Subscription` to enter with ``async with``.

        ``ack=True`` (the default) asks the server for acknowledged delivery: it re-sends
        what the client did not acknowledge. ``ack=False`` relies on gap detection and
        ``since`` on reconnect only (a lost final message is noticed only when the next
        one arrives). ``since=Position(epoch, seq)`` (or a tuple) resumes after a position
        held from earlier (a previous ``subscription.position``); without it delivery starts
        after the head.
        """
        return Subscription(
            self,
            channel,
            ack,
            buffer_size or self.options.buffer_size,
            since,
            attach=self._add_subscription,
            detach=self._remove_subscription,
        )

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
            try:
                pending = self.session.publish(channel, data, anyio.current_time())
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
                self.session.abandon_publish(pending.key)
                self._window.set()
            raise
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def abort(self) -> None:
        """Drop the TCP connection abruptly (RST, no close frame), as if the network died.

        For fault tests: the client notices at once and reconnects by itself.
        """
        conn = self._conn
        if conn is not None and not conn.ended:
            self.session.aborted()
            conn.transport.abort()
            conn.end(TransportClosed(CloseCode.LOST, "aborted by client.abort()"))

    # -- lifetime ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Client]:
        """Run the client's tasks for the ``async with`` body (``connect`` uses this)."""
        async with anyio.create_task_group() as group:
            self._task_group = group
            group.start_soon(self._run)
            try:
                await self._wait_ready()
                yield self
            finally:
                await self._shutdown()

    def _fail(self, error: BaseException) -> None:
        """End the client: every waiter raises ``error`` (or the session's first error)."""
        self.session.end(error)
        error = self.session.error or error
        for waiter in self._publish_waiters.values():
            waiter.fail(error)
        self._publish_waiters.clear()
        self._window.set()
        for sub in list(self._subscriptions.values()):
            sub.state = SubscriptionState.CLOSED
            sub.inbox.fail(error)
        self._subscriptions.clear()
        self._ready.set()
        if self._conn is not None:
            self._conn.end(error)

    async def _wait_ready(self) -> None:
        await self._ready.wait()
        if self.session.error is not None:
            raise self.session.error

    async def _shutdown(self) -> None:
        """Close gracefully (close frame, wait for the server's) within close_timeout."""
        self.session.close()
        conn = self._conn
        with anyio.move_on_after(self.options.close_timeout, shield=True):
            if conn is not None and not conn.ended:
                conn.transport.queue_close(CloseCode.NORMAL, "client closing")
                self._wake.set()
                await self._stopped.wait()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        if self.session.error is None:
            self._fail(Closed("the client is closed"))

    async def _run(self) -> None:
        """The supervisor: connect, serve, and reconnect while the session says so."""
        try:
            await self._supervise()
            if self.session.error is not None:
                self._fail(self.session.error)
        except Exception as exc:  # a bug: make it visible to every caller
            log.exception("client supervisor failed")
            self._fail(exc)
        finally:
            self._conn = None
            self._stopped.set()

    async def _supervise(self) -> None:
        session = self.session
        while (attempt := session.next_attempt()) is not None:
            if attempt.delay > 0:
                await anyio.sleep(attempt.delay)
            if session.state is not LinkState.DOWN:
                return
            try:
                conn, effects = await self._open(attempt.url)
            except Exception as exc:
                session.connect_failed(exc)
                log.info("connect to %s failed: %s", attempt.url, exc)
                continue
            error = await self._serve(conn, effects)
            self._ready.set()
            session.connection_lost(error)
            if session.state is LinkState.DOWN:
                log.info("connection to %s lost: %s", attempt.url, error)

    async def _token(self) -> str | None:
        source = self.options.token
        if source is None or isinstance(source, str):
            return source
        token = source()
        if inspect.isawaitable(token):
            token = await token
        if not is_token(token):
            raise ValueError("the token callable must return a non-empty one-line string")
        return token

    async def _open(self, url: str) -> tuple[_Connection, list[Effect]]:
        options = self.options
        with anyio.fail_after(options.connect_timeout):
            token = await self._token()
            self.session.token_obtained(token, anyio.current_time(), time.time())
            headers = list(options.extra_headers)
            if token is not None:
                headers.append(("Authorization", f"Bearer {token}"))
            transport = await open_transport(
                url,
                [self._encoding.subprotocol],
                max_message_size=options.max_message_size,
                extra_headers=headers,
                ssl_context=options.ssl_context,
                compression=options.compression,
            )
            try:
                encoding = Encoding.JSON
                if transport.subprotocol is not None:
                    encoding = Encoding(transport.subprotocol)
                welcome = codec.decode(await transport.receive(), encoding)
                effects = self.session.connection_made(welcome, encoding, anyio.current_time())
            except BaseException:
                await transport.aclose()
                raise
        return _Connection(transport, encoding), effects

    async def _serve(self, conn: _Connection, effects: list[Effect]) -> BaseException | None:
        """Run one connection until it ends; returns why it ended."""
        self._conn = conn
        transport = conn.transport
        transport.on_outgoing = lambda: conn.writable.set()  # not bound: writable is replaced
        transport.on_pong = self._pong
        try:
            async with anyio.create_task_group() as group:
                conn.group = group
                self._apply(conn, effects)
                if conn.ended:  # ended before the tasks started (abort)
                    group.cancel_scope.cancel()
                group.start_soon(self._reader, conn)
                group.start_soon(self._writer, conn)
                group.start_soon(self._timers, conn)
        finally:
            self._conn = None
            with anyio.CancelScope(shield=True):
                # Send what is queued (our close frame, or the answer to the server's)
                # unless the link is dead or a cancelled send left half a frame behind.
                if transport.has_outgoing and transport.can_flush:
                    with anyio.move_on_after(self.options.close_timeout):
                        try:
                            await transport.flush()
                        except _LINK_ERRORS:
                            pass
                await transport.aclose()
        return conn.error

    # -- subscriptions (called by Subscription) ----------------------------------------

    def _add_subscription(self, sub: Subscription) -> None:
        self.session.add_subscription(sub.channel, sub.ack, sub.since)
        self._subscriptions[sub.channel] = sub
        self._wake.set()

    def _remove_subscription(self, sub: Subscription) -> None:
        if self._subscriptions.get(sub.channel) is not sub:
            return
        del self._subscriptions[sub.channel]
        self.session.remove_subscription(sub.channel)
        self._wake.set()

    # -- effects ---------------------------------------------------------------------------

    def _apply(self, conn: _Connection, effects: list[Effect]) -> None:
        """Carry out the session's effects (never blocks: the writer flushes, the reader drains)."""
        for effect in effects:
            if isinstance(effect, ToApp):
                sub = self._subscriptions.get(effect.channel)
                if sub is not None:
                    sub.inbox.hand_over(effect.item)
                    if sub.inbox.overflow:
                        self._overflowing[sub] = None
            elif isinstance(effect, SendFrame):
                if not conn.ended:
                    conn.transport.queue_message(effect.payload)
                    conn.writable.set()
            elif isinstance(effect, PublishConfirmed):
                self._window.set()
                waiter = self._publish_waiters.pop(effect.key, None)
                if waiter is not None:
                    waiter.resolve(effect.published)
            elif isinstance(effect, PublishFailed):
                self._window.set()
                waiter = self._publish_waiters.pop(effect.key, None)
                if waiter is not None:
                    waiter.fail(effect.error)
            elif isinstance(effect, SubscriptionConfirmed):
                sub = self._subscriptions.get(effect.channel)
                if sub is not None:
                    sub.inbox.confirm()
            elif isinstance(effect, SubscriptionRefused):
                sub = self._subscriptions.pop(effect.channel, None)
                if sub is not None:
                    sub.inbox.fail(effect.error)
            elif isinstance(effect, Ready):
                self._ready.set()
            elif isinstance(effect, SendPing):
                conn.transport.queue_ping(effect.payload)
            elif isinstance(effect, DropConnection):
                conn.transport.abort()
                conn.end(effect.error)
            elif isinstance(effect, FetchToken) and conn.group is not None:
                conn.group.start_soon(self._refresh_token, conn)

    def _pong(self) -> None:
        self.session.pong_received(anyio.current_time())
        self._wake.set()  # the next ping is due sooner than what the timers wait for

    async def _refresh_token(self, conn: _Connection) -> None:
        try:
            token = await self._token()
        except Exception as exc:
            log.warning("token callable failed: %s", exc)
            self.session.token_fetch_failed(anyio.current_time())
            self._wake.set()
            return
        assert token is not None
        self._apply(conn, self.session.token_fetched(token, anyio.current_time(), time.time()))

    # -- reader ---------------------------------------------------------------------------

    async def _reader(self, conn: _Connection) -> None:
        transport = conn.transport
        try:
            while True:
                while self._overflowing:
                    sub = next(iter(self._overflowing))
                    self.session.set_paused(True)
                    try:
                        await sub.inbox.drain()  # cancelled: it stays for the next reader
                    finally:
                        self.session.set_paused(False)
                    del self._overflowing[sub]
                payload = await transport.receive()
                try:
                    frame = codec.decode(payload, conn.encoding)
                except codec.DecodeError as exc:
                    raise TransportClosed(
                        CloseCode.PROTOCOL_ERROR, f"undecodable frame from the server: {exc}"
                    ) from None
                self._apply(conn, self.session.frame_received(frame, anyio.current_time()))
        except TransportClosed as exc:
            conn.end(exc)

    # -- writer and timers -----------------------------------------------------------------

    async def _writer(self, conn: _Connection) -> None:
        """The one task that writes the socket: flush whatever was queued."""
        transport = conn.transport
        try:
            while True:
                if transport.has_outgoing:
                    await transport.flush()
                    continue
                conn.writable = anyio.Event()
                await conn.writable.wait()
        except _LINK_ERRORS as exc:
            conn.end(exc)

    async def _timers(self, conn: _Connection) -> None:
        """Tick the session when something is due or changed (requests, publishes, acks,
        pings, the heartbeat verdict). A task of its own, so a writer stuck on a stalled
        socket cannot hold up the heartbeat that will drop that socket."""
        while True:
            now = anyio.current_time()
            self._wake = anyio.Event()
            self._apply(conn, self.session.tick(now, conn.transport.bytes_in))
            deadline = self.session.next_deadline()
            wait = max(0.0, deadline - now) if deadline is not None else math.inf
            with anyio.move_on_after(wait):
                await self._wake.wait()


@asynccontextmanager
async def connect(urls: str | Sequence[str], **options: Any) -> AsyncIterator[Client]:
    """Connect to a wsnursery server; ``async with connect(url) as client``.

    ``urls`` is one ``ws://`` URL or a list of nodes of one cluster: an unreachable node is
    skipped for the next one (a lost connection is retried on the same node first), and
    every subscription resumes there with ``since``. Returns once the first connection is
    up (retrying like a reconnect: ``GaveUp`` after ``max_reconnects`` failed retries;
    ``Forbidden`` at once on close 1008 or HTTP 401/403). On exit every task of the client
    is done: the connection is closed (close frame 1000, up to ``close_timeout``) and
    unconfirmed publishes are abandoned.

    Options (keyword arguments): see :class:`Options` (``token``, ``compression``, timings).
    """
    try:
        async with Client(urls, Options(**options)).running() as client:
            yield client
    except BaseExceptionGroup as group_error:
        sole = _sole_exception(group_error)
        if sole is None:
            raise
        raise sole from sole.__cause__


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (nested) single-member groups, or None."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error
