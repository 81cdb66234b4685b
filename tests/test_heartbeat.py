"""Heartbeats without a server: who is pinged when, whose pong deadline passes, who is forgotten.

The schedule (pings) and ``PongDeadline`` (the deadline a ping puts on a connection's reader
scope) are driven here with explicit times, against a model of "the first unanswered ping
decides".
"""

from __future__ import annotations

import gc
import math
import weakref

import trio
from hypothesis import given
from hypothesis import strategies as st

from wsnursery.heartbeat import HeartbeatSchedule, PongDeadline


class Member:
    """A connection as the heartbeat sees it: a pong deadline on a (never entered) cancel scope."""

    def __init__(self, timeout: float) -> None:
        self.pong = PongDeadline(trio.CancelScope(), timeout)
        self.now = 0.0

    def ping(self) -> None:
        self.pong.pinged(self.now)

    def silent_at(self, now: float) -> bool:
        return self.pong.scope.deadline <= now


def _ping(schedule: HeartbeatSchedule, now: float, *members: Member) -> list[Member]:
    for member in members:
        member.now = now
    due = schedule.poll(now)
    for member in due:
        member.ping()  # type: ignore[attr-defined]
    return due  # type: ignore[return-value]


def test_pings_every_interval_and_the_silent_one_passes_its_deadline_at_its_timeout():
    schedule = HeartbeatSchedule(interval=1.0)
    talker, silent = Member(0.5), Member(0.5)
    schedule.add(talker, 0.0)
    schedule.add(silent, 0.0)
    assert schedule.next_deadline() == 1.0
    assert _ping(schedule, 0.9, talker, silent) == []
    assert not silent.silent_at(0.9)  # no ping yet, no deadline
    assert _ping(schedule, 1.0, talker, silent) == [talker, silent]
    talker.pong.heard()  # its pong
    assert talker.pong.scope.deadline == math.inf
    assert silent.pong.scope.deadline == 1.5
    assert not silent.silent_at(1.49) and silent.silent_at(1.5)
    assert not talker.silent_at(1.5)
    schedule.remove(silent)  # the connection closed 4000 and left
    assert len(schedule) == 1
    assert _ping(schedule, 2.0, talker) == [talker]  # the silent one is not pinged again


def test_a_second_ping_keeps_the_first_unanswered_deadline():
    pong = PongDeadline(trio.CancelScope(), 5.0)
    pong.pinged(1.0)
    pong.pinged(2.0)
    assert pong.scope.deadline == 6.0
    pong.heard()
    pong.pinged(3.0)
    assert pong.scope.deadline == 8.0


def test_an_excused_connection_has_no_deadline_until_it_resumes_then_a_fresh_timeout():
    """Backpressure the server applies (a publish waiting under ``block``) is not silence."""
    now = [0.0]
    pong = PongDeadline(trio.CancelScope(), 1.0, clock=lambda: now[0])
    pong.pinged(0.0)
    pong.excuse()
    assert pong.scope.deadline == math.inf  # the pending deadline is suspended ...
    pong.pinged(5.0)
    assert pong.scope.deadline == math.inf  # ... and pings meanwhile set none
    now[0] = 7.0
    pong.resume()
    assert pong.scope.deadline == 8.0  # still unanswered: timeout from when reading resumes
    pong.heard()
    pong.excuse()
    pong.resume()
    assert pong.scope.deadline == math.inf  # nothing pending, nothing set
    pong.pinged(9.0)
    assert pong.scope.deadline == 10.0


def test_a_member_that_leaves_is_neither_pinged_nor_kept_alive():
    schedule = HeartbeatSchedule(interval=1.0)
    member = Member(0.5)
    schedule.add(member, 0.0)
    _ping(schedule, 1.0, member)
    schedule.remove(member)
    ref = weakref.ref(member)
    del member
    gc.collect()
    assert ref() is None  # queued entries do not hold a closed connection
    assert schedule.poll(10.0) == []


@given(
    interval=st.floats(0.1, 5),
    timeout=st.floats(0.1, 5),
    events=st.lists(st.tuples(st.floats(0, 2), st.booleans()), max_size=60),
)
def test_a_member_is_closed_exactly_when_a_ping_went_unanswered_for_the_timeout(interval, timeout, events):
    """Against a model: answered pings never close; the first silent ping closes at its deadline."""
    schedule = HeartbeatSchedule(interval)
    member = Member(timeout)
    schedule.add(member, 0.0)
    now = 0.0
    received = 0
    pings: list[tuple[float, int]] = []  # (deadline, received at ping)
    for step, answers in events:
        now += step
        expected_silent = any(deadline <= now and heard == received for deadline, heard in pings)
        assert member.silent_at(now) == expected_silent
        if expected_silent:
            return  # Trio cancels the reader: the connection closes 4000
        pings = [(d, h) for d, h in pings if d > now]
        if _ping(schedule, now, member):
            pings.append((now + timeout, received))
        if answers:
            received += 1
            member.pong.heard()
    assert len(schedule) == 1
