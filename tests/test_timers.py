"""The server's deadline timer (sans-I/O part): earliest deadline wins, stale entries are dropped."""

from __future__ import annotations

import gc
import weakref

from wsnursery.timers import DeadlineTimer


class Member:
    def deadline_reached(self) -> None: ...


def test_a_member_fires_once_at_its_earliest_armed_deadline():
    timer = DeadlineTimer()
    a, b = Member(), Member()
    timer.arm(a, 5.0)
    timer.arm(a, 3.0)  # earlier: replaces
    timer.arm(a, 4.0)  # later: the armed 3.0 stands
    timer.arm(b, 3.5)
    assert timer.next_deadline() == 3.0
    assert timer.pop_due(2.9) == []
    assert timer.pop_due(3.0) == [a]
    assert timer.pop_due(10.0) == [b]  # a's replaced 5.0 entry does not fire again
    assert len(timer) == 0


def test_a_disarmed_member_neither_fires_nor_is_kept_alive():
    timer = DeadlineTimer()
    member = Member()
    timer.arm(member, 1.0)
    timer.disarm(member)
    ref = weakref.ref(member)
    del member
    gc.collect()
    assert ref() is None
    assert timer.pop_due(2.0) == []


def test_entries_left_behind_are_dropped_long_before_their_time():
    """Token expiries may be hours away: disarmed entries must not pile up until then."""
    timer = DeadlineTimer()
    keep = Member()
    timer.arm(keep, 10_000.0)
    for _ in range(10_000):
        member = Member()
        timer.arm(member, 3_600.0)
        timer.disarm(member)
    assert len(timer._heap) <= 2 * 64 + 2  # rebuilt whenever stale entries pass half the heap
    assert len(timer) == 1
    assert timer.pop_due(3_600.0) == []
    assert timer.pop_due(10_000.0) == [keep]
