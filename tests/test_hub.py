"""The in-memory hub through the ``Hub`` protocol, without a server: what a second engine must do too."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from wsnursery.broadcast import Cursor, Policy
from wsnursery.hub import Hub, MemoryHub
from wsnursery.protocol import Position, ProtocolError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_publish_attach_recover_position_and_detach():
    clock = Clock()
    hub: Hub = MemoryHub(history_size=4, history_age=10.0, clock=clock)
    assert await hub.position("a") is None and hub.broadcast("a") is None
    first = await hub.publish("a", {"n": 1}, None, 10)
    assert (first.position.seq, first.duplicate) == (1, False)
    broadcast = hub.broadcast("a")
    assert broadcast is not None and broadcast.bytes == 10
    [message] = broadcast.after(0, 10)
    assert (message.channel, message.seq, message.data, message.size) == ("a", 1, {"n": 1}, 10)
    cursor = Cursor(limit=4)
    assert await hub.attach("a", cursor) is broadcast and cursor in broadcast.receivers
    assert await hub.position("a") == Position(broadcast.epoch, 1)
    assert await hub.recover("a", Position(broadcast.epoch, 0))
    assert not await hub.recover("a", Position("other-epoch", 0))
    for n in range(2, 7):
        await hub.publish("a", n, None, 1)
    assert not await hub.recover("a", Position(broadcast.epoch, 1))  # 2 was dropped (capacity 4)
    assert await hub.recover("a", Position(broadcast.epoch, 2))
    clock.now = 100.0
    await hub.publish("a", "late", None, 1)  # expiry runs on publish: only the new one is held
    assert (broadcast.oldest, broadcast.head) == (7, 7)
    hub.detach("a", cursor)
    hub.detach("a", cursor)  # twice is harmless
    assert not broadcast.receivers and hub.channel_count == 1
    assert not await hub.recover("nowhere", Position(broadcast.epoch, 0))


async def test_a_repeated_key_returns_the_first_position():
    hub = MemoryHub()
    one = await hub.publish("a", 1, "k", 1)
    again = await hub.publish("a", 2, "k", 1)
    assert again.position == one.position and again.duplicate
    assert hub.broadcast("a").head == 1  # type: ignore[union-attr]


async def test_channels_at_the_limit_evict_an_idle_one_or_are_refused():
    hub = MemoryHub(max_channels=2)
    holder = Cursor(limit=1)
    await hub.attach("held", holder)
    await hub.publish("idle", 1, None, 1)
    await hub.publish("new", 1, None, 1)  # evicts "idle", the one without receivers
    assert hub.broadcast("idle") is None and hub.channel_count == 2
    await hub.attach("new", Cursor(limit=1))
    with pytest.raises(ProtocolError) as refused:
        await hub.publish("third", 1, None, 1)
    assert refused.value.code == "too_many_channels"


async def test_policy_block_waits_for_room_and_answers_a_key_repeated_meanwhile_as_a_duplicate():
    hub = MemoryHub(block=True)
    slow = Cursor(limit=1)
    broadcast = slow.broadcast = await hub.attach("a", slow)  # the owner keeps what attach hands out
    assert broadcast.policy is Policy.WAIT
    await hub.publish("a", 1, None, 1)
    assert slow.full
    results = []

    async def publish(data: int) -> None:
        results.append(await hub.publish("a", data, "same-key", 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish, 2)
        nursery.start_soon(publish, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert results == [] and broadcast.head == 1  # both wait
        hub.detach("a", slow)  # the full receiver leaves: room
    assert [r.duplicate for r in results] == [False, True]
    assert results[0].position == results[1].position and broadcast.head == 2
