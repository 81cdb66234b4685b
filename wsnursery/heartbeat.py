"""Heartbeats for every connection of a server, from one task.

Every ``interval`` each connection is sent a ping; a connection from which nothing at all
has arrived (no pong, no frame) ``timeout`` seconds after its ping is closed with 4000.
One task and two FIFO queues serve any number of connections: every connection has the
same interval, so the next ping due is always the oldest one queued. ``HeartbeatSchedule``
is that bookkeeping, with no I/O and no clock of its own; ``Heartbeats`` is its Trio shell.

Bounds: the ping queue holds one entry per connection, the answer queue one per ping in
flight (``timeout / interval + 1`` per connection at most); a connection that leaves is
dropped from both when its entries come up.
"""

from __future__ import annotations

import collections
import math
from typing import Protocol

import trio


class Beating(Protocol):
    def ping(self) -> None:
        """Queue a ping frame."""

    def heard(self) -> int:
        """A count that grows whenever anything arrives from the peer (bytes received)."""

    def heartbeat_timeout(self) -> None:
        """Nothing arrived in time: close with 4000."""


class _Slot:
    """A member's place in the queues; emptied when it leaves, so the queues never keep it alive."""

    __slots__ = ("member",)

    def __init__(self, member: Beating) -> None:
        self.member: Beating | None = member


class HeartbeatSchedule:
    """Which connections to ping and which to give up on, at a given time."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._slots: dict[Beating, _Slot] = {}
        self._pings: collections.deque[tuple[float, _Slot]] = collections.deque()
        self._answers: collections.deque[tuple[float, _Slot, int]] = collections.deque()

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
        deadline = math.inf
        if self._pings:
            deadline = self._pings[0][0]
        if self._answers:
            deadline = min(deadline, self._answers[0][0])
        return deadline

    def poll(self, now: float) -> tuple[list[Beating], list[Beating]]:
        """(members to ping now, members that stayed silent past their timeout)."""
        to_ping: list[Beating] = []
        silent: list[Beating] = []
        answers = self._answers
        while answers and answers[0][0] <= now:
            _, slot, heard = answers.popleft()
            member = slot.member
            if member is not None and member.heard() == heard:
                self.remove(member)
                silent.append(member)
        pings = self._pings
        while pings and pings[0][0] <= now:
            _, slot = pings.popleft()
            member = slot.member
            if member is not None:
                to_ping.append(member)
                pings.append((now + self.interval, slot))
                answers.append((now + self.timeout, slot, member.heard()))
        return to_ping, silent


class Heartbeats:
    """Runs a ``HeartbeatSchedule`` for the server: ``add`` on open, ``remove`` on close."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.schedule = HeartbeatSchedule(interval, timeout)
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
            to_ping, silent = schedule.poll(trio.current_time())
            for member in to_ping:
                member.ping()
            for member in silent:
                member.heartbeat_timeout()
