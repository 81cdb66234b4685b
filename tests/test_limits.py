"""Token buckets, the per-address connection counter and the Origin check (sans-I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.limits import AddressCounter, OriginPolicy, TokenBucket


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    assert not bucket.take(0.05)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert bucket.take(10.0) and bucket.take(10.0) and bucket.take(10.0) and not bucket.take(10.0)


def test_default_burst_is_one_seconds_worth() -> None:
    assert TokenBucket(rate=5).burst == 5
    assert TokenBucket(rate=0.5).burst == 1
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            TokenBucket(rate=bad)


@settings(max_examples=300)
@given(
    st.floats(0.5, 1000),
    st.integers(1, 50),
    st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200),
)
def test_bucket_never_grants_more_than_burst_plus_rate_times_time(rate: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        granted += bucket.take(now)
    assert granted <= burst + rate * now + 1e-6
    # And it is not stingy: after a full refill the whole burst is there again.
    refill = now + burst / rate + 1
    assert sum(bucket.take(refill) for _ in range(burst + 1)) == burst


def test_address_counter() -> None:
    counter = AddressCounter(limit=2)
    assert counter.acquire("a") and counter.acquire("a") and not counter.acquire("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    for _ in range(2):
        counter.release("a")
    counter.release("b")
    assert len(counter) == 0  # no entry outlives the last connection of an address
    unlimited = AddressCounter(limit=0)
    assert all(unlimited.acquire("x") for _ in range(1000))


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=100))
def test_address_counter_matches_a_model(operations: list[tuple[bool, str]]) -> None:
    counter, model = AddressCounter(limit=3), {"a": 0, "b": 0, "c": 0}
    for acquire, address in operations:
        if acquire:
            assert counter.acquire(address) is (model[address] < 3)
            model[address] = min(3, model[address] + 1)
        elif model[address]:
            counter.release(address)
            model[address] -= 1
        assert counter.count(address) == model[address]
    assert len(counter) == sum(1 for value in model.values() if value)


def test_origin_policy() -> None:
    open_policy = OriginPolicy([])
    assert open_policy.allows("https://evil.test") and open_policy.allows(None)
    policy = OriginPolicy(["https://*.example.com", "http://localhost:*", "https://app.test"])
    assert policy.allows("https://chat.example.com")
    assert policy.allows("HTTPS://Chat.Example.com")
    assert policy.allows("http://localhost:8080")
    assert policy.allows("https://app.test")
    assert policy.allows(None)  # not a browser page
    assert not policy.allows("https://example.com.evil.test")
    assert not policy.allows("https://app.test.evil")
    assert not policy.allows("null")
    assert not policy.allows("")
