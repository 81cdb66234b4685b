"""Pub/sub round trips over a real server: encodings, resume with ``since``, unsubscribe, dedup."""

from __future__ import annotations

import pytest
import trio

from wsnursery import codec
from wsnursery.codec import Encoding

from .helpers import metric
from .wsclient import bytes_form, connect

ENCODINGS = [
    pytest.param(Encoding.JSON, True, id="json"),
    pytest.param(Encoding.CBOR, True, id="cbor"),
    pytest.param(Encoding.JSON, False, id="no-subprotocol"),
]

pytestmark = pytest.mark.usefixtures("server_errors")


@pytest.mark.parametrize("encoding, offer", ENCODINGS)
async def test_round_trip(server, encoding, offer):
    async with connect(server.url, encoding, offer=offer) as sub, connect(server.url, encoding, offer=offer) as pub:
        assert sub.ws.subprotocol == (encoding.subprotocol if offer else None)
        welcome = sub.welcome
        assert welcome["protocol"] == 1 and welcome["server"].startswith("wsnursery/")
        assert welcome["heartbeat"] == server.server.config.heartbeat_interval
        assert welcome["max_message_size"] == server.server.config.max_message_size

        subscribed = await sub.subscribe("chat.room1")
        assert subscribed == {
            "type": "subscribed",
            "id": 1,
            "channel": "chat.room1",
            "epoch": subscribed["epoch"],
            "seq": 0,
            "recovered": True,
        }
        data = {"text": "hé \U0001f600\u200b", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
        published = await pub.publish("chat.room1", data)
        assert published == {
            "type": "published",
            "id": 2,
            "channel": "chat.room1",
            "epoch": subscribed["epoch"],
            "seq": 1,
        }
        [message] = await sub.messages(1)
        assert message["channel"] == "chat.room1"
        assert (message["epoch"], message["seq"], message["data"]) == (subscribed["epoch"], 1, data)
        assert isinstance(message["ts"], int) and message["ts"] > 1_600_000_000_000


async def test_many_messages_arrive_in_order(server):
    async with connect(server.url) as sub, connect(server.url, Encoding.CBOR) as pub:
        await sub.subscribe("orders")
        for i in range(50):
            await pub.send({"type": "publish", "id": i, "channel": "orders", "data": i})
        seqs = [(m["seq"], m["data"]) for m in await sub.messages(50)]
        assert seqs == [(i + 1, i) for i in range(50)]


async def test_cbor_bytes_reach_json_subscriber_in_the_bytes_form(server):
    blob = bytes(range(256))
    async with (
        connect(server.url, Encoding.JSON) as json_sub,
        connect(server.url, Encoding.CBOR) as cbor_sub,
        connect(server.url, Encoding.CBOR) as pub,
    ):
        await json_sub.subscribe("files")
        await cbor_sub.subscribe("files")
        await pub.publish("files", {"name": "x.bin", "blob": blob, "parts": [b"", b"\x00"]})
        [as_json] = await json_sub.messages(1)
        [as_cbor] = await cbor_sub.messages(1)
        assert as_json["data"] == {
            "name": "x.bin",
            "blob": bytes_form(blob),
            "parts": [bytes_form(b""), bytes_form(b"\x00")],
        }
        assert codec.bytes_from_json(as_json["data"]) == {"name": "x.bin", "blob": blob, "parts": [b"", b"\x00"]}
        assert as_cbor["data"] == {"name": "x.bin", "blob": blob, "parts": [b"", b"\x00"]}
        assert as_json["seq"] == as_cbor["seq"] == 1


async def test_json_publish_reaches_cbor_subscriber(server):
    async with connect(server.url, Encoding.CBOR) as sub, connect(server.url) as pub:
        await sub.subscribe("mixed")
        await pub.publish("mixed", {"a": [1.5, -2, "\u200d"], "b": None})
        [message] = await sub.messages(1)
        assert message["data"] == {"a": [1.5, -2, "\u200d"], "b": None}


async def test_subscribe_since_replays_exactly_the_missing_messages(server):
    async with connect(server.url) as pub:
        for i in range(1, 6):
            await pub.publish("resume", f"m{i}")
        async with connect(server.url) as sub:
            first = await sub.subscribe("resume")
            epoch = first["epoch"]
            assert first["seq"] == 5
            await sub.request({"type": "unsubscribe", "id": 3, "channel": "resume"})
            subscribed = await sub.subscribe("resume", since={"epoch": epoch, "seq": 2})
            assert (subscribed["epoch"], subscribed["seq"], subscribed["recovered"]) == (epoch, 5, True)
            await pub.publish("resume", "m6")  # live, right after the replayed ones
            messages = await sub.messages(4)
            assert [(m["seq"], m["data"]) for m in messages] == [(3, "m3"), (4, "m4"), (5, "m5"), (6, "m6")]
            # Nothing repeated after the live message: the next frame is the reply to this request.
            reply = await sub.request({"type": "unsubscribe", "id": 9, "channel": "resume"})
            assert reply["type"] == "unsubscribed"


async def test_subscribe_since_the_head_replays_nothing(server):
    async with connect(server.url) as pub, connect(server.url) as sub:
        published = await pub.publish("head", "only")
        subscribed = await sub.subscribe("head", since={"epoch": published["epoch"], "seq": 1})
        assert (subscribed["seq"], subscribed["recovered"]) == (1, True)
        await pub.publish("head", "next")
        [message] = await sub.messages(1)
        assert (message["seq"], message["data"]) == (2, "next")


async def test_recovered_false_when_history_no_longer_covers_since(start_server):
    running = await start_server(outbound_queue_size=4, max_unacked=4, history_size=4)
    async with connect(running.url) as pub, connect(running.url) as sub:
        for i in range(1, 11):
            published = await pub.publish("short", i)
        subscribed = await sub.subscribe("short", since={"epoch": published["epoch"], "seq": 2})
        assert (subscribed["seq"], subscribed["recovered"]) == (10, False)
        # Delivery starts at the oldest message still held (7..10 in a ring of 4).
        assert [m["seq"] for m in await sub.messages(4)] == [7, 8, 9, 10]


async def test_recovered_false_when_the_epoch_differs(server):
    async with connect(server.url) as pub, connect(server.url) as sub:
        for i in range(1, 4):
            published = await pub.publish("epochs", i)
        assert published["epoch"] != "e-old"
        subscribed = await sub.subscribe("epochs", since={"epoch": "e-old", "seq": 2})
        assert subscribed["epoch"] == published["epoch"]
        assert (subscribed["seq"], subscribed["recovered"]) == (3, False)
        assert [m["data"] for m in await sub.messages(3)] == [1, 2, 3]


async def test_since_ahead_of_the_stream_is_refused_and_does_not_subscribe(server):
    async with connect(server.url) as pub, connect(server.url) as sub:
        published = await pub.publish("ahead", 1)
        reply = await sub.request(
            {"type": "subscribe", "id": 5, "channel": "ahead", "since": {"epoch": published["epoch"], "seq": 9}}
        )
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad_request", 5)
        # The refused subscribe left no subscription behind.
        reply = await sub.request({"type": "unsubscribe", "id": 6, "channel": "ahead"})
        assert (reply["type"], reply["code"]) == ("error", "not_subscribed")
        assert not server.server.hub.broadcast("ahead").receivers


async def test_unsubscribe_stops_delivery(server):
    async with connect(server.url) as pub, connect(server.url) as sub:
        await sub.subscribe("news")
        await pub.publish("news", "before")
        [message] = await sub.messages(1)
        assert message["data"] == "before"
        reply = await sub.request({"type": "unsubscribe", "id": 3, "channel": "news"})
        assert reply == {"type": "unsubscribed", "id": 3, "channel": "news"}
        await pub.publish("news", "while away")  # seq 2: must not reach the old subscription
        subscribed = await sub.subscribe("news")
        assert subscribed["seq"] == 2
        await pub.publish("news", "after")
        [message] = await sub.messages(1)
        assert (message["seq"], message["data"]) == (3, "after")
        reply = await sub.request({"type": "unsubscribe", "id": 4, "channel": "nothing"})
        assert reply == {"type": "error", "id": 4, "code": "not_subscribed", "reason": reply["reason"]}


async def test_idempotent_publish_same_key_same_seq_delivered_once(server):
    async with connect(server.url) as pub, connect(server.url, Encoding.CBOR) as sub:
        await sub.subscribe("payments")
        first = await pub.publish("payments", {"amount": 5}, key="k-123")
        again = await pub.publish("payments", {"amount": 5}, key="k-123")
        other = await pub.publish("payments", {"amount": 7}, key="k-124")
        assert first["seq"] == again["seq"] == 1 and first["epoch"] == again["epoch"]
        assert other["seq"] == 2
        messages = await sub.messages(2)
        assert [(m["seq"], m["data"]) for m in messages] == [(1, {"amount": 5}), (2, {"amount": 7})]
        assert metric(server.server, "wsnursery_duplicate_publishes_total") == 1
        assert metric(server.server, "wsnursery_publishes_total") == 2


async def test_same_key_on_another_channel_is_a_new_message(server):
    async with connect(server.url) as pub:
        a = await pub.publish("a", 1, key="k")
        b = await pub.publish("b", 1, key="k")
        assert (a["channel"], a["seq"], b["channel"], b["seq"]) == ("a", 1, "b", 1)


async def test_subscribers_on_many_channels_get_only_their_own(server):
    async with connect(server.url) as pub, connect(server.url) as one, connect(server.url) as two:
        await one.subscribe("one")
        await two.subscribe("two")
        with trio.fail_after(10):
            for i in range(5):
                await pub.publish("one", f"1-{i}")
                await pub.publish("two", f"2-{i}")
        got_one, got_two = await one.messages(5), await two.messages(5)
        assert [(m["channel"], m["data"]) for m in got_one] == [("one", f"1-{i}") for i in range(5)]
        assert [(m["channel"], m["data"]) for m in got_two] == [("two", f"2-{i}") for i in range(5)]


async def test_resume_with_a_backlog_longer_than_the_queue_is_not_a_slow_consumer(start_server):
    """Catching up on history is not slowness: only falling behind live messages is."""
    running = await start_server(outbound_queue_size=16, max_unacked=16, history_size=2000)
    pad = "x" * 1000
    async with connect(running.url) as pub, connect(running.url) as sub:
        for i in range(1, 1001):
            await pub.send({"type": "publish", "id": i, "channel": "backlog", "data": pad})
        while (reply := await pub.receive())["id"] != 1000:
            pass
        # 1000 messages of 1 kB to catch up on: far more than the queue of 16, and more than
        # the sockets take before the subscriber reads, so live messages arrive meanwhile.
        subscribed = await sub.subscribe("backlog", since={"epoch": reply["epoch"], "seq": 0})
        assert (subscribed["seq"], subscribed["recovered"]) == (1000, True)
        for i in range(10):
            await pub.publish("backlog", f"live {i}")
        messages = await sub.messages(1010)
        assert [m["seq"] for m in messages] == list(range(1, 1011))
        assert [m["data"] for m in messages[1000:]] == [f"live {i}" for i in range(10)]
    assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 0
