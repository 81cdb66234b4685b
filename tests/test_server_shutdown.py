"""Graceful shutdown of ``python -m wsnursery serve`` on SIGTERM and SIGINT (a real subprocess)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio_websocket

from wsnursery.config import Config
from wsnursery.server import Server

from .conftest import TEST_DEFAULTS
from .helpers import http_get, wait_until
from .wsclient import RawClient, connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(rb"listening on ws://127\.0\.0\.1:(\d+)/")


@attrs.define
class Served:
    process: trio.Process
    port: int
    stderr: bytearray

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, within: float) -> int:
        with trio.fail_after(within):
            return await self.process.wait()


@contextlib.asynccontextmanager
async def serve(*flags: str) -> AsyncIterator[Served]:
    """Run the CLI server on a free port; yields once it logged where it listens."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "wsnursery", "serve", "--port", "0", *flags],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    stderr = bytearray()
    try:
        async with trio.open_nursery() as nursery:

            async def pump() -> None:
                while chunk := await process.stderr.receive_some(65536):
                    stderr.extend(chunk)

            nursery.start_soon(pump)
            await wait_until(
                lambda: LISTENING.search(stderr) or process.poll() is not None, timeout=20, what="the server to listen"
            )
            match = LISTENING.search(stderr)
            assert match, f"server did not start: {stderr.decode(errors='replace')}"
            yield Served(process, int(match.group(1)), stderr)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def _close_code(client) -> int:
    with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await client.ws.get_message()
    return closed.value.reason.code


async def test_sigterm_drains_with_1001_healthz_503_and_exits_0():
    async with serve("--shutdown-timeout", "1.5", "--close-timeout", "5") as served, connect(served.url) as client:
        await client.subscribe("bye")
        assert (await http_get(served.port, "/healthz")).status == 200
        # A client that never answers the close keeps the server draining until shutdown_timeout.
        stubborn = await RawClient.connect(served.port)
        signalled = trio.current_time()
        served.signal(signal.SIGTERM)
        assert await _close_code(client) == 1001
        assert await stubborn.read_close_code() == 1001  # read, never answered
        health = await http_get(served.port, "/healthz")
        assert health.status == 503
        assert health.json()["status"] == "draining"
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            async with connect(served.url):
                pass  # pragma: no cover
        assert rejected.value.status_code == 503
        assert await served.exit_code(within=1.5 + 5) == 0
        elapsed = trio.current_time() - signalled
        await stubborn.aclose()
    assert 1.3 <= elapsed < 1.5 + 5, elapsed
    log = served.stderr.decode()
    assert "shutting down" in log and "stopped" in log, log


async def test_sigint_closes_clients_1001_and_exits_0():
    async with serve("--shutdown-timeout", "5") as served:
        async with connect(served.url) as one, connect(served.url) as two:
            await one.subscribe("bye")
            await two.publish("bye", "last")  # delivered before the close
            signalled = trio.current_time()
            served.signal(signal.SIGINT)
            [message] = await one.messages(1)
            assert message["data"] == "last"
            assert await _close_code(one) == 1001
            assert await _close_code(two) == 1001
        # Everyone answered the close: no need to wait out shutdown_timeout.
        assert await served.exit_code(within=5 + 5) == 0
        assert trio.current_time() - signalled < 4
    assert "Traceback" not in served.stderr.decode()


async def test_second_signal_stops_at_once():
    async with serve("--shutdown-timeout", "30", "--close-timeout", "30") as served:
        stubborn = await RawClient.connect(served.port)
        served.signal(signal.SIGTERM)
        assert await stubborn.read_close_code() == 1001  # draining now, and would for 30 s
        signalled = trio.current_time()
        served.signal(signal.SIGTERM)
        assert await served.exit_code(within=10) == 0
        assert trio.current_time() - signalled < 5
        await stubborn.aclose()


@pytest.mark.usefixtures("server_errors")
async def test_shutdown_timeout_bounds_the_drain_even_past_close_timeout():
    """In process: clients that never answer the close cannot hold the server past shutdown_timeout."""
    config = Config(**(TEST_DEFAULTS | {"shutdown_timeout": 0.3, "close_timeout": 30.0}))
    server = Server(config)
    async with trio.open_nursery() as nursery:
        [port] = await nursery.start(server.run)
        stubborn = [await RawClient.connect(port, path) for path in ("/", "/echo")]
        await wait_until(lambda: len(server.connections) == 2, what="both connections to be served")
        started = trio.current_time()
        server.shutdown()
        for raw in stubborn:
            assert await raw.read_close_code() == 1001
        with trio.fail_after(5):
            await wait_until(lambda: server.websockets == 0, what="the drain to end")
    elapsed = trio.current_time() - started  # server.run has returned: the nursery is done
    assert 0.25 <= elapsed < 2, elapsed
    for raw in stubborn:
        await raw.aclose()
