"""The client session's record of one subscribed channel, and the ack clamp.

Per connection the record says whether the channel's subscribe was answered
(:class:`ChannelState`), which repositioning requests (subscribe, replay) await an answer,
and what the server may have sent since its last reposition, which bounds the acks the
client may send. Sans-I/O like the rest of the session.
"""

from __future__ import annotations

import enum

import attrs

from ..protocol import Position
from .receiver import ChannelReceiver

__all__ = ["ChannelRecord", "ChannelState", "PendingRequest"]


class ChannelState(enum.Enum):
    SUBSCRIBING = "subscribing"  # this connection's subscribe is not answered yet
    ACTIVE = "active"  # answered: messages flow


@attrs.frozen
class PendingRequest:
    """A repositioning request (subscribe, replay) awaiting its answer."""

    since: Position | None
    sent_at: float


@attrs.define(eq=False)
class ChannelRecord:
    """One subscription as the session sees it; per-connection fields reset on reconnect.

    Acks: the server answers an ack past its last sent seq with an error frame (and closes
    with 1008 after ``max_errors`` of them). After a reposition its count restarts at the
    ``since`` it was given, while frames it sent before may still be on their way to us; so
    an ack stays at or below the ``since`` of every repositioning request not yet answered,
    and at or below the highest seq received since the last answered one (``ack_ceiling``).
    """

    name: str
    ack: bool
    since: Position | None  # where the application asked to start
    receiver: ChannelReceiver
    confirmed_once: bool = False
    state: ChannelState = ChannelState.SUBSCRIBING
    outstanding: dict[int, PendingRequest] = attrs.Factory(dict)
    server_epoch: str | None = None
    ack_ceiling: int = 0
    ack_owed: int = 0
    ack_sent: int = 0
    ack_again: bool = False  # a repeat arrived: the last ack was probably lost, send it again

    def reset(self) -> None:
        """A new connection: nothing is subscribed on it yet, nothing was sent or acked."""
        self.state, self.outstanding, self.server_epoch = ChannelState.SUBSCRIBING, {}, None
        self.ack_ceiling = self.ack_owed = self.ack_sent = 0
        self.ack_again = False

    def last_sent(self) -> float | None:
        return max((r.sent_at for r in self.outstanding.values()), default=None)

    def requested(self, request_id: int, since: Position | None, now: float) -> None:
        self.outstanding[request_id] = PendingRequest(since, now)

    def message_seen(self, epoch: str, seq: int) -> None:
        if epoch == self.server_epoch and seq > self.ack_ceiling:
            self.ack_ceiling = seq

    def answered(self, request_id: int) -> Position | None:
        """The reply to ``request_id`` came; returns the ``since`` it carried. Requests sent
        before it were processed before it, so their replies are lost: forget them too."""
        since = self.outstanding.pop(request_id).since
        for older in [i for i in self.outstanding if i < request_id]:
            del self.outstanding[older]
        return since

    def repositioned(self, since: Position | None, epoch: str, head: int) -> None:
        """The server restarted this channel's count at ``since`` (or the ``head``)."""
        if epoch != self.server_epoch:
            self.server_epoch = epoch
            self.ack_owed = self.ack_sent = 0
        if since is None:
            self.ack_ceiling = head
        elif since.epoch == epoch:
            self.ack_ceiling = since.seq
        else:
            self.ack_ceiling = 0
        self.ack_sent = min(self.ack_sent, self.ack_ceiling)

    def owe_ack(self, seq: int) -> None:
        """The receiver asks for an ack of ``seq``; at or below what was sent, that is a
        repeat's doing: the ack went missing (the server retransmits), so it goes again."""
        if seq <= self.ack_sent:
            self.ack_again = True
        self.ack_owed = max(self.ack_owed, seq)

    def ack_due(self) -> int | None:
        """The cumulative ack to send now (counted as sent), clamped as the class says."""
        allowed = self.ack_ceiling
        for request in self.outstanding.values():
            since = request.since
            same_stream = since is not None and since.epoch == self.server_epoch
            allowed = min(allowed, since.seq if since is not None and same_stream else 0)
        target = min(self.ack_owed, allowed)
        again, self.ack_again = self.ack_again, False
        if target > self.ack_sent:
            self.ack_sent = target
            return target
        if again and 0 < self.ack_sent <= allowed:
            return self.ack_sent
        return None
