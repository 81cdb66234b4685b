"""The client's sans-I/O session: every decision of the SDK, and no I/O.

Like h11 or wsproto, :class:`ClientSession` is told what happened and answers with what to
do. Events: a connection attempt is due (:meth:`next_attempt`), it failed
(:meth:`connect_failed`), it got its welcome (:meth:`connection_made`), a frame arrived
(:meth:`frame_received`), a pong arrived, time passed (:meth:`tick`), the application
subscribed, unsubscribed, published or closed, the connection ended
(:meth:`connection_lost`). Answers: lists of effects (:data:`Effect`: send a frame, send a
ping, hand an item to a subscription, confirm or fail a publish, drop the link, fetch a
token) and, for reconnects, an :class:`Attempt` (which URL, after what delay) or None once
the session ended (:attr:`error` says why).

What is decided here: resubscribing with ``since`` and re-sending unconfirmed publishes on a
new connection; re-sending requests unanswered after ``request_timeout``; clamping acks so
the server never sees one past what it sent; which close codes end the client; backoff and
failover between URLs; heartbeat verdicts; when to renew the token. Per-channel order,
repeats and gaps are the :class:`~wsnursery.client.receiver.ChannelReceiver`'s, publish keys
and retries the :class:`~wsnursery.client.publisher.PublishTracker`'s. The I/O shell
(:mod:`wsnursery.client.sdk`) only moves bytes, time and effects.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

from .. import codec, protocol
from ..codec import Encoding
from ..protocol import Position
from ..wire import CloseCode
from .channel import ChannelRecord, ChannelState
from .effects import (
    Attempt,
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
from .errors import (
    Closed,
    ConnectionClosed,
    Forbidden,
    GaveUp,
    ServerError,
    TransportClosed,
)
from .link import Heartbeat, HeartbeatVerdict, TokenRefresh, token_expiry
from .options import ClientStats, Counters, Options, Published
from .publisher import PendingPublish, PublishTracker
from .receiver import ChannelReceiver, Deliver, Gap, SendAck, SendReplay
from .receiver import Effect as ReceiverEffect
from .reconnect import Reconnects

__all__ = ["ChannelState", "ClientSession", "LinkState"]

ReceiverFactory = Callable[[str, bool], ChannelReceiver]


# ----------------------------------------------------------------------------- states


class LinkState(enum.Enum):
    DOWN = "down"  # no connection: before the first one, or between two
    UP = "up"  # a connection got its welcome
    CLOSING = "closing"  # the application is closing the client
    ENDED = "ended"  # closed or failed (``error`` says which): nothing more happens


# ----------------------------------------------------------------------------- the session


class ClientSession:
    """All of one client's protocol state, across connections. See the module docstring.

    ``urls``: the nodes to try, in order; a failed attempt moves to the next one (at once,
    until each was tried since the last success; then with backoff). A lost connection is
    retried on the same node first. ``new_receiver(channel, ack)`` makes each channel's
    receiver (the shell may inject its own).
    """

    def __init__(
        self,
        urls: Sequence[str],
        options: Options,
        *,
        rng: random.Random | None = None,
        client_prefix: str | None = None,
        new_receiver: ReceiverFactory | None = None,
    ) -> None:
        if not urls:
            raise ValueError("give at least one URL")
        self.urls = list(urls)
        self.options = options
        self.state = LinkState.DOWN
        self.error: BaseException | None = None
        self.welcome: dict[str, Any] | None = None
        self.paused = False  # the shell is waiting for the application to read
        self._rng = rng if rng is not None else random.Random(options.seed)
        self._ids = itertools.count(1)  # request ids, shared with the publish tracker
        self._publishes = PublishTracker(
            rng=self._rng,
            base=options.request_timeout,
            cap=options.publish_backoff_max,
            max_pending=options.max_pending_publishes,
            ids=self._ids,
            **({"client_prefix": client_prefix} if client_prefix is not None else {}),
        )
        self._new_receiver = new_receiver or self._receiver
        self._channels: dict[str, ChannelRecord] = {}
        self._unsubscribes: dict[str, tuple[int, float | None]] = {}  # channel -> (id, sent at)
        self._encoding = Encoding.JSON
        self._max_message_size: int | None = None
        self._healthy = False  # welcome + every (re)subscribe answered on this connection
        self._heartbeat = Heartbeat(options.heartbeat_interval, options.heartbeat_timeout)
        self._token = TokenRefresh(options.token_refresh_margin, options.request_timeout)
        self._reconnects = Reconnects(
            self.urls,
            options.max_reconnects,
            options.backoff_base,
            options.backoff_max,
            self._rng,
            refreshable=options.refreshable,
        )
        self._wall_offset = 0.0  # unix time minus the session's clock, at the last token reading
        self._counters = Counters()

    def _receiver(self, channel: str, ack: bool) -> ChannelReceiver:
        return ChannelReceiver(channel, ack=ack, replay_timeout=self.options.request_timeout)

    # -- what the application and the shell read --------------------------------------------

    @property
    def url(self) -> str:
        """The node the next (or current) connection goes to."""
        return self._reconnects.url

    @property
    def connected(self) -> bool:
        return self.state is LinkState.UP

    @property
    def pending_publishes(self) -> int:
        return len(self._publishes)

    def position(self, channel: str) -> Position | None:
        record = self._channels.get(channel)
        return None if record is None else record.receiver.position

    @property
    def stats(self) -> ClientStats:
        return self._counters.snapshot(
            [record.receiver for record in self._channels.values()],
            connect_failures=self._reconnects.failures,
            publish_retries=self._publishes.retries,
            token_refreshes=self._token.refreshes,
        )

    # -- connection lifecycle -----------------------------------------------------------------

    def next_attempt(self) -> Attempt | None:
        """The next connection attempt, or None: the session ended (``error``) or is closing."""
        if self.state in (LinkState.CLOSING, LinkState.ENDED):
            return None
        attempt = self._reconnects.next_attempt()
        if isinstance(attempt, GaveUp):
            self.end(attempt)
            return None
        return attempt

    def connect_failed(self, error: BaseException) -> None:
        """An attempt did not get as far as a welcome. Refusals end the session."""
        final = self._reconnects.failed(error)
        if final is not None:
            self.end(final)

    def token_obtained(self, token: str | None, now: float, wall: float) -> None:
        """The next connection presents ``token`` (``wall``: unix time now, to read ``exp``)."""
        self._wall_offset = wall - now
        exp = token_expiry(token) if token is not None else None
        self._token.schedule(exp if self.options.refreshable else None, now, wall)

    def connection_made(self, welcome: dict[str, Any], encoding: Encoding, now: float) -> list[Effect]:
        """The connection's first frame arrived. Raises ``ConnectionClosed`` (protocol
        mismatch) or ``ValueError`` (not a welcome): the shell reports it as a failed attempt."""
        if welcome.get("type") != "welcome":
            raise ValueError(f"expected a welcome frame, got {welcome.get('type')!r}")
        if welcome.get("protocol") != protocol.PROTOCOL_VERSION:
            raise ConnectionClosed(
                CloseCode.PROTOCOL_ERROR, f"server speaks protocol {welcome.get('protocol')!r}, not 1"
            )
        if self.state is not LinkState.DOWN:
            return []
        self.state, self.welcome, self._encoding = LinkState.UP, welcome, encoding
        size = welcome.get("max_message_size")
        self._max_message_size = size if type(size) is int and size > 0 else None
        self._counters.connects += 1
        self._reconnects.connected()
        self._healthy = False
        self._unsubscribes.clear()  # a new connection holds no subscriptions
        for record in self._channels.values():
            record.receiver.on_reconnect()
            record.reset()
        self._publishes.on_reconnect(now)
        self._heartbeat.start(now)
        return self._check_healthy()

    def connection_lost(self, error: BaseException | None) -> None:
        """The connection ended (``error``: why, if known). Decides whether to reconnect."""
        self._heartbeat.stop()
        self._token.stop()
        was_up = self.state is LinkState.UP
        if was_up:
            self.state = LinkState.DOWN
        final = self._reconnects.lost(error, self._healthy)
        self._healthy = False
        if was_up and final is not None:
            self.end(final)

    def aborted(self) -> None:
        self._counters.aborts += 1

    def close(self) -> None:
        """The application closes the client: no more requests, timers or reconnects."""
        if self.state is not LinkState.ENDED:
            self.state = LinkState.CLOSING
        self._heartbeat.stop()
        self._token.stop()

    def end(self, error: BaseException) -> None:
        """The session is over; ``error`` (the first one given) is what every caller sees."""
        if self.error is None:
            self.error = error
        self.state = LinkState.ENDED
        self._heartbeat.stop()
        self._token.stop()

    # -- the application ----------------------------------------------------------------------

    def check_usable(self) -> None:
        if self.error is not None:
            raise self.error
        if self.state is LinkState.CLOSING:
            raise Closed("the client is closed")

    def add_subscription(self, channel: str, ack: bool, since: Position | None) -> None:
        self.check_usable()
        if channel in self._channels:
            raise ValueError(f"already subscribed to {channel!r} on this client")
        self._channels[channel] = ChannelRecord(channel, ack, since, self._new_receiver(channel, ack))
        self._unsubscribes.pop(channel, None)  # the subscribe repositions it anyway

    def remove_subscription(self, channel: str) -> None:
        record = self._channels.pop(channel, None)
        if record is None:
            return
        self._counters.retire(record.receiver)
        if self.state is LinkState.UP:
            self._unsubscribes[channel] = (next(self._ids), None)

    def publish(self, channel: str, data: Any, now: float) -> PendingPublish:
        """Register a publish (sent by the next :meth:`tick`). Raises ``PublishWindowFull``."""
        self.check_usable()
        return self._publishes.new_publish(channel, data, now)

    def abandon_publish(self, key: str) -> None:
        self._publishes.cancel(key)

    def set_paused(self, paused: bool) -> None:
        """The shell stopped reading to wait for the application (or resumed)."""
        self.paused = paused

    # -- the connection's traffic ----------------------------------------------------------------

    def pong_received(self, now: float) -> None:
        self._heartbeat.pong(now)

    def frame_received(self, frame: dict[str, Any], now: float) -> list[Effect]:
        kind = frame.get("type")
        if kind == "message":
            return self._on_message(frame, now)
        request_id = frame.get("id")
        if kind == "published":
            epoch, seq = frame.get("epoch"), frame.get("seq")
            if type(request_id) is not int or not isinstance(epoch, str) or type(seq) is not int:
                return []
            publish = self._publishes.on_published(request_id, epoch, seq)
            if publish is None:
                return []
            self._counters.published += 1
            return [PublishConfirmed(publish.key, Published(publish.channel, epoch, seq, publish.key))]
        if kind in ("subscribed", "replaying"):
            record = self._channels.get(frame.get("channel"))  # type: ignore[arg-type]
            if record is not None and type(request_id) is int and request_id in record.outstanding:
                return self._repositioned(record, request_id, frame, now, kind == "subscribed")
        elif kind == "unsubscribed":
            channel = frame.get("channel")
            entry = self._unsubscribes.get(channel)  # type: ignore[arg-type]
            if entry is not None and entry[0] == request_id:
                del self._unsubscribes[channel]  # type: ignore[arg-type]
        elif kind == "refreshed":
            exp = frame.get("exp")
            if request_id is not None and request_id == self._token.request_id:
                self._token.refreshes += 1
                wall = now + self._wall_offset
                self._token.schedule(exp if isinstance(exp, (int, float)) else None, now, wall)
        elif kind == "error":
            return self._on_error(frame)
        # "welcome" again, or a type this client does not know: nothing to do
        return []

    # -- token renewal (the shell runs the application's callable) -----------------------------

    def token_fetched(self, token: str, now: float, wall: float) -> list[Effect]:
        self._wall_offset = wall - now
        if self.state is not LinkState.UP or not self._token.fetching:
            return []
        request_id = next(self._ids)
        self._token.fetched(token, request_id, now)
        return [self._send(protocol.refresh_request(request_id, token))]

    def token_fetch_failed(self, now: float) -> None:
        self._token.fetch_failed(now)

    # -- timers ------------------------------------------------------------------------------

    def tick(self, now: float, bytes_in: int = 0) -> list[Effect]:
        """Everything due at ``now``: (re)sent requests and publishes, acks, replays, pings."""
        if self.state is not LinkState.UP:
            return []
        effects: list[Effect] = []
        verdict = self._heartbeat.tick(now, bytes_in, self.paused)
        if verdict is HeartbeatVerdict.DEAD:
            self._counters.heartbeat_timeouts += 1
            return [
                DropConnection(TransportClosed(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout: no pong, no traffic"))
            ]
        if verdict is HeartbeatVerdict.PING:
            effects.append(SendPing(b"hb%d" % self._heartbeat.pings))
        for record in list(self._channels.values()):
            last_sent = record.last_sent()
            if record.state is ChannelState.SUBSCRIBING:
                if self._request_due(last_sent, now):
                    effects.append(self._send_subscribe(record, now))
                continue
            position = record.receiver.position
            if last_sent is not None and position is not None and self._request_due(last_sent, now):
                # A replay answer went missing: ask again from where we are (costs nothing
                # we already hold) so the ack bookkeeping learns where the server stands.
                effects.append(self._send_replay(record, position, now))
            effects += self._apply(record, record.receiver.tick(now), now)
        for channel, (request_id, sent_at) in list(self._unsubscribes.items()):
            if self._request_due(sent_at, now):
                self._unsubscribes[channel] = (request_id, now)
                effects.append(self._send(protocol.unsubscribe_request(request_id, channel)))
        effects += self._send_publishes(now)
        if self._token.fetch_due(now):
            effects.append(FetchToken())
        elif self._token.resend_due(now) and self._token.request_id is not None:
            self._counters.requests_resent += 1
            assert self._token.token is not None
            effects.append(self._send(protocol.refresh_request(self._token.request_id, self._token.token)))
        return effects

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (``-inf``: at once; None: nothing)."""
        if self.state is not LinkState.UP:
            return None
        timeout = self.options.request_timeout
        deadlines = [self._heartbeat.next_deadline(), self._token.next_deadline(), self._publishes.next_deadline()]
        for record in self._channels.values():
            last_sent = record.last_sent()
            if last_sent is not None:
                deadlines.append(last_sent + timeout)
            elif record.state is ChannelState.SUBSCRIBING:
                deadlines.append(float("-inf"))
            deadlines.append(record.receiver.next_deadline())
        for _, sent_at in self._unsubscribes.values():
            deadlines.append(float("-inf") if sent_at is None else sent_at + timeout)
        return min((d for d in deadlines if d is not None), default=None)

    # -- internals -----------------------------------------------------------------------------

    def _request_due(self, sent_at: float | None, now: float) -> bool:
        """Whether a request last sent at ``sent_at`` (None: not yet on this connection) goes
        out now: at once, or again once ``request_timeout`` passed unanswered (a re-send,
        counted in ``requests_resent``)."""
        if sent_at is None:
            return True
        if now < sent_at + self.options.request_timeout:
            return False
        self._counters.requests_resent += 1
        return True

    def _send(self, frame: dict[str, Any]) -> SendFrame:
        payload = codec.encode(frame, self._encoding)
        return SendFrame(frame, payload.decode("utf-8") if self._encoding is Encoding.JSON else payload)

    def _send_publishes(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        limit = self._max_message_size
        for publish in self._publishes.due(now):
            # Retry no sooner than request_timeout, plus the tracker's jittered backoff.
            publish.due_at += self.options.request_timeout
            effect = self._send(
                protocol.publish_request(publish.request_id, publish.channel, publish.data, publish.key)
            )
            if limit is not None and len(effect.payload) > limit:
                self._publishes.cancel(publish.key)
                effects.append(
                    PublishFailed(
                        publish.key,
                        ValueError(
                            f"publish of {len(effect.payload)} bytes is over the server's max_message_size ({limit})"
                        ),
                    )
                )
                continue
            effects.append(effect)
        return effects

    def _send_subscribe(self, record: ChannelRecord, now: float) -> SendFrame:
        request_id = next(self._ids)
        since = record.receiver.position or record.since
        record.requested(request_id, since, now)
        return self._send(protocol.subscribe_request(request_id, record.name, since=since, ack=record.ack))

    def _send_replay(self, record: ChannelRecord, since: Position, now: float) -> SendFrame:
        request_id = next(self._ids)
        record.requested(request_id, since, now)
        self._counters.replays_requested += 1
        return self._send(protocol.replay_request(request_id, record.name, since))

    def _on_message(self, frame: dict[str, Any], now: float) -> list[Effect]:
        record = self._channels.get(frame.get("channel"))  # type: ignore[arg-type]
        epoch, seq = frame.get("epoch"), frame.get("seq")
        if record is None or not isinstance(epoch, str) or type(seq) is not int:
            return []
        record.message_seen(epoch, seq)
        # ``{"$bytes": base64}`` is how bytes travel in JSON. Undo it in both encodings: a
        # JSON publisher's bytes reach CBOR subscribers in that form too (the server stores
        # the map as sent), and data should not depend on who used which encoding.
        data = codec.bytes_from_json(frame.get("data"))
        return self._apply(record, record.receiver.on_message(epoch, seq, data, frame.get("ts"), now), now)

    def _repositioned(
        self, record: ChannelRecord, request_id: int, frame: dict[str, Any], now: float, subscribed: bool
    ) -> list[Effect]:
        epoch, seq, recovered = frame.get("epoch"), frame.get("seq"), frame.get("recovered")
        since = record.answered(request_id)
        if not isinstance(epoch, str) or type(seq) is not int:
            return []
        record.repositioned(since, epoch, seq)
        effects: list[Effect] = []
        receiver_effects = record.receiver.on_subscribed(epoch, seq, bool(recovered), since)
        if subscribed and record.state is ChannelState.SUBSCRIBING:
            record.state = ChannelState.ACTIVE
            if not record.confirmed_once:
                record.confirmed_once = True
                effects.append(SubscriptionConfirmed(record.name))
            effects += self._check_healthy()
        return effects + self._apply(record, receiver_effects, now)

    def _on_error(self, frame: dict[str, Any]) -> list[Effect]:
        self._counters.server_errors += 1
        code, reason = str(frame.get("code")), str(frame.get("reason", ""))
        request_id = frame.get("id")
        error: ServerError = Forbidden(reason) if code == "forbidden" else ServerError(code, reason)
        if type(request_id) is not int:
            return []  # an ack refused, say: nothing waits for it
        publish = self._publishes.cancel(request_id)
        if publish is not None:
            return [PublishFailed(publish.key, error)]
        if request_id == self._token.request_id:
            self._token.stop()  # refused: not asked again on this connection (see TokenRefresh)
            return []
        for record in list(self._channels.values()):
            if request_id in record.outstanding:
                del record.outstanding[request_id]
                if record.state is ChannelState.SUBSCRIBING:  # refused: the subscription ends
                    del self._channels[record.name]
                    return [SubscriptionRefused(record.name, error), *self._check_healthy()]
                return []
        for channel, (unsubscribe_id, _) in list(self._unsubscribes.items()):
            if unsubscribe_id == request_id:  # not_subscribed: it is gone either way
                del self._unsubscribes[channel]
                break
        return []

    def _apply(self, record: ChannelRecord, effects: list[ReceiverEffect], now: float) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Deliver):
                out.append(ToApp(record.name, effect.message))
                self._counters.delivered += 1
            elif isinstance(effect, Gap):
                out.append(ToApp(record.name, effect))
            elif isinstance(effect, SendAck):
                record.owe_ack(effect.seq)
            elif isinstance(effect, SendReplay):
                out.append(self._send_replay(record, effect.since, now))
        if record.ack:
            ack = self._flush_ack(record)
            if ack is not None:
                out.append(ack)
        return out

    def _flush_ack(self, record: ChannelRecord) -> SendFrame | None:
        """The owed cumulative ack, if the clamp allows one (see :class:`ChannelRecord`)."""
        if self.state is not LinkState.UP:
            return None
        seq = record.ack_due()
        return None if seq is None else self._send(protocol.ack_request(record.name, seq))

    def _check_healthy(self) -> list[Effect]:
        if self._healthy or self.state is not LinkState.UP:
            return []
        if all(record.state is ChannelState.ACTIVE for record in self._channels.values()):
            self._healthy = True
            return [Ready()]
        return []
