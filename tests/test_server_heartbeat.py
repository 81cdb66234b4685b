"""Heartbeat: a client that stops answering pings is closed with 4000; one that answers stays."""

from __future__ import annotations

import pytest
import trio

from .test_server_support import metric, raw_welcome, server_errors, wait_until  # noqa: F401 (a fixture)
from .wsclient import RawClient, connect

FAST = dict(heartbeat_interval=0.1, heartbeat_timeout=0.2)

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
