"""A connection's subscription to one channel: a receive cursor into the channel's broadcast.

It never holds messages: its ``cursor`` is the seq of the last message written to the client,
and its connection's outbox reads what follows from the broadcast (``Broadcast.after`` the
cursor, which is ``Cursor.take`` without the method call on the hot path) when it writes. With acks (``"ack": true``) it also has an ``AckTracker``, and the lag that counts is
behind the last acknowledged message, not the last written one.
"""

from __future__ import annotations

import collections
from typing import Protocol

from .broadcast import Cursor
from .presence import PresenceEvent
from .reliability import AckTracker


class Notified(Protocol):
    """Who hears that a subscription's channel has a new message (the connection's outbox)."""

    def notified(self, subscription: Subscriber) -> None: ...

    def presence_notified(self, subscription: Subscriber) -> None: ...

    def slow_consumer(self, subscription: Subscriber) -> None: ...


class Subscriber(Cursor):
    """A ``broadcast.Cursor`` with a channel name, an owner to wake, and maybe an ack tracker."""

    __slots__ = ("channel", "events", "member", "outbox", "ready", "replay_end", "tracker")

    def __init__(self, outbox: Notified, channel: str, tracker: AckTracker | None, limit: int) -> None:
        super().__init__(limit=limit)
        self.outbox = outbox
        self.channel = channel
        self.tracker = tracker
        self.ready = False  # the cursor is placed (after the subscribe's reply is queued)
        self.replay_end = 0  # the head when the cursor was placed: history up to it is a replay
        # Presence: whether the channel lists this subscriber (None: not joined yet), and, for a
        # subscription made with "presence": true, the join/leave events not yet written.
        self.member: bool | None = None
        self.events: collections.deque[PresenceEvent] | None = None

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
        ``block`` policy, keeps counting the whole lag: publishers wait rather than drop history
        a subscriber still has to read.)
        """
        assert self.broadcast is not None
        return min(self.lag, self.broadcast.head - self.replay_end)

    @property
    def full(self) -> bool:
        return self.ready and self.lag >= self.limit

    def notify(self) -> None:
        if self.ready:
            self.outbox.notified(self)

    def presence_event(self, event: PresenceEvent) -> None:
        """A member joined or left the channel (``presence.Watcher``): written in channel order."""
        if self.events is not None:
            self.events.append(event)
            self.outbox.presence_notified(self)

    def stalled(self) -> None:
        """Its publishers waited ``block_timeout`` for it (policy ``block``): close it 4008."""
        self.outbox.slow_consumer(self)
