"""Slow consumers: closed with 4008 (policy ``close``) or the publisher waits (policy ``block``).

The slow subscriber is a RawClient with a tiny receive buffer that subscribes and then stops
reading, so the server's socket buffers fill up and its cursor stops advancing.
"""

from __future__ import annotations

import json

import pytest
import trio

from .helpers import (
    metric,
    raw_welcome,
    read_messages,
    slow_subscriber,
    text_frame,
    wait_until,
)
from .wsclient import RawClient, connect, masked_frame

PAD = "x" * 16_384
MAX_PUBLISHES = 5_000  # far more than the socket buffers of this machine hold
CHANNEL = "firehose"

pytestmark = pytest.mark.usefixtures("server_errors")


async def test_slow_consumer_is_closed_4008_while_a_fast_one_gets_everything(start_server):
    running = await start_server(outbound_queue_size=8, history_size=64, max_unacked=8, close_timeout=5.0)
    slow = await slow_subscriber(running.port, CHANNEL)
    async with connect(running.url) as fast, connect(running.url) as pub, trio.open_nursery() as nursery:
        await fast.subscribe(CHANNEL)
        fast_seqs: list[int] = []
        slow_result: list = []

        async def read_fast(count: int) -> None:
            while len(fast_seqs) < count:
                fast_seqs.extend(m["seq"] for m in await fast.messages(1))

        published = 0
        with trio.fail_after(60):
            while metric(running.server, "wsnursery_slow_consumer_closes_total") == 0:
                assert published < MAX_PUBLISHES, "the slow subscriber was never closed"
                reply = await pub.publish(CHANNEL, {"i": published, "pad": PAD})
                published += 1
                assert reply["seq"] == published
                if published == 1:
                    nursery.start_soon(read_fast, MAX_PUBLISHES + 10)

            # The slow one reads again now: it gets what was in flight, then the 4008 close frame.
            async def read_slow() -> None:
                slow_result.append(await read_messages(slow))

            nursery.start_soon(read_slow)
            for _ in range(10):  # publishing goes on for everyone else
                await pub.publish(CHANNEL, {"pad": PAD})
            published += 10
            await wait_until(lambda: len(fast_seqs) >= published, timeout=30, what="the fast subscriber")
            await wait_until(lambda: bool(slow_result), timeout=30, what="the slow subscriber's close")
            nursery.cancel_scope.cancel()
    await slow.aclose()

    assert fast_seqs == list(range(1, published + 1))  # every seq, in order, no repeat
    slow_seqs, code = slow_result[0]
    assert code == 4008
    assert slow_seqs == list(range(1, len(slow_seqs) + 1))  # in order, no gap, up to the close
    assert len(slow_seqs) < published
    assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 1
    await wait_until(lambda: metric(running.server, "wsnursery_connections_closed_total", code="4008") == 1)


async def test_block_policy_makes_the_publisher_wait_for_the_slow_reader(start_server):
    running = await start_server(slow_consumer_policy="block", outbound_queue_size=8, history_size=64, max_unacked=8)
    slow = await slow_subscriber(running.port, CHANNEL)
    replies: list[int] = []
    stop_at = MAX_PUBLISHES
    async with connect(running.url) as pub, connect(running.url) as other, trio.open_nursery() as nursery:

        async def publisher() -> None:
            while len(replies) < stop_at:
                reply = await pub.publish(CHANNEL, {"i": len(replies), "pad": PAD})
                replies.append(reply["seq"])

        nursery.start_soon(publisher)
        stream = running.server.hub.broadcast(CHANNEL)
        await wait_until(stream.any_full, timeout=30, what="the slow subscriber to fill its queue")
        # Publish replies stall while the slow reader is stalled ...
        stalled_at = len(replies)
        with trio.move_on_after(0.3):
            await wait_until(lambda: len(replies) > stalled_at + 1, what="a publish that should not happen")
        assert len(replies) <= stalled_at + 1, "the publisher did not wait"
        assert stream.head <= stalled_at + 1
        # ... only on that channel: others publish freely meanwhile.
        assert (await other.publish("elsewhere", 1))["seq"] == 1
        # Once the slow one reads, publishing resumes and it gets every message.
        stop_at = len(replies) + 20
        with trio.fail_after(30):
            slow_seqs, code = await read_messages(slow, until_seq=stop_at)
        await wait_until(lambda: len(replies) >= stop_at, what="the publisher to finish")
    await slow.aclose()
    assert code is None
    assert slow_seqs == list(range(1, stop_at + 1))
    assert replies == list(range(1, stop_at + 1))
    assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 0


async def test_block_policy_waiting_publisher_is_released_when_the_slow_one_leaves(start_server):
    running = await start_server(slow_consumer_policy="block", outbound_queue_size=8, history_size=64, max_unacked=8)
    slow = await slow_subscriber(running.port, CHANNEL)
    replies: list[int] = []
    async with connect(running.url) as pub, trio.open_nursery() as nursery:

        async def publisher() -> None:
            while True:
                replies.append((await pub.publish(CHANNEL, {"pad": PAD}))["seq"])

        nursery.start_soon(publisher)
        stream = running.server.hub.broadcast(CHANNEL)
        await wait_until(stream.any_full, timeout=30, what="the slow subscriber to fill its queue")
        stalled_at = len(replies)
        await slow.aclose()  # the slow subscriber goes away: nobody is full any more
        await wait_until(lambda: len(replies) > stalled_at + 5, what="publishing to resume")
        nursery.cancel_scope.cancel()
    assert replies == list(range(1, len(replies) + 1))


async def test_a_reader_that_pauses_gets_every_frame_whole_and_in_order(start_server):
    """Past what the socket takes without blocking, the rest waits as the stream's backlog and
    in the connection's writer task; pings queued meanwhile go out between whole frames."""
    running = await start_server(heartbeat_interval=0.05, heartbeat_timeout=60)
    paused = await slow_subscriber(running.port, CHANNEL)
    count, pad = 60, "y" * 60_000  # ~3.6 MB: far past the socket buffers of this machine
    try:
        async with connect(running.url) as publisher:
            for i in range(count):
                await publisher.publish(CHANNEL, {"i": i, "pad": pad})
            pings = 0
            received: list[tuple[int, int]] = []
            with trio.fail_after(30):
                while len(received) < count:
                    frame = await paused.read_frame()
                    assert frame is not None, "closed early"
                    opcode, payload = frame
                    assert opcode in (0x1, 0x9), frame[:1]
                    if opcode == 0x9:
                        pings += 1
                        continue
                    message = json.loads(payload)  # a torn or interleaved frame fails here
                    received.append((message["seq"], message["data"]["i"]))
                    assert message["data"]["pad"] == pad
        assert received == [(i + 1, i) for i in range(count)]
        assert pings >= 1
    finally:
        await paused.aclose()


async def test_publishes_pipelined_in_one_read_do_not_make_a_reading_subscriber_slow(start_server):
    """Hundreds of publishes arrive in one read; a subscriber that reads is never 4008.

    The reader handles every request of a read before it reads again; the deliverer must
    still get a pass between publishes, so a subscriber's lag stays far below its limit.
    """
    running = await start_server(outbound_queue_size=16, history_size=1024)
    count = 600
    async with connect(running.url) as sub:
        await sub.subscribe(CHANNEL)
        publisher = await RawClient.connect(running.port)
        try:
            await raw_welcome(publisher)
            burst = b"".join(
                masked_frame(0x1, text_frame({"type": "publish", "id": i, "channel": CHANNEL, "data": i}))
                for i in range(count)
            )
            await publisher.stream.send_all(burst)  # about 40 KB: one read on the server
            with trio.fail_after(30):
                got = [m["data"] for m in await sub.messages(count)]
        finally:
            await publisher.aclose()
    assert got == list(range(count))
    assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 0


async def test_ping_flood_from_a_client_that_does_not_read_stays_bounded(start_server):
    """Pongs queue like replies: at ``max_control_queue`` the server stops reading, and once
    the client reads, every ping has its pong, in order."""
    running = await start_server(max_control_queue=8)
    raw = await RawClient.connect(running.port, "/echo", rcvbuf=4096)
    count = 100_000
    burst = b"".join(masked_frame(0x9, b"%08d" % i) for i in range(count))  # 1.4 MB
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.stream.send_all, burst)  # waits while the server does not read
            [connection] = running.server.connections
            await wait_until(lambda: len(connection.outbox.control) >= 8, timeout=30, what="the pong queue to fill")
            assert len(connection.outbox.control) == 8  # and not one more: the reader waits
            pongs: list[bytes] = []
            with trio.fail_after(60):
                while len(pongs) < count:
                    frame = await raw.read_frame()
                    assert frame is not None, f"connection ended after {len(pongs)} pongs"
                    if frame[0] == 0xA:
                        pongs.append(frame[1])
    finally:
        await raw.aclose()
    assert pongs == [b"%08d" % i for i in range(count)]


async def test_client_close_while_the_writer_is_mid_frame_is_answered_after_that_frame(start_server):
    """The writer's send under way finishes before the close answer (never half a frame then EOF).

    (The client sends 3 MB without reading: the echo byte bound must be above that, or TCP
    backpressure stops the client before its close frame, which is the bound working.)"""
    running = await start_server(close_timeout=5.0, max_control_bytes=8 * 2**20)
    raw = await RawClient.connect(running.port, "/echo", rcvbuf=4096)
    big = b"x" * 100_000
    try:
        for _ in range(30):  # far more than the socket buffers hold: the writer is mid-send
            await raw.send_frame(0x2, big)
        await wait_until(
            lambda: any(c.outbox.writer_done is not None for c in running.server.connections),
            what="the writer to take over",
        )
        await raw.send_frame(0x8, (1000).to_bytes(2, "big") + b"bye")
        frames = []
        with trio.fail_after(30):
            while (frame := await raw.read_frame()) is not None:
                frames.append(frame)
                if frame[0] == 0x8:
                    break
    finally:
        await raw.aclose()
    assert frames, "nothing came back"
    assert frames[-1] == (0x8, (1000).to_bytes(2, "big") + b"bye"), frames[-1][:2]
    assert all(frame == (0x2, big) for frame in frames[:-1])


async def test_oversize_message_still_being_sent_gets_the_1009_close_frame(start_server):
    """The server drains what the client still sends after a 1009 instead of closing a socket
    with unread input (which resets the connection and can destroy the close frame)."""
    running = await start_server(max_message_size=4096, close_timeout=5.0)
    raw = await RawClient.connect(running.port, "/echo")
    sent = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            async def send_big() -> None:  # the whole of it: the server reads and drops it
                await raw.send_frame(0x2, b"y" * 4_000_000)
                sent.set()

            nursery.start_soon(send_big)
            assert await raw.read_close_code() == 1009
            with trio.fail_after(10):
                await sent.wait()
            assert await raw.read_frame() is None  # then the server ends the TCP connection
    finally:
        await raw.aclose()


async def test_a_subscriber_whose_next_message_left_history_is_closed_4008(start_server):
    """Not its lag in messages (far under ``outbound_queue_size``) but the history's byte bound:
    while its socket is backed up, the messages after its cursor are dropped, so when it reads
    again it gets what was in flight, then 4008 (resume with ``since``), never a gap."""
    running = await start_server(outbound_queue_size=4096, history_size=4096, history_bytes=65_536, close_timeout=5.0)
    slow = await slow_subscriber(running.port, CHANNEL)
    broadcast = running.server.hub.broadcast(CHANNEL)
    assert broadcast is not None
    [subscription] = broadcast.receivers
    async with connect(running.url) as pub:
        published = 0
        with trio.fail_after(60):
            while not (subscription.lost and not subscription.outbox.stream.idle):
                assert published < 4000, "the slow subscriber never fell out of history"
                await pub.publish(CHANNEL, {"i": published, "pad": PAD})
                published += 1
        assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 0  # not by its lag
        with trio.fail_after(30):
            seqs, code = await read_messages(slow)  # reading lets its writer go on: the next is gone
        assert (await pub.publish(CHANNEL, "still serving"))["seq"] == published + 1
    await slow.aclose()
    assert code == 4008
    assert seqs == list(range(1, len(seqs) + 1))  # in order, no gap, up to the close
    assert seqs[-1] < broadcast.oldest - 1
    assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 1
