"""A connection's ack-retransmit deadlines: go back to the oldest unacked message when one passes.

Each subscription with acks has an ``AckTracker`` (sans-I/O, in ``reliability``) that knows
when its oldest unacked send is due. A connection keeps the set of such subscriptions and
arms its earliest deadline on the server's one ``timers.DeadlineTimer`` (no task, no sleep per
connection). When it passes, every due subscription's cursor goes back to its oldest unacked
message (go-back-N), the outbox writes again from there, and the next deadline is armed.

Bounds: one armed deadline per connection; a subscription's sends are bounded by
``max_unacked`` (see ``outbox``), and the backoff by ``ack_max_timeout``.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from .context import ConnectionState
from .metrics import Metrics
from .subscription import Subscriber
from .timers import DeadlineTimer


class Owner(Protocol):
    state: ConnectionState


class Marks(Protocol):
    """Where a subscription goes to be written again (the connection's outbox)."""

    def mark(self, subscription: Subscriber) -> None: ...


class Retransmits:
    """The acking subscriptions of one connection, and their earliest retransmit deadline."""

    __slots__ = (
        "_metrics",
        "_outbox",
        "_owner",
        "_timer",
        "acking",
    )

    def __init__(self, owner: Owner, outbox: Marks, timer: DeadlineTimer, metrics: Metrics) -> None:
        self._owner = owner
        self._outbox = outbox
        self._timer = timer
        self._metrics = metrics
        self.acking: dict[Subscriber, None] = {}  # a dict, not a set: 64 bytes empty, not 216

    def track(self, subscription: Subscriber) -> None:
        """Watch ``subscription``'s acks (or stop watching, when it has no tracker)."""
        if subscription.tracker is not None:
            self.acking[subscription] = None
        else:
            self.acking.pop(subscription, None)

    def forget(self, subscription: Subscriber) -> None:
        self.acking.pop(subscription, None)

    def next_deadline(self) -> float:
        deadline = math.inf
        for subscription in self.acking:
            assert subscription.tracker is not None
            due = subscription.tracker.next_deadline()
            if due is not None and due < deadline:
                deadline = due
        return deadline

    def arm(self) -> None:
        """Arm the earliest deadline (after a send, or an ack that reset the backoff)."""
        if self._owner.state is not ConnectionState.OPEN:
            return  # the connection is ending (its deadline was disarmed, or is about to be)
        deadline = self.next_deadline()
        if deadline < math.inf:
            self._timer.arm(self, deadline)

    def disarm(self) -> None:
        self._timer.disarm(self)

    def deadline_reached(self) -> None:
        """The timer: a deadline passed. Re-send from the oldest unacked message of each due one."""
        if self._owner.state is not ConnectionState.OPEN:
            return
        now = trio.current_time()
        for subscription in self.acking:
            assert subscription.tracker is not None
            first = subscription.tracker.due(now)
            if first is not None:
                subscription.cursor = min(subscription.cursor, first - 1)
                subscription.tracker.on_resent(now)
                self._metrics.retransmits.inc()
                self._outbox.mark(subscription)
        self.arm()
