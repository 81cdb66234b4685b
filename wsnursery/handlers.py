"""A connection's request handlers: subscribe, unsubscribe, publish, ack, replay, presence, refresh.

``Requests.handle`` takes one message a client sent, decodes and parses it (``protocol``),
acts on it through the hub and the outbox, and queues the reply; a request that cannot be
served gets an error frame instead, and the connection stays open.

Permissions and rates (``access``) are checked before a request acts: ``forbidden`` and
``rate_limited`` are error frames like any other. A subscriber joins its channel's presence
list (``presence``) when its subscription is placed and leaves it on unsubscribe and when
the connection ends; ``"presence": true`` makes the subscription a watcher of join/leave. A
``refresh`` replaces the token's grants for later requests (subscriptions already made stay).

Publishes in flight: with an engine that stores remotely (Redis), a publish is submitted
(``Hub.submit``) and the reader goes on reading the client's next requests while it is
stored, so a client with many publishes in flight gets them stored together, a pipeline per
round trip, not a round trip each. A replier task (started when first needed, in the
connection's nursery) waits for them in order and queues their replies, so replies keep the
order of the publishes. Before any request other than a publish or an ack is served, and
when the client closes, the reader waits until every publish in flight is answered
(``settle``): replies keep the order of the requests. At most ``MAX_PUBLISHES_IN_FLIGHT`` per
connection; then the reader waits for the oldest.

Bounds: ``max_subscriptions`` per connection (``too_many_subscriptions``), ``max_errors``
error frames (then the connection is closed with 1008); the hub's own bounds answer with
their error codes (``too_many_channels``).
"""

from __future__ import annotations

import collections
from typing import Protocol

import trio

from . import codec, protocol
from .access import Access
from .broadcast import Broadcast
from .codec import Encoding
from .context import ConnectionContext
from .hub import PublishResult, PublishTicket
from .outbox import Outbox
from .presence import Member, presence_reply
from .protocol import Position, ProtocolError
from .reliability import AckTracker
from .retransmit import Retransmits
from .subscription import Subscriber
from .tokens import Identity
from .wire import CloseCode

MAX_PUBLISHES_IN_FLIGHT = 64


class Owner(Protocol):
    """What the handlers need of their connection."""

    def request_close(self, code: int, reason: str) -> None: ...

    def token_refreshed(self, identity: Identity) -> None:
        """A ``refresh`` replaced the token: its new expiry applies."""


class RequestHandlers:
    """The subscriptions of one connection and the handlers that change them."""

    __slots__ = (
        "_config",
        "_connection_ids",
        "_encoding",
        "_hub",
        "_in_flight",
        "_member",
        "_metrics",
        "_nursery",
        "_outbox",
        "_owner",
        "_parser",
        "_presence",
        "_replied",
        "_replier_scope",
        "_retransmits",
        "_work",
        "access",
        "errors",
        "subscriptions",
    )

    def __init__(
        self,
        owner: Owner,
        outbox: Outbox,
        retransmits: Retransmits,
        encoding: Encoding,
        context: ConnectionContext,
        access: Access | None = None,
        member: Member | None = None,
    ) -> None:
        self._owner = owner
        self._outbox = outbox
        self._retransmits = retransmits
        self._encoding = encoding
        self._hub = context.hub
        self._config = context.config
        self._metrics = context.metrics
        self._parser = context.parser
        self.subscriptions: dict[str, Subscriber] = {}
        self.errors = 0
        # A list, not a deque: 56 bytes empty, not 624, on every connection; at most 64 long.
        self._in_flight: list[tuple[protocol.Publish, PublishTicket]] = []
        self._nursery: trio.Nursery | None = None  # where the replier may start
        self._replier_scope: trio.CancelScope | None = None
        self._replied: trio.Event | None = None  # set when the replier answers one; then replaced
        self._work: trio.Event | None = None  # set to wake the replier when it waits for work
        # Identity (issue 13): what this connection may do, and who it is in presence lists.
        self.access = access if access is not None else Access(context.security, None, 0.0)
        self._member = member  # made when it first joins a channel: most connections never need it
        self._presence = context.presence
        self._connection_ids = context.connection_ids

    async def handle(self, payload: str | bytes) -> None:
        """Serve one request (``payload`` as it came in one WebSocket message)."""
        try:
            request = self._parser.parse(codec.decode(payload, self._encoding))
            if isinstance(request, protocol.Publish):
                await self._publish(request, len(payload))
                return
            if isinstance(request, protocol.Ack):
                self._ack(request)
                return
        except codec.DecodeError as exc:
            await self._refuse(ProtocolError("bad_request", str(exc), exc.request_id))
            return
        except ProtocolError as exc:
            await self._refuse(exc)
            return
        if self._in_flight:
            await self.settle()  # e.g. a subscribe after a publish: served once that is stored
        try:
            if isinstance(request, protocol.Subscribe):
                await self._subscribe(request)
            elif isinstance(request, protocol.Unsubscribe):
                self._unsubscribe(request)
            elif isinstance(request, protocol.Replay):
                await self._replay(request)
            elif isinstance(request, protocol.PresenceQuery):
                await self._presence_query(request)
            else:
                self._refresh(request)
        except codec.DecodeError as exc:
            self._error(ProtocolError("bad_request", str(exc), exc.request_id))
        except ProtocolError as exc:
            self._error(exc)

    @property
    def member(self) -> Member:
        """This connection in presence lists: its user and a ``conn`` name unique in the process."""
        if self._member is None:
            self._member = Member(self.access.user, next(self._connection_ids))
        return self._member

    def detach_all(self) -> None:
        """The connection has ended: leave every channel (and its presence list)."""
        for subscription in self.subscriptions.values():
            self._leave(subscription)
            self._hub.detach(subscription.channel, subscription)

    async def _publish(self, request: protocol.Publish, size: int) -> None:
        self.access.may_publish(request.channel, request.id, trio.current_time())
        data = request.data
        try:
            # First: it bounds the depth bytes_from_json recurses to. History counts what the
            # decoded value holds in memory, or the bytes sent if more (issue 12, item 3).
            size = max(size, codec.check_value(data))
            if not self._encoding.is_binary:
                # JSON carries bytes as {"$bytes": base64}: store real bytes, so a CBOR reader
                # gets bytes and a JSON reader the same form back.
                data = codec.bytes_from_json(data)
        except codec.ValueNotCarried as exc:
            raise ProtocolError("bad_request", str(exc), request.id) from None
        try:
            ticket = None if self._nursery is None else self._hub.submit(request.channel, data, request.key, size)
            if ticket is None:
                self._published(request, await self._hub.publish(request.channel, data, request.key, size))
                return
        except ProtocolError as exc:
            exc.request_id = request.id
            raise
        self._in_flight.append((request, ticket))
        if self._replier_scope is None:
            self._start_replier()
        elif self._work is not None:
            self._work.set()
        while len(self._in_flight) >= MAX_PUBLISHES_IN_FLIGHT:
            await self._answered()

    @property
    def in_flight(self) -> bool:
        """Publishes submitted whose replies are not yet queued."""
        return bool(self._in_flight)

    def open(self, nursery: trio.Nursery) -> None:
        """The replier may start (in ``nursery``) from now on."""
        self._nursery = nursery

    def shut(self) -> None:
        """The connection has ended: a running replier stops (replies would not be sent)."""
        self._nursery = None
        if self._replier_scope is not None:
            self._replier_scope.cancel()

    async def settle(self) -> None:
        """Wait until every publish in flight is answered (its reply queued)."""
        while self._in_flight:
            await self._answered()

    async def _answered(self) -> None:
        """Wait for the replier's next answer."""
        if self._replier_scope is None or self._replier_scope.cancel_called:
            self._in_flight.clear()  # the connection has ended: nobody would send the replies
            return
        if self._replied is None:
            self._replied = trio.Event()
        await self._replied.wait()

    def _start_replier(self) -> None:
        assert self._nursery is not None  # (``_publish`` submits only then)
        self._replier_scope = trio.CancelScope()
        self._nursery.start_soon(self._replier, self._replier_scope)

    async def _replier(self, scope: trio.CancelScope) -> None:
        in_flight = self._in_flight
        with scope:
            while True:
                if not in_flight:
                    self._work = trio.Event()
                    await self._work.wait()
                    self._work = None
                    continue
                request, ticket = in_flight[0]
                try:
                    published = await ticket.wait()
                except ProtocolError as exc:
                    exc.request_id = request.id
                    self._error(exc)
                else:
                    self._published(request, published)
                del in_flight[0]
                if self._replied is not None:
                    self._replied.set()
                    self._replied = None

    def _published(self, request: protocol.Publish, published: PublishResult) -> None:
        metrics = self._metrics
        (metrics.duplicate_publishes if published.duplicate else metrics.publishes).inc()
        self._outbox.send_reply(protocol.published_frame(request.id, request.channel, published.position))

    async def _subscribe(self, request: protocol.Subscribe) -> None:
        self.access.may_subscribe(request.channel, request.id, trio.current_time())
        config = self._config
        subscription = self.subscriptions.get(request.channel)
        if subscription is None:
            if len(self.subscriptions) >= config.max_subscriptions:
                raise ProtocolError(
                    "too_many_subscriptions",
                    f"at most {config.max_subscriptions} subscriptions per connection",
                    request.id,
                )
            subscription = Subscriber(
                self._outbox, request.channel, self._tracker(request.ack), self._limit(request.ack)
            )
            try:
                subscription.broadcast = await self._hub.attach(request.channel, subscription)
            except ProtocolError as exc:
                exc.request_id = request.id
                raise
            try:
                _check_since(subscription.broadcast, request.since, request.id)
            except ProtocolError:  # a refused subscribe leaves no subscription behind
                self._hub.detach(request.channel, subscription)
                raise
            self.subscriptions[request.channel] = subscription
        else:
            assert subscription.broadcast is not None
            _check_since(subscription.broadcast, request.since, request.id)  # before changing it
        if request.ack != (subscription.tracker is not None):
            subscription.tracker = self._tracker(request.ack)
            subscription.limit = self._limit(request.ack)
        start, recovered = await self._position(subscription, request.since, request.id)
        self._outbox.send_reply(protocol.subscribed_frame(request.id, request.channel, start, recovered))
        self._join(subscription, request.presence)

    def _join(self, subscription: Subscriber, watch: bool) -> None:
        """Presence on subscribe: watch join/leave (``"presence": true``), then join the list."""
        channel, presence = subscription.channel, self._presence
        if watch and subscription.events is None:
            subscription.events = collections.deque()
            presence.watch(channel, subscription)
        elif not watch and subscription.events is not None:
            presence.unwatch(channel, subscription)
            subscription.events = None
        if subscription.member is None:
            assert subscription.broadcast is not None
            subscription.member = presence.join(channel, self.member, subscription.broadcast.head)

    def _leave(self, subscription: Subscriber) -> None:
        channel, presence = subscription.channel, self._presence
        if subscription.events is not None:
            presence.unwatch(channel, subscription)
            subscription.events = None
        if subscription.member is not None:
            head = subscription.broadcast.head if subscription.broadcast is not None else 0
            presence.leave(channel, self.member.conn, subscription.member, head)
            subscription.member = None

    async def _presence_query(self, request: protocol.PresenceQuery) -> None:
        self.access.may_read(request.channel, request.id)
        try:
            members, complete = await self._presence.listing(request.channel)  # a cluster asks Redis
        except ProtocolError as exc:  # unavailable
            exc.request_id = request.id
            raise
        self._outbox.send_reply(presence_reply(request.id, request.channel, members, complete))

    def _refresh(self, request: protocol.Refresh) -> None:
        identity = self.access.refresh(request.token, request.id)
        self._owner.token_refreshed(identity)
        self._outbox.send_reply(protocol.refreshed_frame(request.id, identity.exp))

    def _tracker(self, ack: bool) -> AckTracker | None:
        if not ack:
            return None
        config = self._config
        return AckTracker(
            ack_timeout=config.ack_timeout,
            max_timeout=config.ack_max_timeout,
            max_unacked=config.max_unacked,
        )

    def _limit(self, ack: bool) -> int:
        return self._config.max_unacked if ack else self._config.outbound_queue_size

    async def _position(
        self, subscription: Subscriber, since: Position | None, request_id: int | None
    ) -> tuple[Position, bool]:
        """Point the cursor just after ``since`` (or at the head); say if nothing was lost."""
        broadcast = subscription.broadcast
        assert broadcast is not None
        _check_since(broadcast, since, request_id)
        if since is None:
            cursor, recovered = broadcast.head, True
        elif await self._hub.recover(subscription.channel, since):
            cursor, recovered = since.seq, True
        else:
            cursor, recovered = broadcast.oldest - 1, False
        subscription.cursor = cursor
        subscription.replay_end = broadcast.head
        if subscription.tracker is not None:
            subscription.tracker.reset_to(cursor)
        self._retransmits.track(subscription)
        subscription.ready = True
        if cursor < broadcast.head:
            self._outbox.mark(subscription)
        return broadcast.position, recovered

    def _unsubscribe(self, request: protocol.Unsubscribe) -> None:
        subscription = self._require(request.channel, request.id)
        del self.subscriptions[request.channel]
        self._leave(subscription)
        self._outbox.forget(subscription)
        self._retransmits.forget(subscription)
        self._hub.detach(request.channel, subscription)
        self._outbox.send_reply(protocol.unsubscribed_frame(request.id, request.channel))

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
            self._retransmits.arm()  # an ack resets the backoff: the next one may be due sooner

    async def _replay(self, request: protocol.Replay) -> None:
        self.access.may_read(request.channel, request.id)
        subscription = self._require(request.channel, request.id)
        start, recovered = await self._position(subscription, request.since, request.id)
        self._outbox.send_reply(protocol.replaying_frame(request.id, request.channel, start, recovered))

    def _require(self, channel: str, request_id: int | None) -> Subscriber:
        subscription = self.subscriptions.get(channel)
        if subscription is None:
            raise ProtocolError("not_subscribed", f"not subscribed to {channel}", request_id)
        return subscription

    async def _refuse(self, error: ProtocolError) -> None:
        """The error frame, after the replies of the publishes in flight: replies keep the
        order of the requests."""
        if self._in_flight:
            await self.settle()
        self._error(error)

    def _error(self, error: ProtocolError) -> None:
        self._metrics.count(self._metrics.errors, error.code)
        self._outbox.send_reply(protocol.error_frame(error.code, error.reason, error.request_id))
        self.errors += 1
        if self.errors >= self._config.max_errors:
            self._owner.request_close(CloseCode.POLICY, f"too many errors ({self.errors})")


def _check_since(broadcast: Broadcast, since: Position | None, request_id: int | None) -> None:
    """Refuse a ``since`` ahead of the stream (same epoch, seq past the head)."""
    if since is not None and since.epoch == broadcast.epoch and since.seq > broadcast.head:
        raise ProtocolError(
            "bad_request", f"since.seq {since.seq} is ahead of the stream (at {broadcast.head})", request_id
        )
