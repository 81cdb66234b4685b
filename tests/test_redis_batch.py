"""Group commit of publishes (``redis_batch``): the queue and its task without Redis, then one
pipeline against a real Redis."""

from __future__ import annotations

import pytest
import trio

from wsnursery import redis_store
from wsnursery.redis_batch import PublishBatcher
from wsnursery.redis_store import Stored, Unavailable

from .redis_support import (
    free_port,
    private_redis_fixture,  # noqa: F401 (fixtures)
)


class FakeStore:
    """``publish_many`` that records its batches and returns when the test says so."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = trio.Event()
        self.called = trio.Event()
        self.fail: Unavailable | None = None
        self.seq = 0

    async def publish_many(self, publishes):
        self.batches.append([data for _, data, _, _ in publishes])
        self.called.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        out = []
        for _, data, _, _ in publishes:
            self.seq += 1
            out.append(Unavailable("refused") if data == "bad" else Stored("e", self.seq, False, 0))
        return out


async def test_what_arrives_during_a_round_trip_goes_in_the_next_in_submission_order():
    store = FakeStore()
    batcher = PublishBatcher(store)  # type: ignore[arg-type]
    results: dict[str, int] = {}

    async def publish(data):
        results[data] = (await batcher.submit("c", data, None, None).wait()).position.seq

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            first = batcher.submit("c", "a", None, None)
            await store.called.wait()  # "a" is in flight, alone: a lone publish goes at once
            for data in "bcde":
                batcher.submit("c", data, None, None)  # queued behind the round trip
            store.release.set()
            assert (await first.wait()).position.seq == 1
            await publish("f")
            nursery.cancel_scope.cancel()
    assert store.batches == [["a"], ["b", "c", "d", "e"], ["f"]]
    assert results == {"f": 6}


async def test_a_failed_round_trip_fails_its_whole_batch_and_one_refusal_only_its_own():
    store = FakeStore()
    batcher = PublishBatcher(store)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            store.fail = Unavailable("redis did not answer within 5s")
            lost = [batcher.submit("c", data, None, None) for data in ("a", "b")]
            store.release.set()
            for pending in lost:
                with pytest.raises(Unavailable, match="did not answer"):
                    await pending.wait()
            store.fail = None
            good, bad = batcher.submit("c", "ok", None, None), batcher.submit("c", "bad", None, None)
            assert (await good.wait()).position.seq == 1
            with pytest.raises(Unavailable, match="refused"):
                await bad.wait()
            nursery.cancel_scope.cancel()


async def test_stopping_tells_every_waiter_including_the_batch_in_flight():
    store = FakeStore()
    batcher = PublishBatcher(store)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            in_flight = batcher.submit("c", "a", None, None)
            await store.called.wait()
            queued = batcher.submit("c", "b", None, None)
            nursery.cancel_scope.cancel()  # the hub stops while "a" is in flight
        for pending in (in_flight, queued):
            with pytest.raises(Unavailable, match="stopped"):
                await pending.wait()


async def test_one_pipeline_stores_a_batch_in_order_with_keys_and_floors(private_redis):
    # A Redis of our own: SCRIPT FLUSH is server-wide, and other runs may share the usual one.
    async with redis_store.connect(private_redis.url) as store:
        await store.client.script_flush()  # as after a Redis restart: the pipeline loads it
        calls = [("a", {"n": n}, None, None) for n in range(3)] + [
            ("b", "x", "k1", None),
            ("b", "y", "k1", None),  # a repeat in the same batch: the first's position
            ("a", {"n": 3}, None, None),
        ]
        stored = await store.publish_many(calls)
        assert [(s.seq, s.duplicate) for s in stored if isinstance(s, Stored)] == [
            (1, False),
            (2, False),
            (3, False),
            (1, False),
            (1, True),
            (4, False),
        ]
        assert [e.data for e in await store.read_after("a", 0, 10)] == [{"n": n} for n in range(4)]


async def test_a_pipeline_to_an_unreachable_redis_raises_unavailable():
    async with redis_store.connect(f"redis://127.0.0.1:{free_port()}/0", timeout=2.0) as store:
        with trio.fail_after(5), pytest.raises(Unavailable):
            await store.publish_many([("a", 1, None, None)])


async def test_a_bug_in_a_round_trip_fails_that_batch_and_the_batcher_goes_on(caplog):
    store = FakeStore()
    batcher = PublishBatcher(store)  # type: ignore[arg-type]
    store.release.set()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(batcher.run)
            store.fail = ValueError("a bug")  # type: ignore[assignment]
            with pytest.raises(Unavailable, match="could not be stored"):
                await batcher.submit("c", "a", None, None).wait()
            store.fail = None
            assert (await batcher.submit("c", "b", None, None).wait()).position.seq == 1
            nursery.cancel_scope.cancel()
    assert "storing a batch of 1 publishes failed" in caplog.text
