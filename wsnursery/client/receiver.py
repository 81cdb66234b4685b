"""Sans-I/O receiving side of one subscribed channel: order, repeats, gaps, replay, acks.

Nothing here does I/O, reads a clock or imports an async library: time comes in as ``now``
(float seconds, any monotonic origin). :class:`ChannelReceiver` takes the frames of one
channel and returns effects (:class:`Deliver`, :class:`SendAck`, :class:`SendReplay`,
:class:`Gap`); the client session (:mod:`wsnursery.client.session`) carries them out, and the
tests drive it alike. Its one buffer is bounded; the class says what happens at the bound.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..protocol import Position

__all__ = [
    "ChannelReceiver",
    "Deliver",
    "Effect",
    "Gap",
    "Message",
    "SendAck",
    "SendReplay",
]

_positive = attrs.validators.gt(0)
_positive_seconds = attrs.validators.gt(0.0)


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
    ack_interval: float = attrs.field(default=0.05, validator=attrs.validators.ge(0.0))
    replay_timeout: float = attrs.field(default=1.0, validator=_positive_seconds)
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
        return None if self._epoch is None else Position(self._epoch, self._delivered)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def on_subscribed(self, epoch: str, seq: int, recovered: bool, since: Position | None = None) -> list[Effect]:
        """A ``subscribed`` reply (or the reply to a ``replay``, which carries the same fields).

        ``seq`` is the stream's head; ``since`` is what the request carried. Without a held
        position or ``since``, delivery starts after the head.
        """
        held = self.position or since
        if held is None:
            self._epoch, self._delivered = epoch, seq
            return []
        self._epoch, self._delivered = held.epoch, held.seq
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
            effects.append(Gap(self.channel, self._delivered + 1, resume_at, self._resync.reason))
        self._epoch, self._delivered = epoch, resume_at - 1
        self._resync = None
        return effects

    def _ask_replay(self, now: float) -> SendReplay:
        assert self._epoch is not None
        self._replay_clock = now
        self.replays_requested += 1
        return SendReplay(since=Position(self._epoch, self._delivered))

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
