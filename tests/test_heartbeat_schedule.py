"""The sans-I/O heartbeat schedule: who is pinged when, who is given up on, who is forgotten."""

from __future__ import annotations

import gc
import weakref

from hypothesis import given
from hypothesis import strategies as st

from wsnursery.heartbeat import HeartbeatSchedule


class Member:
    def __init__(self) -> None:
        self.received = 0

    def ping(self) -> None: ...

    def heard(self) -> int:
        return self.received

    def heartbeat_timeout(self) -> None: ...


def test_pings_every_interval_and_closes_the_silent_one_at_its_timeout():
    schedule = HeartbeatSchedule(interval=1.0, timeout=0.5)
    talker, silent = Member(), Member()
    schedule.add(talker, 0.0)
    schedule.add(silent, 0.0)
    assert schedule.next_deadline() == 1.0
    assert schedule.poll(0.9) == ([], [])
    assert schedule.poll(1.0) == ([talker, silent], [])
    talker.received += 6  # its pong
    assert schedule.next_deadline() == 1.5
    assert schedule.poll(1.5) == ([], [silent])
    assert len(schedule) == 1
    assert schedule.poll(2.0) == ([talker], [])  # the silent one is not pinged again


def test_a_member_that_leaves_is_neither_pinged_nor_kept_alive():
    schedule = HeartbeatSchedule(interval=1.0, timeout=0.5)
    member = Member()
    schedule.add(member, 0.0)
    schedule.poll(1.0)
    schedule.remove(member)
    ref = weakref.ref(member)
    del member
    gc.collect()
    assert ref() is None  # queued entries do not hold a closed connection
    assert schedule.poll(10.0) == ([], [])


@given(
    interval=st.floats(0.1, 5),
    timeout=st.floats(0.1, 5),
    events=st.lists(st.tuples(st.floats(0, 2), st.booleans()), max_size=60),
)
def test_a_member_is_closed_exactly_when_a_ping_went_unanswered_for_the_timeout(interval, timeout, events):
    """Against a model: answered pings never close; the first silent ping closes at its deadline."""
    schedule = HeartbeatSchedule(interval, timeout)
    member = Member()
    schedule.add(member, 0.0)
    now = 0.0
    pings: list[tuple[float, int]] = []  # (deadline, heard at ping)
    for step, answers in events:
        now += step
        to_ping, silent = schedule.poll(now)
        expected_silent = any(deadline <= now and heard == member.heard() for deadline, heard in pings)
        assert silent == ([member] if expected_silent else [])
        if silent:
            assert schedule.poll(now + 100) == ([], [])
            return
        pings = [(d, h) for d, h in pings if d > now]
        if to_ping:
            pings.append((now + timeout, member.heard()))
        if answers:
            member.received += 1
    assert len(schedule) == 1
