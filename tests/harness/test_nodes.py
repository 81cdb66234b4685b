"""harness.nodes: server processes on one Redis, killed with SIGKILL and restarted."""

from __future__ import annotations

import pytest
import trio

from harness.nodes import NodeError, Nodes
from wsnursery.redis_store import connect as connect_store

from ..redis_support import cleanup, redis_url, unique_prefix
from ..wsclient import connect


@pytest.fixture
async def engine():
    url = redis_url()
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
