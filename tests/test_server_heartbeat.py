"""Heartbeat: a client that stops answering pings is closed with 4000; one that answers stays."""

from __future__ import annotations

import json

import pytest
import trio

from .helpers import (
    metric,
    raw_welcome,
    text_frame,
    wait_until,
)
from .wsclient import RawClient, connect

FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.2}

pytestmark = pytest.mark.usefixtures("server_errors")


async def _pings_then_close(raw: RawClient) -> tuple[int, int | None]:
    """Read (never answering) until the close frame or EOF: (pings seen, close code or None)."""
    pings = 0
    while True:
        try:
            frame = await raw.read_frame()
        except trio.BrokenResourceError:
            return pings, None
        if frame is None:
            return pings, None
        opcode, payload = frame
        if opcode == 0x9:
            pings += 1
        elif opcode == 0x8:
            return pings, int.from_bytes(payload[:2], "big")


@pytest.mark.parametrize("path", ["/", "/echo"])
async def test_silent_client_is_closed_4000_and_counted(start_server, path):
    running = await start_server(**FAST)
    async with connect(running.url) as alive:  # trio-websocket answers pings by itself
        raw = await RawClient.connect(running.port, path)
        started = trio.current_time()
        try:
            if path == "/":
                await raw_welcome(raw)
            pings, code = await _pings_then_close(raw)
        finally:
            await raw.aclose()
        elapsed = trio.current_time() - started
        assert code == 4000  # the close frame goes out: nothing was half written
        # Pings go out every interval (0.1 s); the first unanswered one closes at its timeout
        # (0.2 s), by when a second ping may be out too.
        assert 1 <= pings <= 2, pings
        assert 0.15 <= elapsed < 5, elapsed
        assert metric(running.server, "wsnursery_heartbeat_timeouts_total") == 1
        # The client that answers pings survived several intervals and is still served.
        assert (await alive.publish("hb", "still here"))["seq"] == 1
    await wait_until(lambda: metric(running.server, "wsnursery_connections_closed_total", code="4000") == 1)


async def test_client_that_answers_pings_is_kept(start_server):
    running = await start_server(**FAST)
    raw = await RawClient.connect(running.port)
    try:
        await raw_welcome(raw)
        pongs = 0
        with trio.fail_after(10):
            while pongs < 5:  # five full heartbeat rounds, each answered
                frame = await raw.read_frame()
                assert frame is not None
                opcode, payload = frame
                assert opcode != 0x8, "closed although it answered every ping"
                if opcode == 0x9:
                    await raw.send_frame(0xA, payload)
                    pongs += 1
    finally:
        await raw.aclose()
    assert metric(running.server, "wsnursery_heartbeat_timeouts_total") == 0


async def test_a_publisher_held_up_by_the_block_policy_is_not_closed_4000(start_server):
    """Issue 12 item 8: while a publish waits under ``block``, the server reads nothing from
    that client, and its pongs wait unread in the socket: the server's own backpressure, not
    the client's silence. It must not be closed 4000; once the subscriber acks, it goes on."""
    running = await start_server(
        **FAST, slow_consumer_policy="block", outbound_queue_size=4, max_unacked=4, history_size=64
    )
    async with connect(running.url) as sub, trio.open_nursery() as nursery:
        await sub.subscribe("held", ack=True)
        seen: list[int] = []

        async def consume() -> None:  # reads (so it answers pings) but never acks
            while True:
                frame = await sub.receive()
                if frame["type"] == "message":
                    seen.append(frame["seq"])

        nursery.start_soon(consume)
        raw = await RawClient.connect(running.port)
        try:
            await raw_welcome(raw)
            for i in range(6):  # 4 fill the unacked window, the 5th waits, the 6th is not read
                await raw.send_frame(0x1, text_frame({"type": "publish", "id": i, "channel": "held", "data": i}))
            broadcast = running.server.hub.broadcast("held")
            await wait_until(lambda: broadcast is not None and broadcast.any_full(), what="the subscriber to fill")
            published: list[int] = []
            pings = 0
            with trio.fail_after(30):
                while pings < 8:  # 8 intervals, 4 timeouts: a silent client is closed after 1
                    opcode, payload = await _frame(raw)
                    assert opcode != 0x8, f"closed {int.from_bytes(payload[:2], 'big')} while held up"
                    if opcode == 0x9:
                        pings += 1
                        await raw.send_frame(0xA, payload)
                    elif opcode == 0x1:
                        published.append(json.loads(payload)["id"])
            assert published == [0, 1, 2, 3]  # the 5th publish is still waiting
            assert metric(running.server, "wsnursery_heartbeat_timeouts_total") == 0
            await sub.send({"type": "ack", "channel": "held", "seq": 4})
            with trio.fail_after(30):
                while len(published) < 6:
                    opcode, payload = await _frame(raw)
                    assert opcode != 0x8
                    if opcode == 0x9:
                        await raw.send_frame(0xA, payload)
                    elif opcode == 0x1:
                        published.append(json.loads(payload)["id"])
            assert published == [0, 1, 2, 3, 4, 5]
        finally:
            await raw.aclose()
        nursery.cancel_scope.cancel()
    assert metric(running.server, "wsnursery_heartbeat_timeouts_total") == 0


async def _frame(raw: RawClient) -> tuple[int, bytes]:
    frame = await raw.read_frame()
    assert frame is not None, "the server closed the connection"
    return frame
