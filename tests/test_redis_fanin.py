"""The node's fan-in reader against a real Redis: one blocking read for many channels."""

from __future__ import annotations

import pytest
import trio

from wsnursery import redis_store
from wsnursery.redis_fanin import FanIn

from .helpers import wait_until
from .redis_support import (  # noqa: F401 (fixtures)
    cleanup,
    private_redis_fixture,
    redis_test_url_fixture,
    unique_prefix,
)

WAIT = 10  # seconds before a wait fails the test (loudly)


class Sink:
    """Records what the reader hands over, and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[tuple[str, int]]] = {}
        self.data: dict[str, list[object]] = {}
        self.resets: list[tuple[str, str]] = []
        self._changed = trio.Event()

    def entries(self, channel, entries):
        self.seqs.setdefault(channel, []).extend((e.epoch, e.seq) for e in entries)
        self.data.setdefault(channel, []).extend(e.data for e in entries)
        self._changed.set()

    def reset(self, channel, epoch):
        self.resets.append((channel, epoch))
        self._changed.set()

    async def until(self, condition) -> None:
        with trio.fail_after(WAIT):
            while not condition():
                self._changed = trio.Event()
                await self._changed.wait()


@pytest.fixture
async def stores(redis_test_url):
    url = redis_test_url
    prefix = unique_prefix()
    async with redis_store.connect(url, prefix=prefix) as reader, redis_store.connect(url, prefix=prefix) as writer:
        yield reader, writer
        await cleanup(writer.client, prefix)


async def test_one_blocking_read_serves_every_channel(stores, nursery):
    reader, writer = stores
    sink = Sink()
    # A long block: only the wake stream can make a read return early when the set changes.
    fanin = FanIn(reader, sink, block=60)
    for channel in ("a", "b", "c"):
        fanin.watch(channel, (await reader.snapshot(channel, 0)).epoch, 0)
    for n in range(30):
        await writer.publish("abc"[n % 3], n)
    await nursery.start(fanin.run)
    await sink.until(lambda: sum(len(v) for v in sink.data.values()) == 30)
    for i, channel in enumerate("abc"):
        assert sink.data[channel] == list(range(i, 30, 3))
        assert [seq for _, seq in sink.seqs[channel]] == list(range(1, 11))
    assert fanin.reads <= 2  # one read took all three channels' backlog; the next one blocks

    # A channel watched while the read is blocked is read at once, from its position.
    await writer.publish("d", "before")
    snapshot = await reader.snapshot("d", 0)
    fanin.watch("d", snapshot.epoch, snapshot.head)
    await writer.publish("d", "after")
    await sink.until(lambda: "d" in sink.data)
    assert sink.data["d"] == ["after"] and sink.seqs["d"] == [(snapshot.epoch, 2)]

    fanin.unwatch("a")
    await writer.publish("a", "unwatched")
    await writer.publish("b", "watched")
    await sink.until(lambda: sink.data["b"][-1] == "watched")
    assert sink.data["a"][-1] == 27


async def test_an_idle_read_is_not_an_outage(redis_test_url):
    url = redis_test_url
    prefix = unique_prefix()
    async with redis_store.connect(url, prefix=prefix, timeout=0.3) as store:
        sink = Sink()
        # Reads return empty after ``block``, longer than the store's timeout for commands.
        fanin = FanIn(store, sink, block=0.6)
        fanin.watch("idle", "e", 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(fanin.run)
            await wait_until(lambda: fanin.reads >= 4, timeout=WAIT, what="four idle reads")
            assert fanin.available
            nursery.cancel_scope.cancel()
    async with redis_store.connect(url, prefix=prefix) as store:
        await cleanup(store.client, prefix)


async def test_a_lost_stream_resets_to_the_new_epoch(stores, nursery):
    reader, writer = stores
    sink = Sink()
    fanin = FanIn(reader, sink, block=60)
    first = await writer.publish("gone", "old")
    fanin.watch("gone", first.epoch, 1)
    await nursery.start(fanin.run)
    await writer.client.delete(writer.keys_of("gone"))  # Redis lost the channel
    new = [await writer.publish("gone", f"new{n}") for n in range(3)]
    await sink.until(lambda: len(sink.data.get("gone", [])) == 3)
    assert sink.resets == [("gone", new[0].epoch)]
    assert sink.seqs["gone"] == [(new[0].epoch, 1), (new[0].epoch, 2), (new[0].epoch, 3)]
    assert fanin.watching("gone").epoch == new[0].epoch


async def test_the_reader_survives_redis_going_away_and_sees_the_lost_data(nursery, private_redis):
    private = private_redis
    sink = Sink()
    async with (
        redis_store.connect(private.url, timeout=2) as reader,
        redis_store.connect(private.url, timeout=2) as writer,
    ):
        fanin = FanIn(reader, sink, block=60, backoff_min=0.02, backoff_max=0.2)
        first = await writer.publish("x", "one")
        fanin.watch("x", first.epoch, 0)
        await nursery.start(fanin.run)
        await sink.until(lambda: sink.data.get("x") == ["one"])

        private.stop()
        with pytest.raises(redis_store.Unavailable):
            await writer.publish("x", "not stored")
        await wait_until(lambda: not fanin.available, timeout=WAIT, what="the reader to see the outage")
        private.start()  # empty: no persistence
        # Without any publish, the reader's check after the outage finds the loss.
        await sink.until(lambda: sink.resets)
        assert sink.resets[0][0] == "x" and sink.resets[0][1] != first.epoch
        assert fanin.available
        stored = await writer.publish("x", "two")
        assert stored.epoch == sink.resets[0][1] and stored.seq == 1
        await sink.until(lambda: sink.data["x"] == ["one", "two"])


async def test_a_dropped_connection_resumes_from_the_last_seq(nursery, private_redis):
    private = private_redis
    sink = Sink()
    async with (
        redis_store.connect(private.url, timeout=2) as reader,
        redis_store.connect(private.url, timeout=2) as writer,
    ):
        fanin = FanIn(reader, sink, block=60, backoff_min=0.02, backoff_max=0.2)
        epoch = (await writer.snapshot("y", 0)).epoch
        fanin.watch("y", epoch, 0)
        await nursery.start(fanin.run)
        for n in range(3):
            await writer.publish("y", n)
        await sink.until(lambda: len(sink.data.get("y", [])) == 3)
        await writer.client.client_kill(type_=_normal(), skipme=True)  # every other client
        for n in range(3, 6):
            await writer.publish("y", n)
        await sink.until(lambda: len(sink.data["y"]) == 6)
        assert sink.data["y"] == list(range(6))
        assert [seq for _, seq in sink.seqs["y"]] == list(range(1, 7))
        assert sink.resets == []


def _normal():
    from coredis.tokens import PureToken

    return PureToken.NORMAL
