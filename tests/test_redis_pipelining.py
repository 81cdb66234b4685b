"""A connection's publishes in flight on the Redis engine (``handlers.settle``, ``redis_batch``):
stored in one round trip or a few, in the order sent, replies in order, owed on close."""

from __future__ import annotations

import json
import struct
from urllib.parse import urlsplit

import trio

from wsnursery import handlers

from .helpers import raw_welcome, text_frame
from .redis_support import (  # noqa: F401 (fixtures)
    private_redis_fixture,
    redis_test_url_fixture,
    unique_prefix,
)
from .test_redis_cluster import cluster  # noqa: F401 (the fixture)
from .wsclient import RawClient, masked_frame

WAIT = 15


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def replies(client: RawClient, count: int) -> list[dict]:
    got = []
    with trio.fail_after(WAIT):
        while len(got) < count:
            frame = await client.read_frame()
            assert frame is not None, f"connection ended after {len(got)} replies"
            if frame[0] == 0x1:
                got.append(json.loads(frame[1]))
    return got


def publishes(first_id: int, count: int, channel: str = "pipe") -> bytes:
    return b"".join(
        masked_frame(0x1, text_frame({"type": "publish", "id": first_id + n, "channel": channel, "data": n}))
        for n in range(count)
    )


async def test_publishes_sent_in_one_write_are_stored_together_in_order(cluster):  # noqa: F811
    url = await cluster.node()
    hub = cluster.hubs[0]
    client = await RawClient.connect(port_of(url))
    await raw_welcome(client)
    before = hub.batcher.batches
    await client.stream.send_all(publishes(1, 40))
    got = await replies(client, 40)
    assert [r["type"] for r in got] == ["published"] * 40
    assert [r["id"] for r in got] == list(range(1, 41))  # replies in the order of the requests
    assert [r["seq"] for r in got] == list(range(1, 41))  # stored in the order sent
    # One round trip for the first (it goes alone), then what queued meanwhile: a few, not 40.
    assert hub.batcher.batches - before <= 5, hub.batcher.batches - before
    await client.aclose()


async def test_a_request_after_publishes_is_answered_after_them(cluster):  # noqa: F811
    url = await cluster.node()
    client = await RawClient.connect(port_of(url))
    await raw_welcome(client)
    subscribe = masked_frame(0x1, text_frame({"type": "subscribe", "id": 99, "channel": "pipe"}))
    bad = masked_frame(0x1, b"{not json")
    await client.stream.send_all(publishes(1, 5) + subscribe + bad)
    got = await replies(client, 7)
    assert [r.get("id") for r in got[:6]] == [1, 2, 3, 4, 5, 99]
    assert got[5]["type"] == "subscribed" and got[5]["seq"] == 5  # it sees the five stored
    assert got[6]["type"] == "error" and got[6]["code"] == "bad_request"
    await client.aclose()


async def test_replies_in_flight_go_out_before_the_close_frame(cluster):  # noqa: F811
    url = await cluster.node()
    client = await RawClient.connect(port_of(url))
    await raw_welcome(client)
    await client.stream.send_all(publishes(1, 20) + masked_frame(0x8, struct.pack("!H", 1000)))
    got = await replies(client, 20)
    assert [r["id"] for r in got] == list(range(1, 21))
    assert await client.read_close_code() == 1000
    await client.aclose()


async def test_in_flight_is_bounded_per_connection(cluster, monkeypatch):  # noqa: F811
    monkeypatch.setattr(handlers, "MAX_PUBLISHES_IN_FLIGHT", 4)
    url = await cluster.node()
    client = await RawClient.connect(port_of(url))
    await raw_welcome(client)
    await client.stream.send_all(publishes(1, 30))
    got = await replies(client, 30)
    assert [r["seq"] for r in got] == list(range(1, 31))
    await client.aclose()


async def test_redis_gone_mid_pipeline_answers_unavailable_for_each(nursery, private_redis):
    from wsnursery.config import Config
    from wsnursery.redis_hub import RedisHub
    from wsnursery.server import Server

    from .conftest import TEST_DEFAULTS

    config = Config(**(TEST_DEFAULTS | {"engine": private_redis.url}))
    server = Server(config, RedisHub.from_config(config, prefix=unique_prefix(), timeout=1.0))
    port = (await nursery.start(server.run))[0]
    client = await RawClient.connect(port)
    await raw_welcome(client)
    await client.stream.send_all(publishes(1, 3))
    assert [r["seq"] for r in await replies(client, 3)] == [1, 2, 3]
    private_redis.stop()
    await client.stream.send_all(publishes(4, 10))
    got = await replies(client, 10)
    assert [(r["type"], r["code"], r["id"]) for r in got] == [("error", "unavailable", n) for n in range(4, 14)]
    await client.aclose()
