"""One task that wakes connections at their ack-retransmit deadlines.

A subscription with acks must re-send what is not acknowledged in time. Rather than a
writer task per connection sleeping until its own deadline (and being woken whenever a
send or an ack moves that deadline earlier), every connection (its ``retransmit.Retransmits``)
arms its earliest deadline here: a heap ordered by time, one task sleeping until the first. Arming costs a heap push,
and only when the deadline moves earlier; a later deadline is found when the earlier one
fires (the connection then re-arms).

Bounds: one armed deadline per connection; heap entries left behind by a re-arm or a
closed connection hold a slot, not the connection, and leave when their time comes (at most
``ack_max_timeout`` later), or sooner: once they are more than half the heap, the heap is
rebuilt without them (token expiries, also timed here, may be hours away).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio


class Timed(Protocol):
    def deadline_reached(self) -> None:
        """The armed deadline has passed (the connection re-arms if it has another)."""


class _Slot:
    __slots__ = ("deadline", "member")

    def __init__(self, member: Timed, deadline: float) -> None:
        self.member: Timed | None = member
        self.deadline = deadline


class DeadlineTimer:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Slot]] = []
        self._armed: dict[Timed, _Slot] = {}
        self._order = itertools.count()
        self._changed = trio.Event()
        self._stale = 0  # heap entries whose member was disarmed or re-armed

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, member: Timed, deadline: float) -> None:
        """Call ``member.deadline_reached()`` at ``deadline`` (or at its already armed earlier one)."""
        slot = self._armed.get(member)
        if slot is not None:
            if slot.deadline <= deadline:
                return
            slot.member = None
            self._left_behind()
        slot = self._armed[member] = _Slot(member, deadline)
        first = not self._heap or deadline < self._heap[0][0]
        heapq.heappush(self._heap, (deadline, next(self._order), slot))
        if first:
            self._changed.set()

    def disarm(self, member: Timed) -> None:
        slot = self._armed.pop(member, None)
        if slot is not None:
            slot.member = None
            self._left_behind()

    def _left_behind(self) -> None:
        """One more heap entry without a member: past half the heap, drop them all (amortised O(1))."""
        self._stale += 1
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].member is not None]
            heapq.heapify(self._heap)
            self._stale = 0

    def next_deadline(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def pop_due(self, now: float) -> list[Timed]:
        due: list[Timed] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, slot = heapq.heappop(heap)
            member = slot.member
            if member is not None:
                del self._armed[member]
                due.append(member)
            elif self._stale:
                self._stale -= 1
        return due

    async def run(self) -> None:
        while True:
            with trio.move_on_at(self.next_deadline()):
                await self._changed.wait()
            self._changed = trio.Event()
            for member in self.pop_due(trio.current_time()):
                member.deadline_reached()
