"""The Redis side of the Redis engine, against a real Redis (see ``redis_support``)."""

from __future__ import annotations

import math

import pytest
import trio

from wsnursery import redis_store
from wsnursery.protocol import Position
from wsnursery.redis_store import Unavailable

from .redis_support import (
    cleanup,
    free_port,
    redis_test_url_fixture,  # noqa: F401 (fixtures)
    unique_prefix,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def open_store(redis_test_url):
    """``async with open_store(**settings) as store``: a store on its own key prefix, cleaned up."""
    url = redis_test_url
    prefix = unique_prefix()

    def opener(**settings):
        return redis_store.connect(url, prefix=prefix, **settings)

    yield opener
    async with redis_store.connect(url, prefix=prefix) as store:
        await cleanup(store.client, prefix)


async def test_seqs_are_contiguous_in_one_epoch(open_store):
    async with open_store() as store:
        stored = [await store.publish("room", {"n": n, "raw": b"\x00\xff"}) for n in range(5)]
        assert [s.seq for s in stored] == [1, 2, 3, 4, 5]
        assert len({s.epoch for s in stored}) == 1
        assert not any(s.duplicate for s in stored)
        snapshot = await store.snapshot("room", 10)
        assert (snapshot.epoch, snapshot.head, snapshot.new_epoch) == (stored[0].epoch, 5, False)
        assert [e.data for e in snapshot.entries] == [{"n": n, "raw": b"\x00\xff"} for n in range(5)]
        assert [e.seq for e in await store.read_after("room", 3, 10)] == [4, 5]
        assert [e.seq for e in await store.read_after("room", 1, 2)] == [2, 3]
        assert await store.position("room") == Position(stored[0].epoch, 5)
        assert await store.position("never") is None


async def test_two_stores_share_one_count(open_store):
    async with open_store() as a, open_store() as b:
        seqs = []
        async with trio.open_nursery() as nursery:

            async def publish(store, n):
                seqs.append((await store.publish("shared", n)).seq)

            for n in range(20):
                nursery.start_soon(publish, a if n % 2 else b, n)
        assert sorted(seqs) == list(range(1, 21))


async def test_a_repeated_key_gets_the_first_position(open_store):
    async with open_store() as a, open_store() as b:
        first = await a.publish("keys", "one", key="k-1")
        await a.publish("keys", "two")
        again = await b.publish("keys", "one again", key="k-1")
        assert (again.epoch, again.seq, again.duplicate) == (first.epoch, 1, True)
        other = await b.publish("other", "one", key="k-1")  # keys are per channel
        assert (other.seq, other.duplicate) == (1, False)
        snapshot = await a.snapshot("keys", 10)
        assert [e.data for e in snapshot.entries] == ["one", "two"]


async def test_keys_expire_after_the_dedup_window_and_past_its_size(open_store):
    clock = Clock()
    async with open_store(dedup_age=10, dedup_size=2, clock=clock) as store:
        await store.publish("c", 1, key="a")
        clock.now += 11
        assert not (await store.publish("c", 2, key="a")).duplicate  # expired: a new message
        await store.publish("c", 3, key="b")
        await store.publish("c", 4, key="c")  # a third key pushes the oldest ("a") out
        assert (await store.publish("c", 5, key="c")).duplicate
        assert not (await store.publish("c", 6, key="a")).duplicate


async def test_history_is_bounded_by_count_and_age(open_store):
    clock = Clock()
    async with open_store(history_size=3, history_age=60, clock=clock) as store:
        for n in range(5):
            await store.publish("h", n)
        assert [e.seq for e in (await store.snapshot("h", 10)).entries] == [3, 4, 5]
        assert [e.seq for e in await store.read_after("h", 0, 10)] == [3, 4, 5]
        clock.now += 61
        await store.publish("h", 5)
        snapshot = await store.snapshot("h", 10)
        assert (snapshot.head, [e.seq for e in snapshot.entries]) == (6, [6])
        ttl = await store.client.pttl(store.stream_key("h"))
        assert 0 < ttl <= 60_000


async def test_a_lost_channel_gets_a_new_epoch_announced(open_store):
    async with open_store() as store:
        before = await store.publish("lost", "a")
        await store.publish("lost", "b")
        await store.client.delete(store.keys_of("lost"))  # what a FLUSHDB does to it
        after = await store.publish("lost", "c")
        assert after.epoch != before.epoch and after.seq == 1
        announced = await store.client.xrange(store.epochs_key)
        assert [(e.field_values[b"c"], e.field_values[b"e"]) for e in announced][-2:] == [
            (b"lost", before.epoch.encode()),
            (b"lost", after.epoch.encode()),
        ]


async def test_a_redis_behind_the_floor_gets_a_new_epoch(open_store):
    async with open_store() as store:
        first = await store.publish("floor", "a")
        await store.publish("floor", "b")
        same = await store.snapshot("floor", 0, floor=Position(first.epoch, 2))
        assert (same.epoch, same.head, same.new_epoch) == (first.epoch, 2, False)
        # A node saw seq 5 of this epoch, Redis only holds 2: Redis lost data.
        behind = await store.snapshot("floor", 0, floor=Position(first.epoch, 5))
        assert behind.epoch != first.epoch and behind.head == 0 and behind.new_epoch
        # A floor in another epoch says nothing about this one.
        stored = await store.publish("floor", "c", floor=Position(first.epoch, 99))
        assert (stored.epoch, stored.seq) == (behind.epoch, 1)


async def test_unreachable_redis_raises_unavailable_quickly():
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with redis_store.connect(url, timeout=2.0) as store:
        with trio.fail_after(5):
            with pytest.raises(Unavailable) as caught:
                await store.publish("x", 1)
            assert caught.value.code == "unavailable"
            with pytest.raises(Unavailable):
                await store.snapshot("x", 10)
            with pytest.raises(Unavailable):
                await store.read_after("x", 0, 10)


def test_ms_is_at_least_one():
    assert redis_store._ms(0.0001) == 1 and redis_store._ms(math.pi) == 3141
