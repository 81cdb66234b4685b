"""Unit and property tests of wsnursery.client.publisher.PublishTracker, one rule per test."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.client.publisher import PublishTracker, PublishWindowFull
from wsnursery.client.receiver import ChannelReceiver

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.register_profile("reliability-core-ci", max_examples=1000, derandomize=True, database=None, deadline=None)
settings.register_profile("reliability-core-dev", max_examples=100, deadline=None)
PROFILE = settings.get_profile("reliability-core-ci" if CI else "reliability-core-dev")


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
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sends)]
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
