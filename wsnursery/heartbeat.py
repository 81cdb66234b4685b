"""Heartbeats: pings from one scheduler task; each connection's pong deadline is a cancel scope.

Every ``interval`` each connection is sent a ping. The answer is not polled for: a ping puts
a deadline ``timeout`` seconds ahead on the cancel scope around that connection's reader
(``PongDeadline.pinged``), and anything that arrives from the peer (a pong, any frame, any
byte) lifts it (``PongDeadline.heard``). If nothing arrives in time, Trio itself cancels the
reader, and the connection closes with 4000. No task per connection, no timeout polling:
the one scheduler task only sends pings.

The scheduler's bookkeeping (``HeartbeatSchedule``) has no I/O and no clock of its own: every
connection has the same interval, so the next ping due is always the oldest one queued, and
one FIFO queue serves any number of connections. ``Heartbeats`` is its Trio shell.

Costs: a ping sets the scope's deadline once (only when none is pending), the first read after
it clears it once; reads in between touch nothing. While the server itself holds a connection's
reader up (a publish waiting under policy ``block``, a remote hub's I/O), its deadline is
suspended (``excuse``, ``resume``): the server's own backpressure is not the client's silence.

Bounds: the ping queue holds one entry per connection; a connection that leaves is dropped
from it when its entry comes up.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Protocol

import trio


class Beating(Protocol):
    def ping(self) -> None:
        """Queue a ping frame (and set the pong deadline)."""


class PongDeadline:
    """One connection's pong deadline, kept as the deadline of the cancel scope around its reader.

    ``math.inf`` while no ping is unanswered. A second ping while one is unanswered keeps the
    earlier deadline: the first unanswered ping decides. ``pending`` mirrors "a deadline is
    set", so that the check on every read is one attribute, not the scope's ``deadline``
    property (about 0.3 us in trio 0.35).

    While the server itself holds the connection's reader up (``excuse``/``resume``), the
    deadline is suspended and pings set none; a ping still unanswered when the reader resumes
    gets a fresh ``timeout`` from then, since the server read nothing meanwhile.
    """

    __slots__ = ("clock", "excused", "pending", "scope", "timeout")

    def __init__(self, scope: trio.CancelScope, timeout: float, clock: Callable[[], float] = trio.current_time) -> None:
        self.scope = scope
        self.timeout = timeout
        self.clock = clock
        self.excused = False
        self.pending = False

    def pinged(self, now: float) -> None:
        """A ping went out at ``now``: the peer has ``timeout`` seconds to send anything."""
        if not self.pending:
            self.pending = True
            if not self.excused:
                self.scope.deadline = now + self.timeout

    def heard(self) -> None:
        """Something arrived from the peer: every ping so far is answered."""
        if self.pending:
            self.pending = False
            self.scope.deadline = math.inf

    def excuse(self) -> None:
        """The server holds the reader up (a request waiting on the hub): no deadline meanwhile."""
        self.excused = True
        if self.pending:
            self.scope.deadline = math.inf

    def resume(self) -> None:
        """The reader goes on: a ping still unanswered gets ``timeout`` from now."""
        self.excused = False
        if self.pending:
            self.scope.deadline = self.clock() + self.timeout


class _Slot:
    """A member's place in the queue; emptied when it leaves, so the queue never keeps it alive."""

    __slots__ = ("member",)

    def __init__(self, member: Beating) -> None:
        self.member: Beating | None = member


class HeartbeatSchedule:
    """Which connections to ping, at a given time."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._slots: dict[Beating, _Slot] = {}
        self._pings: collections.deque[tuple[float, _Slot]] = collections.deque()

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, member: Beating, now: float) -> None:
        slot = self._slots[member] = _Slot(member)
        self._pings.append((now + self.interval, slot))

    def remove(self, member: Beating) -> None:
        slot = self._slots.pop(member, None)
        if slot is not None:
            slot.member = None

    def next_deadline(self) -> float:
        return self._pings[0][0] if self._pings else math.inf

    def poll(self, now: float) -> list[Beating]:
        """The members to ping now (each is due again ``interval`` later)."""
        to_ping: list[Beating] = []
        pings = self._pings
        while pings and pings[0][0] <= now:
            _, slot = pings.popleft()
            member = slot.member
            if member is not None:
                to_ping.append(member)
                pings.append((now + self.interval, slot))
        return to_ping


class Heartbeats:
    """Runs a ``HeartbeatSchedule`` for the server: ``add`` on open, ``remove`` on close."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.schedule = HeartbeatSchedule(interval)
        self.timeout = timeout
        self._changed = trio.Event()

    def add(self, member: Beating) -> None:
        if not len(self.schedule):
            self._changed.set()  # the task sleeps without a deadline while nobody is here
        self.schedule.add(member, trio.current_time())

    def remove(self, member: Beating) -> None:
        self.schedule.remove(member)

    async def run(self) -> None:
        schedule = self.schedule
        while True:
            with trio.move_on_at(schedule.next_deadline()):
                await self._changed.wait()
            self._changed = trio.Event()
            for member in schedule.poll(trio.current_time()):
                member.ping()
