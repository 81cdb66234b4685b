"""Every configured limit, at the limit: what the client sees, and that the server keeps serving."""

from __future__ import annotations

import socket

import pytest
import trio
import trio_websocket

from wsnursery import codec
from wsnursery.codec import Encoding

from .helpers import (
    http_get,
    http_request,
    metric,
    wait_until,
)
from .wsclient import connect

pytestmark = pytest.mark.usefixtures("server_errors")


async def _closed_with(client) -> int:
    with trio.fail_after(10):
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            while True:
                await client.ws.get_message()
    return closed.value.reason.code


# -- max_message_size ---------------------------------------------------------------------


def _publish_of_size(size: int, encoding: Encoding) -> dict:
    """A publish frame whose encoded payload is exactly ``size`` bytes."""
    for n in range(size, 0, -1):
        frame = {"type": "publish", "id": 1, "channel": "big", "data": "x" * n}
        if len(codec.encode(frame, encoding)) == size:
            return frame
    raise AssertionError(size)  # pragma: no cover


@pytest.mark.parametrize("encoding", [Encoding.JSON, Encoding.CBOR], ids=["json", "cbor"])
async def test_message_over_max_message_size_closes_1009(start_server, encoding):
    running = await start_server(max_message_size=1024)
    async with connect(running.url, encoding) as client:
        assert client.welcome["max_message_size"] == 1024
        reply = await client.request(_publish_of_size(1024, encoding))  # at the limit: fine
        assert reply["type"] == "published", reply
        await client.send(_publish_of_size(1025, encoding))  # one byte over: closed
        assert await _closed_with(client) == 1009
    async with connect(running.url) as other:
        assert (await other.publish("big", "still serving"))["seq"] == 2
    await wait_until(lambda: metric(running.server, "wsnursery_connections_closed_total", code="1009") == 1)


async def test_echo_message_over_max_message_size_closes_1009(start_server):
    running = await start_server(max_message_size=100)
    async with trio_websocket.open_websocket_url(running.echo_url) as ws:
        await ws.send_message("a" * 100)
        assert await ws.get_message() == "a" * 100
        await ws.send_message(b"b" * 101)
        with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1009


# -- max_connections ----------------------------------------------------------------------


async def test_connections_past_max_connections_get_http_503(start_server):
    running = await start_server(max_connections=2)
    async with connect(running.url) as one, trio_websocket.open_websocket_url(running.echo_url):
        await wait_until(lambda: running.server.websockets == 2, what="both connections counted")
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            async with connect(running.url):
                pass  # pragma: no cover
        assert rejected.value.status_code == 503
        answer = await http_request(
            running.port,
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13",
        )
        assert answer.status == 503 and answer.headers["retry-after"] == "1"
        # Health checks still get through at the limit.
        assert (await http_get(running.port, "/healthz")).status == 200
        assert metric(running.server, "wsnursery_connections_rejected_total", reason="max_connections") == 2
        await one.publish("x", 1)
    # Once one closes there is room again.
    await wait_until(lambda: running.server.websockets == 0, what="connections to close")
    async with connect(running.url) as again, connect(running.url):
        assert again.welcome["type"] == "welcome"


# -- handshake_timeout --------------------------------------------------------------------


async def _read_all(stream: trio.SocketStream, limit: float) -> bytes:
    data = bytearray()
    with trio.fail_after(limit):
        while chunk := await stream.receive_some(4096):
            data += chunk
    return bytes(data)


async def test_socket_that_sends_nothing_is_closed_after_handshake_timeout(start_server):
    running = await start_server(handshake_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    started = trio.current_time()
    async with stream:
        assert await _read_all(stream, 5) == b""  # closed without an answer
    elapsed = trio.current_time() - started
    assert 0.25 <= elapsed < 3, elapsed
    assert running.server.sockets == 0


async def test_half_a_head_gets_408_after_handshake_timeout(start_server):
    running = await start_server(handshake_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    started = trio.current_time()
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webso")
        answer = await _read_all(stream, 5)
    elapsed = trio.current_time() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.25 <= elapsed < 3, elapsed
    assert metric(running.server, "wsnursery_connections_rejected_total", reason="handshake_timeout") == 1
    async with connect(running.url) as client:  # others are still served
        assert client.welcome["type"] == "welcome"


async def test_http_answer_to_a_client_that_never_reads_is_bounded_by_handshake_timeout(start_server):
    """/metrics is bigger than a small receive buffer: the answer's send waits, within the bound."""
    running = await start_server(handshake_timeout=0.5)
    for n in range(2000):  # an exposition of several hundred KB: one close-code series each
        running.server.metrics.connections_closed.labels(str(3000 + n)).inc()
    assert len(running.server.metrics.exposition()) > 200_000
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    await sock.connect(("127.0.0.1", running.port))
    async with trio.SocketStream(sock) as stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await wait_until(lambda: running.server.sockets == 0, timeout=5, what="the socket to be dropped")


async def test_head_sent_in_pieces_within_the_timeout_is_accepted(start_server):
    running = await start_server(handshake_timeout=1.0)
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    async with stream:
        head = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        for i in range(0, len(head), 40):
            await stream.send_all(head[i : i + 40])
            await trio.sleep(0.05)  # pacing a slow client, well inside the timeout
        with trio.fail_after(5):
            answer = await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
    assert metric(running.server, "wsnursery_connections_rejected_total", reason="handshake_timeout") == 0


# -- max_subscriptions --------------------------------------------------------------------


async def test_max_subscriptions(start_server):
    running = await start_server(max_subscriptions=3)
    async with connect(running.url) as client:
        for channel in ("s1", "s2", "s3"):
            await client.subscribe(channel)
        reply = await client.request({"type": "subscribe", "id": 7, "channel": "s4"})
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "too_many_subscriptions", 7)
        await client.subscribe("s2")  # resubscribing a held channel takes no new slot
        assert (await client.request({"type": "unsubscribe", "id": 8, "channel": "s1"}))["type"] == "unsubscribed"
        await client.subscribe("s4")
    async with connect(running.url) as other:  # the limit is per connection
        for channel in ("s1", "s2", "s3"):
            await other.subscribe(channel)


# -- channel names ------------------------------------------------------------------------

INVALID_CHANNELS = ["", ".a", "-a", "a b", "a\n", "a\x00", "é", "chat.room1!", "x" * 129, "a*", "/a"]
VALID_CHANNELS = ["a", "A0", "x" * 128, "chat.room1", "a._:/-Z9", "9"]


async def test_channel_name_grammar(start_server):
    server = await start_server(max_errors=1000)
    async with connect(server.url) as client:
        for i, channel in enumerate(INVALID_CHANNELS):
            for kind in ("subscribe", "publish", "unsubscribe"):
                reply = await client.request({"type": kind, "id": i, "channel": channel, "data": 1})
                assert (reply["type"], reply["code"], reply["id"]) == ("error", "invalid_channel", i), (channel, reply)
        for channel in VALID_CHANNELS:
            assert (await client.subscribe(channel))["channel"] == channel
            assert (await client.publish(channel, 1))["channel"] == channel


async def test_custom_channel_pattern(start_server):
    running = await start_server(channel_pattern=r"^room-[0-9]{1,4}$")
    async with connect(running.url) as client:
        assert (await client.subscribe("room-12"))["channel"] == "room-12"
        for channel in ("chat.room1", "room-", "room-12345", "room-1x"):
            reply = await client.request({"type": "publish", "id": 3, "channel": channel, "data": 1})
            assert (reply["type"], reply["code"]) == ("error", "invalid_channel"), (channel, reply)


# -- max_errors ---------------------------------------------------------------------------


async def test_max_errors_closes_1008(start_server):
    running = await start_server(max_errors=3)
    async with connect(running.url) as bystander, connect(running.url) as client:
        await client.subscribe("fine")  # successful requests do not count
        errors = []
        for i in range(5):
            await client.ws.send_message(f'{{"type": "nope", "id": {i}}}')
        with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            while True:
                frame = await client.receive()
                assert frame["type"] == "error", frame
                errors.append(frame["id"])
        assert closed.value.reason.code == 1008
        assert errors == [0, 1, 2]
        assert (await bystander.publish("fine", 1))["seq"] == 1
    await wait_until(lambda: metric(running.server, "wsnursery_connections_closed_total", code="1008") == 1)


async def test_errors_below_max_errors_keep_the_connection(start_server):
    running = await start_server(max_errors=3)
    async with connect(running.url) as client:
        for i in range(2):
            reply = await client.request({"type": "nope", "id": i})
            assert reply["code"] == "unknown_type"
        assert (await client.publish("x", 1))["seq"] == 1


# -- max_channels -------------------------------------------------------------------------


async def test_max_channels_refuses_when_every_channel_has_subscribers(start_server):
    running = await start_server(max_channels=2)
    async with connect(running.url) as holder, connect(running.url) as client:
        first = await holder.subscribe("c1")
        await holder.subscribe("c2")
        for kind in ("subscribe", "publish"):
            reply = await client.request({"type": kind, "id": 4, "channel": "c3", "data": 1})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "too_many_channels", 4), reply
        assert running.server.hub.channel_count == 2
        # Existing channels still work.
        assert (await client.publish("c1", "x"))["seq"] == 1
        # Once c1 has no subscriber it is idle and the next new channel evicts it.
        await holder.request({"type": "unsubscribe", "id": 5, "channel": "c1"})
        assert (await client.publish("c3", "y"))["seq"] == 1
        assert running.server.hub.channel_count == 2
        assert running.server.hub.broadcast("c1") is None
        # c1 comes back as a new stream: a resume from the old one is reported as lost.
        await holder.request({"type": "unsubscribe", "id": 6, "channel": "c2"})  # make room
        again = await client.subscribe("c1", since={"epoch": first["epoch"], "seq": 1})
        assert again["epoch"] != first["epoch"]
        assert (again["seq"], again["recovered"]) == (0, False)


async def test_max_channels_evicts_the_least_recently_used_idle_channel(start_server):
    running = await start_server(max_channels=3)
    async with connect(running.url) as client:
        for channel in ("old", "mid", "new"):
            await client.publish(channel, channel)
        await client.publish("old", "touched")  # now "mid" is the least recently used
        await client.publish("fourth", 1)
        hub = running.server.hub
        assert hub.broadcast("mid") is None
        assert all(hub.broadcast(name) is not None for name in ("old", "new", "fourth"))


# -- history_bytes ------------------------------------------------------------------------


async def test_history_bytes_drops_the_oldest_and_a_resume_from_before_is_not_recovered(start_server):
    """Issue 12 item 3: history is bounded in bytes (each message counts what its decoded
    value holds in memory, or the payload its publisher sent if more), not only in messages:
    the oldest go, a resume from before them gets ``recovered: false`` and what is still
    held, and the newest is always kept."""
    pad = "p" * 400
    running = await start_server(history_bytes=3200, history_size=1024)
    async with connect(running.url) as client:
        first = None
        for i in range(10):  # 470 bytes sent, about 780 in memory, each: 4 fit in 3200
            reply = await client.publish("big", {"i": i, "pad": pad})
            first = first or reply
        broadcast = running.server.hub.broadcast("big")
        assert broadcast is not None and broadcast.bytes <= 3200
        assert (broadcast.oldest, broadcast.head) == (7, 10)
        resumed = await client.subscribe("big", since={"epoch": first["epoch"], "seq": 1})
        assert (resumed["seq"], resumed["recovered"]) == (10, False)
        assert [m["data"]["i"] for m in await client.messages(4)] == [6, 7, 8, 9]
        huge = await client.publish("big", {"pad": "q" * 5000})  # alone over the bound: kept
        assert (broadcast.oldest, broadcast.head) == (huge["seq"], huge["seq"])
        assert (await client.messages(1))[0]["seq"] == huge["seq"]
