"""Acknowledged delivery (``"ack": true``) and ``replay``: the server side of issue 3."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from .helpers import metric
from .wsclient import connect

ACKS = {"ack_timeout": 0.1, "ack_max_timeout": 0.4}

pytestmark = pytest.mark.usefixtures("server_errors")


async def _frames_for(client, seconds: float) -> list[dict]:
    """Every frame that arrives within ``seconds`` (a bounded negative check)."""
    frames = []
    with trio.move_on_after(seconds):
        while True:
            frames.append(await client.receive())
    return frames


async def _sync(client, n: int) -> None:
    """A request round trip: every frame sent before it has been processed by the server."""
    reply = await client.request({"type": "subscribe", "id": 1000 + n, "channel": f"sync{n}"})
    assert reply["type"] == "subscribed", reply


async def test_unacked_messages_are_resent_with_the_same_seq(start_server):
    running = await start_server(**ACKS)
    async with connect(running.url) as sub, connect(running.url) as pub:
        subscribed = await sub.subscribe("acked", ack=True)
        for i in range(3):
            await pub.publish("acked", f"m{i}")
        first = await sub.messages(3)
        again = await sub.messages(3)  # nobody acked: after ack_timeout, go back to acked + 1
        assert [(m["seq"], m["data"]) for m in first] == [(1, "m0"), (2, "m1"), (3, "m2")]
        assert [(m["seq"], m["data"], m["epoch"]) for m in again] == [
            (m["seq"], m["data"], subscribed["epoch"]) for m in first
        ]
        assert metric(running.server, "wsnursery_retransmits_total") >= 1


async def test_acking_stops_resends(start_server):
    running = await start_server(**ACKS)
    async with connect(running.url) as sub, connect(running.url) as pub:
        await sub.subscribe("acked", ack=True)
        for i in range(3):
            await pub.publish("acked", i)
        await sub.messages(3)
        await sub.send({"type": "ack", "channel": "acked", "seq": 3})
        await _sync(sub, 1)
        tracker = sub_tracker(running, "acked")
        assert (tracker.acked, tracker.unacked, tracker.next_deadline()) == (3, 0, None)
        # Three ack timeouts pass with no resend; at most one decided before the ack was read.
        late = await _frames_for(sub, 0.35)
        assert [f["seq"] for f in late] in ([], [1, 2, 3]), late
        # New messages still flow and need their own ack.
        await pub.publish("acked", "new")
        [message] = await sub.messages(1)
        assert message["seq"] == 4


async def test_partial_ack_resends_from_the_first_unacked(start_server):
    running = await start_server(**ACKS)
    async with connect(running.url) as sub, connect(running.url) as pub:
        await sub.subscribe("acked", ack=True)
        for i in range(4):
            await pub.publish("acked", i)
        assert [m["seq"] for m in await sub.messages(4)] == [1, 2, 3, 4]
        await sub.send({"type": "ack", "channel": "acked", "seq": 2})
        await _sync(sub, 1)
        # A resend decided before the ack was read may still bring 1..4; every later one is
        # go-back-N from acked + 1: 3, 4.
        seqs: list[int] = []
        while seqs[-4:] != [3, 4, 3, 4]:
            seqs += [m["seq"] for m in await sub.messages(1)]
            assert len(seqs) <= 8 and set(seqs) <= {1, 2, 3, 4}, seqs
        assert seqs in ([3, 4, 3, 4], [1, 2, 3, 4, 3, 4]), seqs
        await sub.send({"type": "ack", "channel": "acked", "seq": 1})  # stale: ignored, no error
        await _sync(sub, 2)
        assert sub_tracker(running, "acked").acked == 2


async def test_ack_beyond_what_was_sent_is_bad_request(start_server):
    running = await start_server(ack_timeout=5)
    async with connect(running.url) as sub, connect(running.url) as pub:
        await sub.subscribe("acked", ack=True)
        await pub.publish("acked", 1)
        await sub.messages(1)
        await sub.send({"type": "ack", "channel": "acked", "seq": 2})
        reply = await sub.receive()
        assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
        assert sub_tracker(running, "acked").acked == 0
        await sub.send({"type": "ack", "channel": "acked", "seq": 1})  # the valid ack still works
        await _sync(sub, 1)
        assert sub_tracker(running, "acked").acked == 1


async def test_ack_on_a_subscription_without_acks_or_no_subscription(server):
    async with connect(server.url) as sub:
        await sub.subscribe("plain")
        await sub.send({"type": "ack", "channel": "plain", "seq": 0})
        reply = await sub.receive()
        assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
        await sub.send({"type": "ack", "channel": "nowhere", "seq": 0})
        reply = await sub.receive()
        assert (reply["type"], reply["code"]) == ("error", "not_subscribed"), reply


async def test_error_reply_to_an_ack_carries_its_id(start_server):
    running = await start_server(ack_timeout=5)
    async with connect(running.url) as sub:
        await sub.subscribe("acked", ack=True)
        await sub.send({"type": "ack", "id": 77, "channel": "acked", "seq": 9})
        reply = await sub.receive()
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad_request", 77)


async def test_past_max_unacked_the_subscriber_is_closed_4008(start_server):
    running = await start_server(ack_timeout=5, max_unacked=4, outbound_queue_size=4, history_size=16)
    async with connect(running.url) as sub, connect(running.url) as pub:
        await sub.subscribe("acked", ack=True)
        for i in range(4):
            await pub.publish("acked", i)
        assert [m["seq"] for m in await sub.messages(4)] == [1, 2, 3, 4]
        await _sync(sub, 1)  # at max_unacked, still open
        await pub.publish("acked", 4)  # one past it
        with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            while True:
                await sub.ws.get_message()
        assert closed.value.reason.code == 4008
        assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 1


async def test_acking_subscriber_is_never_too_slow(start_server):
    running = await start_server(ack_timeout=5, max_unacked=4, outbound_queue_size=4, history_size=16)
    async with connect(running.url) as sub, connect(running.url) as pub:
        await sub.subscribe("acked", ack=True)
        for i in range(20):
            await pub.publish("acked", i)
            [message] = await sub.messages(1)
            assert message["seq"] == i + 1
            await sub.send({"type": "ack", "channel": "acked", "seq": message["seq"]})
        await _sync(sub, 1)
    assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 0


async def test_replay_repositions_and_answers_replaying(server):
    async with connect(server.url) as sub, connect(server.url) as pub:
        subscribed = await sub.subscribe("gaps")
        epoch = subscribed["epoch"]
        for i in range(1, 6):
            await pub.publish("gaps", i)
        assert [m["seq"] for m in await sub.messages(5)] == [1, 2, 3, 4, 5]
        reply = await sub.request({"type": "replay", "id": 4, "channel": "gaps", "since": {"epoch": epoch, "seq": 2}})
        assert reply == {"type": "replaying", "id": 4, "channel": "gaps", "epoch": epoch, "seq": 5, "recovered": True}
        assert [(m["seq"], m["data"]) for m in await sub.messages(3)] == [(3, 3), (4, 4), (5, 5)]
        await pub.publish("gaps", 6)  # live again, right after the replayed ones
        assert [m["seq"] for m in await sub.messages(1)] == [6]

        reply = await sub.request({"type": "replay", "id": 5, "channel": "gaps", "since": {"epoch": "zz", "seq": 3}})
        assert (reply["type"], reply["seq"], reply["recovered"]) == ("replaying", 6, False)
        assert [m["seq"] for m in await sub.messages(6)] == [1, 2, 3, 4, 5, 6]


async def test_replay_errors(server):
    async with connect(server.url) as sub, connect(server.url) as pub:
        published = await pub.publish("gaps", 1)
        since = {"epoch": published["epoch"], "seq": 0}
        reply = await sub.request({"type": "replay", "id": 6, "channel": "gaps", "since": since})
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "not_subscribed", 6)
        await sub.subscribe("gaps")
        ahead = {"epoch": published["epoch"], "seq": 2}
        reply = await sub.request({"type": "replay", "id": 7, "channel": "gaps", "since": ahead})
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad_request", 7)
        reply = await sub.request({"type": "replay", "id": 8, "channel": "gaps"})
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad_request", 8)


async def test_replay_on_an_acked_subscription_resets_the_window(start_server):
    running = await start_server(ack_timeout=5)
    async with connect(running.url) as sub, connect(running.url) as pub:
        subscribed = await sub.subscribe("acked", ack=True)
        for i in range(5):
            await pub.publish("acked", i)
        await sub.messages(5)
        await sub.send({"type": "ack", "channel": "acked", "seq": 5})
        since = {"epoch": subscribed["epoch"], "seq": 3}
        reply = await sub.request({"type": "replay", "id": 9, "channel": "acked", "since": since})
        assert (reply["type"], reply["recovered"]) == ("replaying", True)
        assert [m["seq"] for m in await sub.messages(2)] == [4, 5]
        await sub.send({"type": "ack", "channel": "acked", "seq": 5})
        await _sync(sub, 1)
        tracker = sub_tracker(running, "acked")
        assert (tracker.acked, tracker.sent) == (5, 5)


def sub_tracker(running, channel: str):
    """The AckTracker of the only acking subscription to ``channel`` on the server."""
    [subscription] = [s for s in running.server.hub.broadcast(channel).receivers if s.tracker is not None]
    return subscription.tracker
