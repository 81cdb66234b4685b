"""A cluster on Redis: several servers (nodes) on one Redis behave as one, loss is reported.

Each test runs its nodes in this process, each a whole ``Server`` with its own ``RedisHub``,
on a key prefix of its own (cleaned up). Tests that flush, stop or start Redis use a private
``redis-server`` (see ``redis_support``), never the shared one.
"""

from __future__ import annotations

import json
import time

import pytest
import trio
import trio_websocket

from wsnursery.config import Config
from wsnursery.redis_hub import RedisHub
from wsnursery.redis_store import Entry
from wsnursery.redis_store import connect as connect_store
from wsnursery.server import Server

from .conftest import TEST_DEFAULTS
from .helpers import http_request
from .redis_support import (  # noqa: F401 (fixtures)
    cleanup,
    private_redis_fixture,
    redis_test_url_fixture,
    unique_prefix,
)
from .wsclient import connect

WAIT = 15


@pytest.fixture
async def cluster(nursery, redis_test_url):
    """``await cluster.node()`` starts a node on the test Redis (or ``cluster.url`` when set);
    ``cluster.scopes[i].cancel()`` stops node i at once."""

    class Cluster:
        def __init__(self) -> None:
            self.url = redis_test_url
            self.prefix = unique_prefix()
            self.hubs: list[RedisHub] = []
            self.ports: list[int] = []
            self.scopes: list[trio.CancelScope] = []
            self.servers: list[Server] = []

        async def node(self, **overrides) -> str:
            config = Config(**(TEST_DEFAULTS | {"engine": self.url} | overrides))
            hub = RedisHub.from_config(config, prefix=self.prefix, timeout=2.0)
            server = Server(config, hub)
            scope = trio.CancelScope()

            async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await server.run(task_status=task_status)

            ports = await nursery.start(run)
            self.hubs.append(hub)
            self.ports.append(ports[0])
            self.scopes.append(scope)
            self.servers.append(server)
            return f"ws://127.0.0.1:{ports[0]}/"

    made = Cluster()
    yield made
    if made.url == redis_test_url:
        async with connect_store(made.url, prefix=made.prefix) as store:
            await cleanup(store.client, made.prefix)


async def close_code(client) -> int:
    with trio.fail_after(WAIT), pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await client.ws.get_message()
    return closed.value.reason.code


async def test_a_publish_on_a_reaches_b_and_c_in_order_with_one_seq(cluster):
    a, b, c = [await cluster.node() for _ in range(3)]
    async with connect(a) as pa, connect(b) as pb, connect(b) as sb, connect(c) as sc:
        epoch = (await sb.subscribe("room"))["epoch"]
        assert (await sc.subscribe("room"))["epoch"] == epoch
        published = []
        for n in range(10):  # two publishers on two nodes, interleaved
            published.append(await (pa if n % 2 else pb).publish("room", {"n": n}))
        assert [p["seq"] for p in published] == list(range(1, 11))
        assert {p["epoch"] for p in published} == {epoch}
        for subscriber in (sb, sc):
            messages = await subscriber.messages(10)
            assert [(m["epoch"], m["seq"]) for m in messages] == [(epoch, s) for s in range(1, 11)]
            assert [m["data"] for m in messages] == [{"n": n} for n in range(10)]


async def test_a_client_resumes_on_another_node_with_recovered_true(cluster):
    a, b = await cluster.node(), await cluster.node()
    async with connect(a) as publisher:
        async with connect(a) as first:
            epoch = (await first.subscribe("resume"))["epoch"]
            for n in range(5):
                await publisher.publish("resume", n)
            last = (await first.messages(5))[-1]["seq"]
        for n in range(5, 8):
            await publisher.publish("resume", n)
        async with connect(b) as again:  # B never held the channel
            reply = await again.subscribe("resume", since={"epoch": epoch, "seq": last})
            assert (reply["recovered"], reply["epoch"], reply["seq"]) == (True, epoch, 8)
            assert [m["data"] for m in await again.messages(3)] == [5, 6, 7]
            # B now holds the channel: another resume there reads past its window's head.
            async with connect(b) as third:
                await publisher.publish("resume", 8)
                reply = await third.subscribe("resume", since={"epoch": epoch, "seq": 8})
                assert (reply["recovered"], reply["seq"]) == (True, 9)
                assert [m["data"] for m in await third.messages(1)] == [8]


async def test_a_repeated_key_on_another_node_gets_the_original_position(cluster):
    a, b = await cluster.node(), await cluster.node()
    async with connect(a) as pa, connect(b) as pb, connect(b) as subscriber:
        await subscriber.subscribe("keys")
        first = await pa.publish("keys", "once", key="k-1")
        again = await pb.publish("keys", "once", key="k-1")
        assert (again["epoch"], again["seq"]) == (first["epoch"], first["seq"])
        marker = await pb.publish("keys", "marker")
        assert marker["seq"] == first["seq"] + 1
        assert [m["data"] for m in await subscriber.messages(2)] == ["once", "marker"]


async def test_flushing_redis_makes_a_new_epoch_and_recovered_false(cluster, private_redis):
    cluster.url = private_redis.url
    a, b = await cluster.node(), await cluster.node()
    async with connect(a) as publisher, connect(b) as subscriber:
        old = (await subscriber.subscribe("flush"))["epoch"]
        for n in range(3):
            await publisher.publish("flush", n)
        assert [m["seq"] for m in await subscriber.messages(3)] == [1, 2, 3]
        async with connect_store(private_redis.url) as store:
            await store.client.flushall()
        reply = await publisher.publish("flush", "after the flush")
        assert reply["epoch"] != old and reply["seq"] == 1
        assert await close_code(subscriber) == 4008  # its place in the old stream is gone
    async with connect(b) as resumed:
        reply = await resumed.subscribe("flush", since={"epoch": old, "seq": 3})
        assert (reply["recovered"], reply["epoch"]) == (False, reply["epoch"])
        assert reply["epoch"] != old
        assert [m["data"] for m in await resumed.messages(1)] == ["after the flush"]


async def test_redis_stopped_then_started_unavailable_in_between_nothing_confirmed_lost(cluster, private_redis):
    cluster.url = private_redis.url
    a, b = await cluster.node(), await cluster.node()
    confirmed = []
    async with connect(a) as publisher, connect(b) as subscriber:
        epoch = (await subscriber.subscribe("outage"))["epoch"]
        confirmed.append((await publisher.publish("outage", "before"))["seq"])
        assert [m["data"] for m in await subscriber.messages(1)] == ["before"]

        private_redis.stop()
        for n in range(3):
            reply = await publisher.request(
                {"type": "publish", "id": 10 + n, "channel": "outage", "data": n, "key": f"k{n}"}
            )
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "unavailable", 10 + n)
        # The subscriber keeps its connection: it is answered, not closed.
        reply = await subscriber.request({"type": "publish", "id": 5, "channel": "outage", "data": "x"})
        assert reply["code"] == "unavailable"

        private_redis.start()  # empty: it lost everything
        with trio.fail_after(WAIT):
            while True:  # the client retries its unconfirmed publish with the same key
                reply = await publisher.request(
                    {"type": "publish", "id": 20, "channel": "outage", "data": 0, "key": "k0"}
                )
                if reply["type"] == "published":
                    break
                assert reply["code"] == "unavailable"
                await trio.sleep(0.05)  # a client's retry interval
        assert reply["epoch"] != epoch  # Redis lost the stream: a new epoch, never a silent reuse
        # B's subscriber held a place in the lost stream: closed so that it resumes.
        assert await close_code(subscriber) == 4008
    async with connect(b) as resumed:
        reply = await resumed.subscribe("outage", since={"epoch": epoch, "seq": confirmed[-1]})
        assert reply["recovered"] is False and reply["epoch"] != epoch
        assert [m["data"] for m in await resumed.messages(1)] == [0]


async def test_a_gap_in_what_the_reader_gets_closes_the_subscribers_and_is_reported(cluster):
    a, b = await cluster.node(), await cluster.node()
    async with connect(a) as publisher, connect(b) as subscriber:
        epoch = (await subscriber.subscribe("gap"))["epoch"]
        await publisher.publish("gap", "one")
        assert [m["seq"] for m in await subscriber.messages(1)] == [1]
        # What node B's reader hands over when it was away longer than Redis kept 2..4.
        hub_b = cluster.hubs[1]
        hub_b.entries("gap", [Entry(5, epoch, int(time.time() * 1000), "five", 4)])
        assert await close_code(subscriber) == 4008
        assert hub_b.resets == 1
    async with connect(b) as resumed:
        reply = await resumed.subscribe("gap", since={"epoch": epoch, "seq": 1})
        assert (reply["recovered"], reply["epoch"], reply["seq"]) == (False, epoch, 5)
        assert [(m["seq"], m["data"]) for m in await resumed.messages(1)] == [(5, "five")]


async def test_two_subscribers_of_an_empty_channel_on_one_node_share_its_window(cluster):
    a, b = await cluster.node(), await cluster.node()
    async with connect(a) as first, connect(a) as second, connect(b) as publisher:
        await first.subscribe("empty")  # the window is made, and empty
        await second.subscribe("empty")  # must join that window, not replace it
        await publisher.publish("empty", "hello")
        for subscriber in (first, second):
            assert [m["data"] for m in await subscriber.messages(1)] == ["hello"]
        assert len(cluster.hubs[0].broadcast("empty").receivers) == 2


async def test_the_server_api_publishes_into_the_cluster(cluster):
    a = await cluster.node(api_key="k" * 32)
    b = await cluster.node(api_key="k" * 32)
    port_a, port_b = (int(url.rsplit(":", 1)[1].strip("/")) for url in (a, b))
    async with connect(b) as subscriber:
        epoch = (await subscriber.subscribe("api.room"))["epoch"]

        async def post(port, body):
            payload = json.dumps(body).encode()
            head = (
                f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: apikey {'k' * 32}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close"
            )
            return await http_request(port, head, payload)

        first = await post(port_a, {"channel": "api.room", "data": {"n": 1}, "key": "api-1"})
        assert first.status == 200 and first.json() == {"channel": "api.room", "epoch": epoch, "seq": 1}
        again = await post(port_b, {"channel": "api.room", "data": {"n": 1}, "key": "api-1"})
        assert again.json() == first.json()  # the key counts on every node
        assert [m["data"] for m in await subscriber.messages(1)] == [{"n": 1}]
