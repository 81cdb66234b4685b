"""Issue 12, connection-level items: what is owed before a close goes out first."""

from __future__ import annotations

import socket
import struct

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

pytestmark = pytest.mark.usefixtures("server_errors")


async def frames_until_close(client: RawClient) -> list[tuple[int, bytes]]:
    frames = []
    while (frame := await client.read_frame()) is not None:
        frames.append(frame)
        if frame[0] == 0x8:
            break
    return frames


async def test_a_ping_then_a_close_in_one_read_gets_its_pong_before_the_close(server):
    """Item 11 (RFC 6455 5.5.2): the ping came first, so its pong is owed."""
    client = await RawClient.connect(server.port)
    await raw_welcome(client)
    await client.stream.send_all(masked_frame(0x9, b"owed") + masked_frame(0x8, struct.pack("!H", 1000)))
    frames = await frames_until_close(client)
    await client.aclose()
    assert [opcode for opcode, _ in frames] == [0xA, 0x8], frames
    assert frames[0][1] == b"owed"
    assert frames[1][1][:2] == struct.pack("!H", 1000)


async def test_an_echo_just_before_a_bad_frame_in_one_read_is_not_lost(server):
    """Item 11: the message was whole and valid; the bad frame after it closes 1002 after it."""
    client = await RawClient.connect(server.port, path="/echo")
    await client.stream.send_all(masked_frame(0x1, b"kept") + masked_frame(0x1, b"x", rsv=0x40))
    frames = await frames_until_close(client)
    await client.aclose()
    assert frames[0] == (0x1, b"kept"), frames
    assert frames[-1][0] == 0x8 and frames[-1][1][:2] == struct.pack("!H", 1002), frames


async def test_pongs_and_replies_before_a_protocol_error_are_sent_first(server):
    client = await RawClient.connect(server.port)
    await raw_welcome(client)
    subscribe = masked_frame(0x1, b'{"type": "subscribe", "id": 1, "channel": "a"}')
    await client.stream.send_all(subscribe + masked_frame(0x9, b"p") + masked_frame(0x3, b"reserved opcode"))
    frames = await frames_until_close(client)
    await client.aclose()
    assert [opcode for opcode, _ in frames] == [0x1, 0xA, 0x8], frames
    assert b'"subscribed"' in frames[0][1]
    assert frames[-1][1][:2] == struct.pack("!H", 1002)


# -- bounds a client that does not read runs into ---------------------------------------

PAD = "x" * 16_384
CHANNEL = "firehose"


async def test_echo_to_a_client_that_never_reads_holds_a_byte_bound(start_server):
    """Item 4, scaled from 1 MiB to 64 KiB messages: the server stops reading once the echoes
    queued reach ``max_control_bytes``; before, it queued 256 whole messages (263 MiB at 1 MiB)."""
    bound, size = 256 * 1024, 65536
    running = await start_server(max_message_size=size, max_control_bytes=bound)
    raw = await RawClient.connect(running.port, "/echo", rcvbuf=4096)
    message = masked_frame(0x2, b"e" * size)
    async with trio.open_nursery() as nursery:

        async def flood() -> None:
            for _ in range(400):  # 25 MiB: far beyond the bound and every socket buffer
                await raw.stream.send_all(message)

        nursery.start_soon(flood)
        await wait_until(lambda: len(running.server.connections) == 1, what="the echo connection")
        [connection] = running.server.connections
        outbox = connection.outbox
        await wait_until(lambda: outbox.waiting_for_space, timeout=30, what="the reader to stop reading")
        queued = sum(len(frame) for frame in outbox.control)
        assert outbox.control_bytes == queued  # its own accounting agrees
        held = connection.stream.bytes_in - connection.stream.bytes_out  # read, not written back
        nursery.cancel_scope.cancel()
    await raw.aclose()
    assert queued <= bound + size + 14
    # The queue, one write in flight (the socket's backlog) and the reader's buffer, no more.
    assert held <= bound + 4 * (size + 14) + 65536, f"{held} bytes read and not written back"


async def test_block_policy_closes_a_stuck_subscriber_4008_after_block_timeout(start_server):
    """Item 7: a subscriber that never reads no longer holds its channel's publishers (and
    its other subscribers) forever: after ``block_timeout`` it is closed with 4008."""
    running = await start_server(
        slow_consumer_policy="block",
        block_timeout=0.5,
        outbound_queue_size=8,
        history_size=64,
        max_unacked=8,
    )
    slow = await slow_subscriber(running.port, CHANNEL)
    count = 60  # 16 KiB each: the stuck one fills its limit long before
    got: list[int] = []
    async with connect(running.url) as pub, connect(running.url) as other, trio.open_nursery() as nursery:
        await other.subscribe(CHANNEL)

        async def read_other() -> None:
            while len(got) < count:
                got.extend(message["seq"] for message in await other.messages(1))

        nursery.start_soon(read_other)
        with trio.fail_after(30):
            for index in range(count):
                await pub.publish(CHANNEL, {"i": index, "pad": PAD})
        await wait_until(lambda: len(got) == count, what="the other subscriber's messages")
    assert got == list(range(1, count + 1))
    assert metric(running.server, "wsnursery_slow_consumer_closes_total") == 1
    seqs, code = await read_messages(slow)
    await slow.aclose()
    assert code == 4008
    assert seqs == list(range(1, len(seqs) + 1))


class PacedClient(RawClient):
    """Reads ``chunk`` bytes every ``pause`` seconds: a consumer slower than the publisher
    (the pauses set a rate; nothing waits on them for synchronisation)."""

    chunk, pause = 2048, 0.05

    async def _fill(self, count: int) -> bool:
        while len(self.buffer) < count:
            data = await self.stream.receive_some(self.chunk)
            if not data:
                return False
            self.buffer += data
            await trio.sleep(self.pause)
        return True


async def test_a_slow_consumer_gets_its_4008_ahead_of_the_data_it_replaces(start_server):
    """Item 12: the 4008 goes out after the frame under way, not behind the whole queued
    write (up to 256 KiB), so a consumer reading at 40 KiB/s gets it within close_timeout;
    before, it sat behind the queued data and the consumer saw EOF. The publisher pipelines
    its publishes, so that one write to the slow consumer carries many messages."""
    running = await start_server(outbound_queue_size=32, history_size=64, max_unacked=32, close_timeout=4.0)
    slow = await slow_subscriber(running.port, CHANNEL)
    slow.__class__ = PacedClient
    [connection] = running.server.connections
    # A small server-side send buffer: what the kernel holds is small next to one write.
    connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    publisher = await RawClient.connect(running.port)
    await raw_welcome(publisher)
    burst = 0
    with trio.fail_after(60):
        while metric(running.server, "wsnursery_slow_consumer_closes_total") == 0:
            assert burst < 10, "the slow subscriber was never closed"
            frames = [
                masked_frame(0x1, text_frame({"type": "publish", "id": index, "channel": CHANNEL, "data": PAD}))
                for index in range(20)
            ]
            await publisher.stream.send_all(b"".join(frames))
            for _ in range(20):
                assert (await publisher.read_frame() or (0, b""))[0] == 0x1
            burst += 1
    await publisher.aclose()
    seqs, code = await read_messages(slow)
    await slow.aclose()
    assert code == 4008, f"no close frame after {len(seqs)} messages"
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < 20 * burst


async def test_a_storm_of_empty_continuation_frames_is_closed_1009(start_server):
    """Item 1 end to end: ``[`` then empty continuation frames, past ``max_fragments``."""
    running = await start_server(max_fragments=64)
    client = await RawClient.connect(running.port)
    await raw_welcome(client)
    empty = masked_frame(0x0, b"", fin=False)
    await client.stream.send_all(masked_frame(0x1, b"[", fin=False) + empty * 200)
    assert await client.read_close_code() == 1009
    await client.aclose()
