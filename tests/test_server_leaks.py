"""No leaked tasks: after many connections that die abruptly, the task count is back at baseline."""

from __future__ import annotations

import random

import pytest
import trio

from .helpers import (
    abort,
    count_tasks,
    raw_request,
    raw_welcome,
    text_frame,
    wait_until,
)
from .wsclient import RawClient, connect

CYCLES = 200

pytestmark = pytest.mark.usefixtures("server_errors")


async def _one_cycle(port: int, rng: random.Random, i: int) -> None:
    """Open a connection, get some way into it, then drop the TCP connection with a RST."""
    stage = rng.choice(["tcp", "half-head", "handshake", "welcome", "subscribe", "subscribe-ack", "publish"])
    if stage in ("tcp", "half-head"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        if stage == "half-head":
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpg")
        abort(RawClient(stream))
        return
    raw = await RawClient.connect(port, rng.choice(["/", "/echo"]) if stage == "handshake" else "/")
    if stage != "handshake":
        await raw_welcome(raw)
    if stage in ("subscribe", "subscribe-ack"):
        reply = await raw_request(
            raw, {"type": "subscribe", "id": 1, "channel": f"leak{i % 7}", "ack": stage == "subscribe-ack"}
        )
        assert reply["type"] == "subscribed", reply
    elif stage == "publish":
        # Fire and forget: the connection dies with its reply unread (or not yet written).
        await raw.send_frame(0x1, text_frame({"type": "publish", "id": 2, "channel": f"leak{i % 7}", "data": i}))
    abort(raw)


async def test_no_tasks_leak_over_connect_abort_cycles(start_server):
    running = await start_server(ack_timeout=0.05)
    server = running.server
    # A subscriber that stays, so publishes in the cycles have someone to write to.
    async with connect(running.url) as witness:
        for n in range(7):
            await witness.subscribe(f"leak{n}")
        await wait_until(lambda: server.websockets == 1 and server.sockets == 1, what="a quiet server")
        baseline = count_tasks()
        probe = await RawClient.connect(running.port)  # the count does see a connection's tasks
        await raw_welcome(probe)
        assert count_tasks() == baseline + 1  # the socket handler, which is the connection's reader
        abort(probe)
        rng = random.Random(20240517)
        with trio.fail_after(60):
            for i in range(CYCLES):
                await _one_cycle(running.port, rng, i)
        await wait_until(lambda: server.websockets == 1 and server.sockets == 1, what="every aborted connection to end")
        await wait_until(lambda: count_tasks() == baseline, what=f"the task count to return to {baseline}")
        assert len(server.connections) == 1
        for n in range(7):  # every subscription of an aborted connection was detached from the hub
            stream = server.hub.broadcast(f"leak{n}")
            assert len(stream.receivers) == 1, stream.receivers
        # The witness saw every message the aborted publishers got in, once, and still works.
        expected = {(f"leak{n}", seq) for n in range(7) for seq in range(1, server.hub.broadcast(f"leak{n}").head + 1)}
        got = [(m["channel"], m["seq"]) for m in await witness.messages(len(expected))]
        assert sorted(got) == sorted(expected)
        assert (await witness.publish("leak0", "end"))["seq"] == server.hub.broadcast("leak0").head
    await wait_until(lambda: server.websockets == 0 and server.sockets == 0, what="the witness to close")
    assert count_tasks() < baseline
