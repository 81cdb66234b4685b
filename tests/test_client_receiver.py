"""Unit and property tests of wsnursery.client.receiver.ChannelReceiver, one rule per test.

Hypothesis settings as in test_reliability_core.py (``CI=true``: more examples, derandomized).
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.client.receiver import (
    ChannelReceiver,
    Deliver,
    Gap,
    Message,
    SendAck,
    SendReplay,
)
from wsnursery.protocol import Position

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.register_profile("reliability-core-ci", max_examples=1000, derandomize=True, database=None, deadline=None)
settings.register_profile("reliability-core-dev", max_examples=100, deadline=None)
PROFILE = settings.get_profile("reliability-core-ci" if CI else "reliability-core-dev")


def delivered(effects) -> list[int]:
    return [e.message.seq for e in effects if isinstance(e, Deliver)]


def receiver(**options) -> ChannelReceiver:
    """A receiver subscribed fresh to stream e1 at head 0."""
    r = ChannelReceiver("room", **options)
    assert r.on_subscribed("e1", 0, True, None) == []
    return r


def feed(r: ChannelReceiver, *seqs: int, epoch: str = "e1", now: float = 0.0) -> list:
    effects = []
    for seq in seqs:
        effects += r.on_message(epoch, seq, f"d{seq}", 1000 + seq, now)
    return effects


# --------------------------------------------------------------------------- ChannelReceiver


def test_fresh_subscribe_starts_after_the_head():
    r = ChannelReceiver("room")
    assert r.position is None
    r.on_subscribed("e7", 45, True, None)
    assert r.position == Position("e7", 45)
    assert feed(r, 45, epoch="e7") == []
    assert feed(r, 46, epoch="e7") == [Deliver(Message("room", "e7", 46, "d46", 1046))]


def test_subscribe_with_since_and_no_held_position_resumes_there():
    r = ChannelReceiver("room")
    r.on_subscribed("e7", 45, True, Position("e7", 41))
    assert r.position == Position("e7", 41)
    assert delivered(feed(r, 42, 43, 44, 45, epoch="e7")) == [42, 43, 44, 45]


def test_repeats_are_dropped_and_counted():
    r = receiver()
    assert delivered(feed(r, 1, 2, 1, 2, 3, 3)) == [1, 2, 3]
    assert r.duplicates_dropped == 3


def test_out_of_order_frames_are_held_and_one_replay_is_asked():
    r = receiver()
    feed(r, 1)
    effects = feed(r, 3, 4, now=5.0)
    assert effects == [SendReplay(since=Position("e1", 1))]
    assert r.pending == 2
    assert delivered(feed(r, 2)) == [2, 3, 4]
    assert r.pending == 0 and r.next_deadline() is None and r.replays_requested == 1


def test_a_held_frame_arriving_again_is_a_repeat():
    r = receiver()
    feed(r, 2, 2)
    assert r.duplicates_dropped == 1 and r.pending == 1


def test_replay_is_asked_again_only_after_replay_timeout_without_progress():
    r = receiver(replay_timeout=1.0)
    feed(r, 5, now=0.0)
    assert feed(r, 6, now=0.5) == []  # same gap: no second request
    assert r.next_deadline() == 1.0
    assert r.tick(0.99) == []
    assert r.tick(1.0) == [SendReplay(since=Position("e1", 0))]
    feed(r, 1, now=1.5)  # progress, gap 2..4 remains: the wait restarts
    assert r.tick(2.4) == [] and r.next_deadline() == 2.5
    assert r.tick(2.5) == [SendReplay(since=Position("e1", 1))]
    assert r.replays_requested == 3


def test_pending_bound_drops_farthest_ahead_which_the_replay_brings_back():
    r = receiver(max_pending=2)
    feed(r, 4, 3, 5)
    assert r.pending == 2 and r.overflow_dropped == 1
    assert delivered(feed(r, 1, 2)) == [1, 2, 3, 4]  # 5 was dropped, not delivered
    assert r.position == Position("e1", 4)
    assert delivered(feed(r, 5)) == [5]  # the replayed copy is delivered


def test_new_epoch_reports_a_gap_then_continues():
    r = receiver()
    feed(r, 1, 2)
    assert r.on_subscribed("e2", 3, False, Position("e1", 2)) == []
    assert feed(r, 5, epoch="e1") == [] and r.stale_dropped == 1  # the old stream is gone
    effects = feed(r, 1, 2, epoch="e2")
    assert effects[0] == Gap("room", expected_seq=3, resumed_at_seq=1, reason="epoch_changed")
    assert delivered(effects) == [1, 2] and r.position == Position("e2", 2)
    assert r.gaps_reported == 1


def test_new_empty_epoch_reports_the_gap_at_once():
    r = receiver()
    feed(r, 1)
    assert r.on_subscribed("e2", 0, False, Position("e1", 1)) == [Gap("room", 2, 1, "epoch_changed")]
    assert r.position == Position("e2", 0)
    assert delivered(feed(r, 1, epoch="e2")) == [1]


def test_history_exceeded_reports_a_gap_up_to_the_first_message_resent():
    r = receiver()
    feed(r, 1, 2)
    r.on_subscribed("e1", 20, False, Position("e1", 2))
    effects = feed(r, 15, 16)
    assert effects[0] == Gap("room", expected_seq=3, resumed_at_seq=15, reason="history_exceeded")
    assert delivered(effects) == [15, 16]
    assert delivered(feed(r, 14)) == [] and r.duplicates_dropped == 1


def test_not_recovered_without_a_real_gap_reports_nothing():
    r = receiver()
    feed(r, 1, 2)
    r.on_subscribed("e1", 5, False, Position("e1", 1))  # a late reply to an old replay
    assert feed(r, 2) == []
    assert delivered(feed(r, 3)) == [3] and r.gaps_reported == 0


def test_replay_that_cannot_close_the_gap_resumes_at_the_lowest_held_frame():
    r = receiver()
    feed(r, 1)
    assert feed(r, 5, 6) == [SendReplay(since=Position("e1", 1))]
    r.on_subscribed("e1", 8, False, Position("e1", 1))  # the reply: 2.. are gone, resent from 7
    effects = feed(r, 7)
    assert effects[0] == Gap("room", 2, 5, "history_exceeded")
    assert delivered(effects) == [5, 6, 7]


def test_resuming_at_a_held_frame_delivers_the_held_run():
    r = receiver()
    feed(r, 1)
    feed(r, 5, 6)
    r.on_subscribed("e1", 6, False, Position("e1", 1))
    effects = feed(r, 5)  # the resent copy of a frame already held
    assert effects == [Gap("room", 2, 5, "history_exceeded"), Deliver(_m(5)), Deliver(_m(6))]
    assert r.pending == 0


def test_acks_batched_every_ack_every_deliveries():
    r = receiver(ack=True, ack_every=3)
    assert feed(r, 1, 2) == [Deliver(m) for m in [_m(1), _m(2)]]
    assert feed(r, 3)[-1] == SendAck(3)
    assert r.next_deadline() is None
    assert SendAck(5) not in feed(r, 4, 5)


def _m(seq: int) -> Message:
    return Message("room", "e1", seq, f"d{seq}", 1000 + seq)


def test_ack_sent_ack_interval_after_the_first_unacked_delivery():
    r = receiver(ack=True, ack_interval=0.05)
    feed(r, 1, now=1.0)
    feed(r, 2, now=1.03)
    assert r.next_deadline() == 1.05
    assert r.tick(1.04) == []
    assert r.tick(1.05) == [SendAck(2)]
    assert r.next_deadline() is None and r.tick(5.0) == []


def test_a_repeat_is_acked_again():
    """A repeat means the server did not get the ack: ack again, once per interval."""
    r = receiver(ack=True)
    feed(r, 1, 2)
    r.tick(1.0)
    feed(r, 1, 2, now=2.0)
    assert r.tick(2.05) == [SendAck(2)]


def test_no_acks_without_the_ack_option():
    r = receiver()
    feed(r, *range(1, 100))
    assert r.next_deadline() is None and r.tick(100.0) == []


def test_reconnect_keeps_the_position_and_forgets_the_connection():
    r = receiver(ack=True)
    feed(r, 1, 3)
    r.on_reconnect()
    assert r.position == Position("e1", 1) and r.pending == 0 and r.next_deadline() is None
    r.on_subscribed("e1", 3, True, r.position)
    assert delivered(feed(r, 2, 3)) == [2, 3]
    assert feed(r, 5) == [SendReplay(since=Position("e1", 3))]  # a new gap on the new connection


@given(
    arrivals=st.lists(st.integers(1, 12), max_size=60),
    max_pending=st.integers(1, 12),
)
@settings(PROFILE)
def test_receiver_delivers_in_order_once_whatever_arrives(arrivals, max_pending):
    """Any arrival order with repeats: deliveries are 1, 2, 3, ... each once. When every seq
    then arrives in order (a replay), all are delivered."""
    r = receiver(max_pending=max_pending)
    got = delivered(feed(r, *arrivals))
    assert got == list(range(1, len(got) + 1))
    got += delivered(feed(r, *range(1, 13)))
    assert got == list(range(1, 13))
    assert r.pending <= max_pending
