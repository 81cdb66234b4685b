"""harness.nodes: server processes on one Redis, killed with SIGKILL and restarted."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from harness.nodes import NodeError, Nodes
from wsnursery import client as sdk
from wsnursery.redis_store import connect as connect_store

from ..redis_support import (
    cleanup,
    redis_test_url_fixture,  # noqa: F401 (fixtures)
    unique_prefix,
)
from ..wsclient import connect


@pytest.fixture
async def engine(redis_test_url):
    url = redis_test_url
    prefix = unique_prefix()
    yield f"{url}?prefix={prefix}"
    async with connect_store(url, prefix=prefix) as store:
        await cleanup(store.client, prefix)


async def test_a_killed_node_restarts_on_its_port_and_nothing_is_lost(engine, nursery):
    nodes = Nodes(engine, 2, {"heartbeat_interval": 5}, seed=3)
    urls = await nursery.start(nodes.run)
    assert len(set(urls)) == 2
    async with connect(urls[0]) as publisher:
        async with connect(urls[1]) as subscriber:
            epoch = (await subscriber.subscribe("kill"))["epoch"]
            await publisher.publish("kill", "before")
            assert [m["seq"] for m in await subscriber.messages(1)] == [1]
            await nodes.kill(nodes.nodes[1])
            assert not nodes.nodes[1].up and nodes.kills == 1
        for n in range(3):  # published while node 1 is down
            await publisher.publish("kill", n)
        await nodes.restart(nodes.nodes[1])
        assert nodes.nodes[1].starts == 2
        async with connect(urls[1]) as resumed:  # the same URL: the same port
            reply = await resumed.subscribe("kill", since={"epoch": epoch, "seq": 1})
            assert (reply["recovered"], reply["epoch"], reply["seq"]) == (True, epoch, 4)
            assert [m["data"] for m in await resumed.messages(3)] == [0, 1, 2]


async def test_a_node_that_cannot_start_is_reported_with_its_output(nursery):
    nodes = Nodes("memory", 1, {"workers": 2})  # refused: exits 2 with one line
    with trio.fail_after(10), pytest.raises(NodeError, match="shared engine"):
        await nodes.run()  # at once: the node exited, nobody waits out START_TIMEOUT


async def test_sdk_clients_that_fail_over_lose_nothing_when_nodes_are_killed(engine, nursery):
    """Issue 14: a node killed mid-stream loses nothing for SDK clients that fail over."""
    nodes = Nodes(engine, 3, {"heartbeat_interval": 0.5, "heartbeat_timeout": 1.0, "ack_timeout": 0.25}, seed=5)
    urls = await nursery.start(nodes.run)
    settings = {
        "heartbeat_interval": 0.25,
        "heartbeat_timeout": 0.6,
        "request_timeout": 0.5,
        "backoff_max": 0.3,
        "max_reconnects": 50,
        "seed": 5,
    }
    total = 60
    got: list[tuple[int, int]] = []
    gaps: list[object] = []
    published: list[int] = []
    twenty, done = trio.Event(), trio.Event()

    async def subscriber(task_status=trio.TASK_STATUS_IGNORED):
        async with (
            sdk.connect([urls[1], urls[2]], **settings) as client,
            client.subscribe("failover", ack=True) as messages,
        ):
            task_status.started()
            async for item in messages:
                if isinstance(item, sdk.Gap):
                    gaps.append(item)
                    continue
                got.append((item.seq, item.data))
                if len(got) == 20:
                    twenty.set()
                if len(got) == total:
                    done.set()
                    return

    await nursery.start(subscriber)
    async with sdk.connect([urls[0], urls[2]], **settings) as publisher:
        for n in range(total):
            if n == 20:
                await twenty.wait()
                await nodes.kill(nodes.nodes[1])  # the subscriber's node, mid-stream
            if n == 40:
                await nodes.kill(nodes.nodes[0])  # the publisher's node
            published.append((await publisher.publish("failover", n)).seq)
    with trio.fail_after(30):
        await done.wait()
    assert published == list(range(1, total + 1))  # one stream, one count, across nodes
    assert got == [(seq, seq - 1) for seq in range(1, total + 1)]  # nothing lost, repeated or reordered
    assert gaps == []
    assert nodes.kills == 2


async def test_the_front_skips_a_killed_node_and_a_client_resumes_through_it(engine, nursery):
    nodes = Nodes(engine, 2, seed=7)
    urls = await nursery.start(nodes.run)
    front = f"ws://127.0.0.1:{await nursery.start(nodes.balance)}/"
    async with connect(urls[1]) as publisher:
        async with connect(front) as first:  # the front's first connection goes to node 0
            epoch = (await first.subscribe("front"))["epoch"]
            await publisher.publish("front", "a")
            assert [m["data"] for m in await first.messages(1)] == ["a"]
            await nodes.kill(nodes.nodes[0])
            with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed):
                while True:
                    await first.ws.get_message()
        await publisher.publish("front", "b")
        async with connect(front) as again:  # its turn is node 1 anyway; node 0 is down too
            reply = await again.subscribe("front", since={"epoch": epoch, "seq": 1})
            assert (reply["recovered"], reply["seq"]) == (True, 2)
            assert [m["data"] for m in await again.messages(1)] == ["b"]
        async with connect(front) as third:  # node 0's turn, but it is down: node 1 answers
            reply = await third.subscribe("front", since={"epoch": epoch, "seq": 0})
            assert (reply["recovered"], reply["seq"]) == (True, 2)
