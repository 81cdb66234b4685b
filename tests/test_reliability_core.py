"""Unit and property tests of wsnursery.reliability (server side), one rule or bound per test.

The client's halves are tested in test_client_receiver.py and test_client_publisher.py; the
stateful test over a faulty transport lives in test_reliability_stateful.py. Hypothesis
settings: ``CI=true`` selects the ``reliability-core-ci`` profile (more examples,
``derandomize=True`` so a failure replays by rerunning); locally a failure prints an
``@reproduce_failure(...)`` line to paste above the failing test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.reliability import AckResult, AckTracker, DedupWindow

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.register_profile("reliability-core-ci", max_examples=1000, derandomize=True, database=None, deadline=None)
settings.register_profile("reliability-core-dev", max_examples=100, deadline=None)
PROFILE = settings.get_profile("reliability-core-ci" if CI else "reliability-core-dev")


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
