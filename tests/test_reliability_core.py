"""Unit and property tests of wsnursery.reliability, one rule or bound per test.

The stateful test over a faulty transport lives in test_reliability_stateful.py. Hypothesis
settings: ``CI=true`` selects the ``reliability-core-ci`` profile (more examples,
``derandomize=True`` so a failure replays by rerunning); locally a failure prints an
``@reproduce_failure(...)`` line to paste above the failing test.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.reliability import (
    AckResult,
    AckTracker,
    ChannelReceiver,
    DedupWindow,
    Deliver,
    Gap,
    Message,
    PublishTracker,
    PublishWindowFull,
    SendAck,
    SendReplay,
)

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.register_profile(
    "reliability-core-ci", max_examples=1000, derandomize=True, database=None, deadline=None
)
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


# --------------------------------------------------------------------------- AckTracker


def test_ack_tracker_defaults():
    t = AckTracker()
    assert (t.ack_timeout, t.backoff, t.max_timeout, t.max_unacked) == (1.0, 2.0, 30.0, 1024)
    assert (t.sent, t.acked, t.unacked, t.timeout, t.retransmits) == (0, 0, 0, 1.0, 0)
    assert t.next_deadline() is None and t.due(1e9) is None


def test_cumulative_ack_advances():
    t = AckTracker()
    t.on_sent(5, now=0.0)
    assert t.on_ack(3) == AckResult(newly_acked=3)
    assert (t.acked, t.unacked) == (3, 2)
    assert t.on_ack(5) == AckResult(newly_acked=2)
    assert t.unacked == 0 and t.next_deadline() is None


def test_stale_ack_is_ignored():
    t = AckTracker()
    t.on_sent(5, now=0.0)
    t.on_ack(4)
    assert t.on_ack(2) == AckResult() and t.on_ack(4) == AckResult()
    assert t.acked == 4


def test_ack_past_highest_sent_is_bad_request_and_changes_nothing():
    t = AckTracker()
    t.on_sent(5, now=0.0)
    t.on_ack(2)
    result = t.on_ack(6)
    assert result.error_code == "bad_request" and "6" in result.error_reason
    assert (t.acked, t.sent, t.next_deadline()) == (2, 5, 1.0)


@pytest.mark.parametrize("seq", ["3", 3.0, True, None])
def test_non_integer_ack_is_bad_request(seq):
    t = AckTracker()
    t.on_sent(5, now=0.0)
    assert t.on_ack(seq).error_code == "bad_request"
    assert t.acked == 0


def test_window_full_at_max_unacked():
    t = AckTracker(max_unacked=3)
    t.on_sent(2, now=0.0)
    assert not t.window_full
    t.on_sent(3, now=0.0)
    assert t.window_full
    t.on_ack(1)
    assert not t.window_full


def test_retransmit_due_from_acked_plus_one_after_timeout():
    t = AckTracker()
    t.on_sent(3, now=10.0)
    t.on_ack(1)  # the remaining 2..3 went out at 10.0
    assert t.next_deadline() == 11.0
    assert t.due(10.99) is None
    assert t.due(11.0) == 2


def test_deadline_follows_the_oldest_unacked_send():
    t = AckTracker()
    t.on_sent(1, now=0.0)
    t.on_sent(2, now=0.5)
    assert t.next_deadline() == 1.0
    t.on_ack(1)
    assert t.next_deadline() == 1.5


def test_retransmits_back_off_up_to_max_timeout():
    t = AckTracker(ack_timeout=1.0, backoff=2.0, max_timeout=5.0)
    t.on_sent(1, now=0.0)
    now, timeouts = 0.0, []
    for _ in range(5):
        now = t.next_deadline()
        assert t.due(now) == 1
        t.on_resent(now)
        timeouts.append(t.timeout)
        assert t.next_deadline() == now + t.timeout
    assert timeouts == [2.0, 4.0, 5.0, 5.0, 5.0]
    assert t.retransmits == 5


def test_advancing_ack_resets_the_timeout():
    t = AckTracker()
    t.on_sent(3, now=0.0)
    t.on_resent(1.0)
    t.on_resent(3.0)
    assert t.timeout == 4.0
    t.on_ack(1)
    assert t.timeout == 1.0 and t.next_deadline() == 4.0  # 2..3 were last sent at 3.0
    t.on_ack(1)  # a stale ack resets nothing
    t.on_resent(4.0)
    t.on_ack(1)
    assert t.timeout == 2.0


def test_resent_with_nothing_unacked_changes_nothing():
    t = AckTracker()
    t.on_sent(2, now=0.0)
    t.on_ack(2)
    t.on_resent(5.0)
    assert (t.retransmits, t.timeout, t.next_deadline()) == (0, 1.0, None)


def test_reset_to_repositions_sent_and_acked():
    t = AckTracker()
    t.on_sent(10, now=0.0)
    t.on_ack(4)
    t.on_resent(2.0)
    t.reset_to(6)
    assert (t.sent, t.acked, t.unacked, t.timeout) == (6, 6, 0, 1.0)
    assert t.next_deadline() is None
    t.on_sent(7, now=3.0)
    assert t.due(4.0) == 7


def test_ack_for_messages_sent_before_a_reset_moves_sent_forward():
    """A replay repositions to 4, but the client already holds up to 9: its ack is valid."""
    t = AckTracker()
    t.on_sent(10, now=0.0)
    t.reset_to(4)
    t.on_sent(6, now=1.0)
    assert t.on_ack(9) == AckResult(newly_acked=5)
    assert (t.sent, t.acked, t.unacked) == (9, 9, 0)
    t.on_sent(8, now=2.0)  # a writer still behind changes nothing
    assert t.sent == 9
    assert t.on_ack(11).error_code == "bad_request"


def test_send_times_kept_are_bounded_by_max_unacked():
    t = AckTracker(max_unacked=2)
    for seq in range(1, 6):
        t.on_sent(seq, now=float(seq))
    assert len(t._inflight) == 2
    t.on_ack(1)
    # 3..5 share the time of the send of 2 (t=2.0): retransmit comes earlier, never later
    assert t.next_deadline() == 3.0


# --------------------------------------------------------------------------- DedupWindow


def test_dedup_remembers_original_position():
    w = DedupWindow()
    assert w.lookup("k1", now=0.0) is None
    w.remember("k1", "e1", 46, now=0.0)
    assert w.lookup("k1", now=1.0) == ("e1", 46)
    assert (w.max_keys, w.max_age) == (10_000, 300.0)


def test_dedup_count_bound_evicts_oldest_first():
    w = DedupWindow(max_keys=2)
    for n, key in enumerate("abc"):
        w.remember(key, "e1", n + 1, now=0.0)
        w.lookup("a", now=0.0)  # a lookup does not make a key younger
    assert [w.lookup(k, now=0.0) for k in "abc"] == [None, ("e1", 2), ("e1", 3)]
    assert len(w) == 2 and w.evicted == 1


def test_dedup_age_bound_forgets_old_keys():
    w = DedupWindow(max_age=300.0)
    w.remember("old", "e1", 1, now=0.0)
    w.remember("new", "e1", 2, now=100.0)
    assert w.lookup("old", now=299.9) == ("e1", 1)
    assert w.lookup("old", now=300.0) is None
    assert w.lookup("new", now=300.0) == ("e1", 2)
    assert len(w) == 1


@given(keys=st.lists(st.sampled_from("abcdefgh"), max_size=60), max_keys=st.integers(1, 5))
@settings(PROFILE)
def test_dedup_never_exceeds_max_keys_and_keeps_the_newest(keys, max_keys):
    w = DedupWindow(max_keys=max_keys)
    for seq, key in enumerate(keys, 1):
        w.remember(key, "e1", seq, now=0.0)
        assert len(w) <= max_keys
    newest = list(dict.fromkeys(reversed(keys)))[:max_keys]
    assert all(w.lookup(k, now=0.0) is not None for k in newest)


# --------------------------------------------------------------------------- ChannelReceiver


def test_fresh_subscribe_starts_after_the_head():
    r = ChannelReceiver("room")
    assert r.position is None
    r.on_subscribed("e7", 45, True, None)
    assert r.position == ("e7", 45)
    assert feed(r, 45, epoch="e7") == []
    assert feed(r, 46, epoch="e7") == [Deliver(Message("room", "e7", 46, "d46", 1046))]


def test_subscribe_with_since_and_no_held_position_resumes_there():
    r = ChannelReceiver("room")
    r.on_subscribed("e7", 45, True, ("e7", 41))
    assert r.position == ("e7", 41)
    assert delivered(feed(r, 42, 43, 44, 45, epoch="e7")) == [42, 43, 44, 45]


def test_repeats_are_dropped_and_counted():
    r = receiver()
    assert delivered(feed(r, 1, 2, 1, 2, 3, 3)) == [1, 2, 3]
    assert r.duplicates_dropped == 3


def test_out_of_order_frames_are_held_and_one_replay_is_asked():
    r = receiver()
    feed(r, 1)
    effects = feed(r, 3, 4, now=5.0)
    assert effects == [SendReplay(since=("e1", 1))]
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
    assert r.tick(1.0) == [SendReplay(since=("e1", 0))]
    feed(r, 1, now=1.5)  # progress, gap 2..4 remains: the wait restarts
    assert r.tick(2.4) == [] and r.next_deadline() == 2.5
    assert r.tick(2.5) == [SendReplay(since=("e1", 1))]
    assert r.replays_requested == 3


def test_pending_bound_drops_farthest_ahead_which_the_replay_brings_back():
    r = receiver(max_pending=2)
    feed(r, 4, 3, 5)
    assert r.pending == 2 and r.overflow_dropped == 1
    assert delivered(feed(r, 1, 2)) == [1, 2, 3, 4]  # 5 was dropped, not delivered
    assert r.position == ("e1", 4)
    assert delivered(feed(r, 5)) == [5]  # the replayed copy is delivered


def test_new_epoch_reports_a_gap_then_continues():
    r = receiver()
    feed(r, 1, 2)
    assert r.on_subscribed("e2", 3, False, ("e1", 2)) == []
    assert feed(r, 5, epoch="e1") == [] and r.stale_dropped == 1  # the old stream is gone
    effects = feed(r, 1, 2, epoch="e2")
    assert effects[0] == Gap("room", expected_seq=3, resumed_at_seq=1, reason="epoch_changed")
    assert delivered(effects) == [1, 2] and r.position == ("e2", 2)
    assert r.gaps_reported == 1


def test_new_empty_epoch_reports_the_gap_at_once():
    r = receiver()
    feed(r, 1)
    assert r.on_subscribed("e2", 0, False, ("e1", 1)) == [Gap("room", 2, 1, "epoch_changed")]
    assert r.position == ("e2", 0)
    assert delivered(feed(r, 1, epoch="e2")) == [1]


def test_history_exceeded_reports_a_gap_up_to_the_first_message_resent():
    r = receiver()
    feed(r, 1, 2)
    r.on_subscribed("e1", 20, False, ("e1", 2))
    effects = feed(r, 15, 16)
    assert effects[0] == Gap("room", expected_seq=3, resumed_at_seq=15, reason="history_exceeded")
    assert delivered(effects) == [15, 16]
    assert delivered(feed(r, 14)) == [] and r.duplicates_dropped == 1


def test_not_recovered_without_a_real_gap_reports_nothing():
    r = receiver()
    feed(r, 1, 2)
    r.on_subscribed("e1", 5, False, ("e1", 1))  # a late reply to an old replay
    assert feed(r, 2) == []
    assert delivered(feed(r, 3)) == [3] and r.gaps_reported == 0


def test_replay_that_cannot_close_the_gap_resumes_at_the_lowest_held_frame():
    r = receiver()
    feed(r, 1)
    assert feed(r, 5, 6) == [SendReplay(since=("e1", 1))]
    r.on_subscribed("e1", 8, False, ("e1", 1))  # the reply: 2.. are gone, resent from 7
    effects = feed(r, 7)
    assert effects[0] == Gap("room", 2, 5, "history_exceeded")
    assert delivered(effects) == [5, 6, 7]


def test_resuming_at_a_held_frame_delivers_the_held_run():
    r = receiver()
    feed(r, 1)
    feed(r, 5, 6)
    r.on_subscribed("e1", 6, False, ("e1", 1))
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
    assert r.position == ("e1", 1) and r.pending == 0 and r.next_deadline() is None
    r.on_subscribed("e1", 3, True, r.position)
    assert delivered(feed(r, 2, 3)) == [2, 3]
    assert feed(r, 5) == [SendReplay(since=("e1", 3))]  # a new gap on the new connection


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


# --------------------------------------------------------------------------- PublishTracker


class Ceiling(random.Random):
    """uniform(a, b) always picks b: the longest delay full jitter allows."""

    def uniform(self, a, b):
        return b


def test_keys_are_unique_with_a_prefix_from_the_rng():
    a = PublishTracker(rng=random.Random(7))
    b = PublishTracker(rng=random.Random(7))
    c = PublishTracker(rng=random.Random(8))
    p1, p2 = a.new_publish("room", 1, 0.0), a.new_publish("room", 2, 0.0)
    assert p1.key == f"{a.client_prefix}-1" and p2.key == f"{a.client_prefix}-2"
    assert a.client_prefix == b.client_prefix != c.client_prefix
    assert (p1.request_id, p2.request_id) == (1, 2)


def test_request_ids_come_from_the_injected_counter():
    ids = iter([40, 41])
    t = PublishTracker(rng=random.Random(1), ids=ids)
    assert t.new_publish("room", 1, 0.0).request_id == 40


def test_new_publish_is_due_at_once_then_retried_with_backoff_up_to_cap():
    t = PublishTracker(rng=Ceiling(1), base=0.1, cap=1.0)
    p = t.new_publish("room", "x", now=0.0)
    sends = []
    now = 0.0
    for _ in range(7):
        assert t.due(now) == [p]
        assert t.due(now) == []  # handed out once per due time
        sends.append(now)
        now = t.next_deadline()
    gaps = [round(b - a, 6) for a, b in zip(sends, sends[1:])]
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert t.retries == 6


@given(sends=st.integers(0, 70), seed=st.integers(0, 2**32))
@settings(PROFILE)
def test_retry_delay_is_full_jitter_within_the_ceiling(sends, seed):
    t = PublishTracker(rng=random.Random(seed), base=0.1, cap=5.0)
    p = t.new_publish("room", "x", now=0.0)
    p.sends = sends
    t.due(100.0)
    assert 0.0 <= p.due_at - 100.0 <= min(5.0, 0.1 * 2**sends)


def test_confirm_by_key_or_request_id():
    t = PublishTracker(rng=random.Random(1))
    p1, p2 = t.new_publish("room", 1, 0.0), t.new_publish("room", 2, 0.0)
    assert t.on_published(p1.key, "e1", 46) is p1 and (p1.epoch, p1.seq) == ("e1", 46)
    assert t.on_published(p2.request_id, "e1", 47) is p2
    assert t.on_published(p1.key, "e1", 46) is None  # a repeated reply
    assert len(t) == 0 and t.next_deadline() is None and t.due(10.0) == []


def test_reconnect_makes_every_unconfirmed_publish_due_with_the_same_key():
    t = PublishTracker(rng=random.Random(1))
    p1, p2 = t.new_publish("room", 1, 0.0), t.new_publish("room", 2, 0.0)
    t.due(0.0)
    t.on_published(p2.key, "e1", 1)
    assert t.due(0.001 * 0) == []
    t.on_reconnect(now=0.01)
    again = t.due(0.01)
    assert again == [p1] and again[0].key == p1.key
    assert t.retries == 1


def test_full_tracker_refuses_new_publishes_until_one_completes():
    t = PublishTracker(rng=random.Random(1), max_pending=2)
    p = t.new_publish("room", 1, 0.0)
    t.new_publish("room", 2, 0.0)
    with pytest.raises(PublishWindowFull, match="2 publishes"):
        t.new_publish("room", 3, 0.0)
    assert len(t) == 2
    t.on_published(p.request_id, "e1", 1)
    t.new_publish("room", 3, 0.0)


def test_cancel_frees_the_slot():
    t = PublishTracker(rng=random.Random(1), max_pending=1)
    p = t.new_publish("room", 1, 0.0)
    assert t.cancel(p.request_id) is p and t.cancel(p.key) is None
    t.new_publish("room", 2, 0.0)


def test_defaults():
    t = PublishTracker(rng=random.Random(1))
    assert (t.base, t.cap, t.max_pending) == (0.1, 5.0, 1024)
    r = ChannelReceiver("room")
    assert (r.max_pending, r.ack_every, r.ack_interval, r.ack) == (1024, 32, 0.05, False)
