"""Sans-I/O reliability core: acks, ordered delivery, gap repair, publish retries, dedup.

Nothing here does I/O, reads a clock or imports an async library. Time comes in as ``now``
(float seconds, any monotonic origin) and randomness from an injected ``random.Random``, so
the I/O shells (the Trio server, the client SDK) and the tests drive these machines alike.

- :class:`AckTracker` (server, per ``"ack": true`` subscription): unacked window, go-back-N
  retransmit timer with backoff.
- :class:`DedupWindow` (server, per channel): idempotency key -> original ``(epoch, seq)``.
- :class:`ChannelReceiver` (client, per channel): in-order delivery, duplicate drop, gap
  repair by ``replay``, explicit :class:`Gap` reports, batched cumulative acks.
- :class:`PublishTracker` (client): idempotency keys, retries with full-jitter backoff.

Every buffer is bounded; each class says what happens at its bound.
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

import attrs

__all__ = [
    "AckResult",
    "AckTracker",
    "ChannelReceiver",
    "Deliver",
    "DedupWindow",
    "Effect",
    "Gap",
    "Message",
    "PendingPublish",
    "Position",
    "PublishTracker",
    "PublishWindowFull",
    "SendAck",
    "SendReplay",
]

Position = tuple[str, int]
"""``(epoch, seq)``: the last message of stream ``epoch`` a client holds."""

_positive: Any = attrs.validators.gt(0)  # for int and float fields alike


# --------------------------------------------------------------------------- server side


@attrs.frozen
class AckResult:
    """What :meth:`AckTracker.on_ack` made of an ack.

    ``error_code``/``error_reason`` are set when the ack was invalid; the server answers with
    ``{"type": "error", "code": error_code, "reason": error_reason}`` and keeps the connection.
    """

    newly_acked: int = 0
    error_code: str | None = None
    error_reason: str | None = None


@attrs.define
class AckTracker:
    """Server-side state of one subscription that asked for acks.

    The writer sends a channel's messages in seq order and reports them with :meth:`on_sent`;
    the client acks cumulatively. When the oldest unacked message stays unacked for
    ``timeout`` seconds, :meth:`due` names the seq to go back to (go-back-N: the writer resends
    ``acked+1 .. sent`` from history, then calls :meth:`on_resent`). Each retransmit multiplies
    ``timeout`` by ``backoff`` up to ``max_timeout``; an ack that advances resets it to
    ``ack_timeout``. The writer continues from ``sent + 1``: an ack can move ``sent`` forward.

    Bound: at ``unacked >= max_unacked`` :attr:`window_full` is true. The server closes a live
    subscriber that stays full with 4008 (slow consumer); a catch-up burst (resume, replay)
    longer than the window must instead wait for acks, or every resume would end the same
    way. Send times are kept per :meth:`on_sent` call, at most ``max_unacked`` of them; past
    that, newer sends share the newest kept time (a retransmit can come earlier, never later).
    """

    ack_timeout: float = attrs.field(default=1.0, validator=_positive)
    backoff: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    max_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_unacked: int = attrs.field(default=1024, validator=_positive)
    acked: int = attrs.field(default=0, init=False)
    sent: int = attrs.field(default=0, init=False)
    highest_sent: int = attrs.field(default=0, init=False)
    retransmits: int = attrs.field(default=0, init=False)
    timeout: float = attrs.field(
        default=attrs.Factory(lambda self: self.ack_timeout, takes_self=True), init=False
    )
    # (highest seq of one send, when it went out), oldest first; only unacked sends.
    _inflight: deque[tuple[int, float]] = attrs.field(factory=deque, init=False)

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    @property
    def window_full(self) -> bool:
        return self.unacked >= self.max_unacked

    def on_sent(self, seq: int, now: float) -> None:
        """The writer has sent every message up to ``seq``. A ``seq <= sent`` changes nothing."""
        if seq <= self.sent:
            return
        self.sent = seq
        self.highest_sent = max(self.highest_sent, seq)
        if len(self._inflight) < self.max_unacked:
            self._inflight.append((seq, now))
        else:
            self._inflight[-1] = (seq, self._inflight[-1][1])

    def on_resent(self, now: float) -> None:
        """The writer resent ``acked+1 .. sent`` at ``now``; back off the timer."""
        if not self.unacked:
            return
        self._inflight = deque([(self.sent, now)])
        self.retransmits += 1
        self.timeout = min(self.timeout * self.backoff, self.max_timeout)

    def on_ack(self, seq: Any) -> AckResult:
        """A cumulative ack.

        Stale acks (``<= acked``) change nothing. An ack past ``highest_sent`` (the highest seq
        ever sent on this subscription) is an error and changes nothing. An ack past ``sent``
        but not past ``highest_sent`` is valid: the client got those messages before a
        :meth:`reset_to`, so ``sent`` moves up to it and the writer skips them.
        """
        if not isinstance(seq, int) or isinstance(seq, bool):
            return AckResult(error_code="bad_request", error_reason="ack seq must be an integer")
        if seq > self.highest_sent:
            return AckResult(
                error_code="bad_request",
                error_reason=f"ack seq {seq} is past the last sent seq {self.highest_sent}",
            )
        if seq <= self.acked:
            return AckResult()
        newly, self.acked, self.sent = seq - self.acked, seq, max(self.sent, seq)
        while self._inflight and self._inflight[0][0] <= seq:
            self._inflight.popleft()
        self.timeout = self.ack_timeout
        return AckResult(newly_acked=newly)

    def next_deadline(self) -> float | None:
        """When the oldest unacked send times out; None while nothing is unacked."""
        if not self.unacked:
            return None
        return self._inflight[0][1] + self.timeout

    def due(self, now: float) -> int | None:
        """The seq to resend from (``acked + 1``) if the retransmit timer has fired, else None."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return None
        return self.acked + 1

    def reset_to(self, seq: int) -> None:
        """The subscription was repositioned (``replay``, resubscribe): sent = acked = ``seq``."""
        self.sent = self.acked = seq
        self.highest_sent = max(self.highest_sent, seq)
        self._inflight.clear()
        self.timeout = self.ack_timeout


@attrs.define
class DedupWindow:
    """Server-side, per channel: idempotency keys seen recently -> their ``(epoch, seq)``.

    A retried publish whose key is still here gets the original seq and is not delivered
    again. Bounds: at most ``max_keys`` keys (remembering one more evicts the oldest) and
    ``max_age`` seconds (older keys are forgotten on the next lookup or remember).
    """

    max_keys: int = attrs.field(default=10_000, validator=_positive)
    max_age: float = attrs.field(default=300.0, validator=_positive)
    evicted: int = attrs.field(default=0, init=False)
    _entries: OrderedDict[str, tuple[str, int, float]] = attrs.field(
        factory=OrderedDict, init=False
    )

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str, now: float) -> Position | None:
        self._expire(now)
        entry = self._entries.get(key)
        return None if entry is None else (entry[0], entry[1])

    def remember(self, key: str, epoch: str, seq: int, now: float) -> None:
        self._expire(now)
        self._entries.pop(key, None)
        self._entries[key] = (epoch, seq, now)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
            self.evicted += 1

    def _expire(self, now: float) -> None:
        while self._entries:
            _, _, remembered_at = next(iter(self._entries.values()))
            if now - remembered_at < self.max_age:
                return
            self._entries.popitem(last=False)
            self.evicted += 1


# --------------------------------------------------------------------------- client side


@attrs.frozen
class Message:
    """One message of a channel's stream, as delivered to the application."""

    channel: str
    epoch: str
    seq: int
    data: Any
    ts: Any = None


@attrs.frozen
class Deliver:
    """Effect: hand ``message`` to the application (always in seq order, never twice)."""

    message: Message


@attrs.frozen
class SendAck:
    """Effect: send ``{"type": "ack", "channel": ..., "seq": seq}`` (cumulative)."""

    seq: int


@attrs.frozen
class SendReplay:
    """Effect: send ``{"type": "replay", "channel": ..., "since": {"epoch", "seq"}}``."""

    since: Position


@attrs.frozen
class Gap:
    """Effect: tell the application that messages were lost.

    Messages from ``expected_seq`` of the previously held stream up to (not including)
    ``resumed_at_seq`` of the current stream will never be delivered. ``reason`` is
    ``"epoch_changed"`` (the stream was replaced; everything after ``expected_seq - 1`` of the
    old epoch is gone) or ``"history_exceeded"`` (the server no longer holds them).
    """

    channel: str
    expected_seq: int
    resumed_at_seq: int
    reason: str


Effect = Deliver | SendAck | SendReplay | Gap


@attrs.frozen
class _Resync:
    """Waiting for the first message of a stream that resumes at a seq we do not know yet."""

    epoch: str
    reason: str


@attrs.define
class ChannelReceiver:
    """Client-side state of one subscribed channel. Each ``on_*``/``tick`` returns effects.

    Messages reach the application strictly in seq order, each once. A frame ahead of the
    next expected seq is held and a ``replay`` from the last delivered seq is requested, once;
    it is asked again only after ``replay_timeout`` seconds without progress (:meth:`tick`).
    When the server says the gap cannot be closed (``recovered: false`` or a new epoch), the
    server resends from the oldest message it holds: the first one that arrives (or a lower
    held frame) is where delivery resumes, after an explicit :class:`Gap`; for a new, empty
    stream (head 0) the Gap comes at once. Frames of any other epoch are dropped
    (``stale_dropped``).

    Bound: at most ``max_pending`` held frames; one more drops the farthest-ahead one
    (counted in ``overflow_dropped``). It is not lost: the replay resends it.

    With ``ack=True``: a cumulative :class:`SendAck` after ``ack_every`` deliveries or
    ``ack_interval`` seconds after the first unacked one, whichever comes first. A repeat
    of a delivered message also schedules an ack (its ack was probably lost).
    """

    channel: str
    ack: bool = False
    max_pending: int = attrs.field(default=1024, validator=_positive)
    ack_every: int = attrs.field(default=32, validator=_positive)
    ack_interval: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    replay_timeout: float = attrs.field(default=1.0, validator=_positive)
    duplicates_dropped: int = attrs.field(default=0, init=False)
    stale_dropped: int = attrs.field(default=0, init=False)
    overflow_dropped: int = attrs.field(default=0, init=False)
    replays_requested: int = attrs.field(default=0, init=False)
    gaps_reported: int = attrs.field(default=0, init=False)
    _epoch: str | None = attrs.field(default=None, init=False)
    _delivered: int = attrs.field(default=0, init=False)
    _pending: dict[int, Message] = attrs.field(factory=dict, init=False)
    _replay_clock: float | None = attrs.field(default=None, init=False)
    _resync: _Resync | None = attrs.field(default=None, init=False)
    _unacked: int = attrs.field(default=0, init=False)
    _ack_due_at: float | None = attrs.field(default=None, init=False)

    @property
    def position(self) -> Position | None:
        """``(epoch, last delivered seq)``, what to send as ``since``; None before subscribing."""
        return None if self._epoch is None else (self._epoch, self._delivered)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def on_subscribed(
        self, epoch: str, seq: int, recovered: bool, since: Position | None = None
    ) -> list[Effect]:
        """A ``subscribed`` reply (or the reply to a ``replay``, which carries the same fields).

        ``seq`` is the stream's head; ``since`` is what the request carried. Without a held
        position or ``since``, delivery starts after the head.
        """
        held = self.position or (tuple(since) if since is not None else None)
        if held is None:
            self._epoch, self._delivered = epoch, seq
            return []
        self._epoch, self._delivered = held
        if epoch != self._epoch:
            self._pending.clear()
            self._replay_clock = None
            self._forget_acks()
            self._resync = _Resync(epoch, "epoch_changed")
            if seq == 0:  # the new stream is empty: it resumes at 1
                return self._resume(epoch, 1)
        elif not recovered:
            self._replay_clock = None
            self._resync = _Resync(epoch, "history_exceeded")
        else:
            self._resync = None
        return []

    def on_message(self, epoch: str, seq: int, data: Any, ts: Any, now: float) -> list[Effect]:
        """A ``message`` frame: deliver, hold, or drop it."""
        effects: list[Effect] = []
        if self._resync is not None:
            if epoch != self._resync.epoch:
                self.stale_dropped += 1
                return []
            if epoch != self._epoch or seq > self._delivered:
                resume_at = min([seq, *self._pending]) if epoch == self._epoch else seq
                effects += self._resume(epoch, resume_at)
        if epoch != self._epoch:
            self.stale_dropped += 1
            return effects
        if seq <= self._delivered or seq in self._pending:
            self.duplicates_dropped += 1
            if self.ack and seq <= self._delivered:
                self._schedule_ack(now)
        else:
            self._pending[seq] = Message(self.channel, epoch, seq, data, ts)
        before = self._delivered
        effects += self._drain(now)
        if len(self._pending) > self.max_pending:
            del self._pending[max(self._pending)]
            self.overflow_dropped += 1
        if not self._pending:
            self._replay_clock = None
        elif self._resync is None and self._replay_clock is None:
            effects.append(self._ask_replay(now))
        elif self._delivered > before:
            self._replay_clock = now
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Fire timers: re-ask a stalled replay, send a batched ack."""
        effects: list[Effect] = []
        replay_at = self._replay_deadline()
        if replay_at is not None and now >= replay_at:
            effects.append(self._ask_replay(now))
        if self._ack_due_at is not None and now >= self._ack_due_at:
            effects.append(self._send_ack())
        return effects

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self._replay_deadline(), self._ack_due_at) if d is not None]
        return min(deadlines, default=None)

    def on_reconnect(self) -> None:
        """The connection was replaced: forget per-connection state, keep the position."""
        self._pending.clear()
        self._replay_clock = None
        self._resync = None
        self._forget_acks()

    # -- internals

    def _drain(self, now: float) -> list[Effect]:
        """Deliver held frames from the next expected seq on; count them towards an ack."""
        effects: list[Effect] = []
        while (message := self._pending.pop(self._delivered + 1, None)) is not None:
            self._delivered = message.seq
            effects.append(Deliver(message))
        if self.ack and effects:
            self._unacked += len(effects)
            self._schedule_ack(now)
            if self._unacked >= self.ack_every:
                effects.append(self._send_ack())
        return effects

    def _resume(self, epoch: str, resume_at: int) -> list[Effect]:
        assert self._resync is not None
        effects: list[Effect] = []
        if epoch != self._epoch or resume_at != self._delivered + 1:
            self.gaps_reported += 1
            effects.append(
                Gap(self.channel, self._delivered + 1, resume_at, self._resync.reason)
            )
        self._epoch, self._delivered = epoch, resume_at - 1
        self._resync = None
        return effects

    def _ask_replay(self, now: float) -> SendReplay:
        assert self._epoch is not None
        self._replay_clock = now
        self.replays_requested += 1
        return SendReplay(since=(self._epoch, self._delivered))

    def _replay_deadline(self) -> float | None:
        if not self._pending or self._replay_clock is None:
            return None
        return self._replay_clock + self.replay_timeout

    def _schedule_ack(self, now: float) -> None:
        if self._ack_due_at is None:
            self._ack_due_at = now + self.ack_interval

    def _send_ack(self) -> SendAck:
        self._unacked, self._ack_due_at = 0, None
        return SendAck(self._delivered)

    def _forget_acks(self) -> None:
        self._unacked, self._ack_due_at = 0, None


class PublishWindowFull(Exception):
    """``max_pending`` publishes await confirmation; wait for one before publishing more."""


@attrs.define
class PendingPublish:
    """A publish awaiting its ``published`` reply. Resent with the same key and id."""

    channel: str
    data: Any
    key: str
    request_id: int
    due_at: float
    sends: int = 0
    epoch: str | None = None  # set once confirmed
    seq: int | None = None


@attrs.define
class PublishTracker:
    """Client-side publisher: idempotency keys, retries, confirmation.

    Keys are ``f"{client_prefix}-{n}"`` with a random prefix from ``rng``. :meth:`due` hands
    out what to send now (first sends and retries); after the send numbered ``k`` (0 first),
    the next retry waits ``rng.uniform(0, min(cap, base * 2**k))`` (full jitter).
    :meth:`on_reconnect` makes every unconfirmed publish due at once, same key.

    Bound: at most ``max_pending`` unconfirmed publishes; :meth:`new_publish` past that raises
    :class:`PublishWindowFull` (the SDK makes the caller wait).
    """

    rng: random.Random = attrs.field(factory=random.Random)
    base: float = attrs.field(default=0.1, validator=_positive)
    cap: float = attrs.field(default=5.0, validator=_positive)
    max_pending: int = attrs.field(default=1024, validator=_positive)
    ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))
    client_prefix: str = attrs.field(
        default=attrs.Factory(lambda self: f"{self.rng.getrandbits(64):016x}", takes_self=True)
    )
    retries: int = attrs.field(default=0, init=False)
    _counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _pending: dict[str, PendingPublish] = attrs.field(factory=dict, init=False)
    _key_by_id: dict[int, str] = attrs.field(factory=dict, init=False)

    def __len__(self) -> int:
        return len(self._pending)

    def new_publish(self, channel: str, data: Any, now: float) -> PendingPublish:
        """Register a publish, due at once. Raises :class:`PublishWindowFull` at the bound."""
        if len(self._pending) >= self.max_pending:
            raise PublishWindowFull(
                f"{self.max_pending} publishes await confirmation; wait for one to complete"
            )
        key = f"{self.client_prefix}-{next(self._counter)}"
        publish = PendingPublish(channel, data, key, next(self.ids), due_at=now)
        self._pending[key] = publish
        self._key_by_id[publish.request_id] = key
        return publish

    def due(self, now: float) -> list[PendingPublish]:
        """Publishes to send now, oldest first; each counts as sent and gets a next retry time."""
        out = [p for p in self._pending.values() if p.due_at <= now]
        for publish in out:
            if publish.sends:
                self.retries += 1
            ceiling = min(self.cap, self.base * 2 ** min(publish.sends, 64))
            publish.due_at = now + self.rng.uniform(0, ceiling)
            publish.sends += 1
        return out

    def on_published(self, ref: str | int, epoch: str, seq: int) -> PendingPublish | None:
        """Confirm by key or request id; returns the publish, or None if already confirmed."""
        publish = self._pop(ref)
        if publish is not None:
            publish.epoch, publish.seq = epoch, seq
        return publish

    def cancel(self, ref: str | int) -> PendingPublish | None:
        """Give up on a publish (the server rejected it with an error); frees its slot."""
        return self._pop(ref)

    def on_reconnect(self, now: float) -> None:
        """A new connection: every unconfirmed publish is due at ``now`` (same key, same id)."""
        for publish in self._pending.values():
            publish.due_at = now

    def next_deadline(self) -> float | None:
        return min((p.due_at for p in self._pending.values()), default=None)

    def _pop(self, ref: str | int) -> PendingPublish | None:
        key = self._key_by_id.get(ref) if isinstance(ref, int) else ref
        publish = self._pending.pop(key, None) if key is not None else None
        if publish is not None:
            del self._key_by_id[publish.request_id]
        return publish
