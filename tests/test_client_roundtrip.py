"""Client SDK against the real server: round trips, both encodings, trio and asyncio, errors."""

from __future__ import annotations

import contextlib
import functools
import queue
import threading

import anyio
import pytest
import trio

import wsnursery.client as wc
from wsnursery.config import Config
from wsnursery.server import Server

from .conftest import TEST_DEFAULTS

TIMEOUT = 10
PAYLOAD = {"step": 1, "blob": b"\x00\xffbinary\x80", "nested": [b"", {"x": b"\x01"}], "text": "h\u00e9"}


async def round_trip(url: str, encoding: str) -> None:
    """The package docstring's example, plus bytes inside data and a second message."""
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(url, encoding=encoding) as client:
            async with client.subscribe("jobs.42") as messages:
                first = await client.publish("jobs.42", PAYLOAD)
                second = await client.publish("jobs.42", b"raw bytes")
                assert isinstance(first, wc.Published)
                assert (second.epoch, second.seq) == (first.epoch, first.seq + 1)
                received = []
                async for message in messages:
                    received.append(message)
                    if len(received) == 2:
                        break
            assert [m.data for m in received] == [PAYLOAD, b"raw bytes"]
            assert [(m.epoch, m.seq) for m in received] == [(first.epoch, first.seq), (second.epoch, second.seq)]
            assert all(isinstance(m, wc.Message) and m.channel == "jobs.42" for m in received)
            assert isinstance(received[0].ts, int)
            stats = client.stats
            assert (stats.delivered, stats.published, stats.reconnects, stats.gaps) == (2, 2, 0, 0)


@pytest.mark.parametrize("encoding", ["json", "cbor"])
async def test_round_trip_under_trio(start_server, encoding):
    server = await start_server()
    await round_trip(server.url, encoding)


@contextlib.contextmanager
def server_in_thread(**overrides):
    """A real server in its own thread running trio, for tests whose client runs on asyncio."""
    started: queue.Queue = queue.Queue()

    async def main() -> None:
        server = Server(Config(**(TEST_DEFAULTS | overrides)))
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(server.run)
            started.put((server, trio.lowlevel.current_trio_token(), ports[0]))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # report a failed start instead of hanging the test
            started.put(exc)

    thread = threading.Thread(target=run, name="wsnursery-test-server", daemon=True)
    thread.start()
    item = started.get(timeout=TIMEOUT)
    if isinstance(item, BaseException):
        raise item
    server, token, port = item
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        trio.from_thread.run_sync(server.shutdown, trio_token=token)
        thread.join(TIMEOUT)
        assert not thread.is_alive()


@pytest.mark.parametrize("encoding", ["json", "cbor"])
def test_round_trip_under_asyncio(encoding):
    with server_in_thread() as url:
        anyio.run(round_trip, url, encoding, backend="asyncio")


def test_reconnect_under_asyncio():
    """The reconnect path (abort, resubscribe with since, publish retry) on asyncio too."""

    async def scenario(url: str) -> None:
        with anyio.fail_after(TIMEOUT):
            async with wc.connect(url, backoff_base=0.01, seed=1) as client:
                async with client.subscribe("asyncio.chan") as messages:
                    for i in range(20):
                        if i % 5 == 0 and i:
                            client.abort()  # this publish needs the next connection
                        await client.publish("asyncio.chan", i)
                    got = []
                    async for message in messages:
                        got.append(message.data)
                        if len(got) == 20:
                            break
                assert got == list(range(20))
                assert (client.stats.aborts, client.stats.reconnects) == (3, 3)

    with server_in_thread() as url:
        anyio.run(scenario, url, backend="asyncio")


async def test_bytes_cross_encoding(start_server):
    """Bytes published over CBOR reach a JSON subscriber as bytes again (and back)."""
    server = await start_server()
    with anyio.fail_after(TIMEOUT):
        async with (
            wc.connect(server.url, encoding="json") as json_client,
            wc.connect(server.url, encoding="cbor") as cbor_client,
        ):
            async with (
                json_client.subscribe("x.bytes") as json_messages,
                cbor_client.subscribe("x.bytes") as cbor_messages,
            ):
                await cbor_client.publish("x.bytes", {"b": b"\x00\x01"})
                await json_client.publish("x.bytes", [b"\xfe"])
                for messages in (json_messages, cbor_messages):
                    assert (await messages.receive()).data == {"b": b"\x00\x01"}
                    assert (await messages.receive()).data == [b"\xfe"]


async def test_server_errors_reach_the_caller(start_server):
    server = await start_server()
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url) as client:
            with pytest.raises(wc.ServerError) as info:
                await client.publish("not a valid channel!", 1)
            assert info.value.code == "invalid_channel"
            with pytest.raises(wc.ServerError) as info:
                async with client.subscribe("#bad"):
                    pass  # pragma: no cover
            assert info.value.code == "invalid_channel"
            with pytest.raises(ValueError):
                await client.publish("ok", {1, 2})  # a set is outside the data model
            with pytest.raises(ValueError):
                async with client.subscribe("ok"), client.subscribe("ok"):
                    pass  # pragma: no cover
            # the client is still usable after all that
            async with client.subscribe("ok") as messages:
                await client.publish("ok", "still fine")
                assert (await messages.receive()).data == "still fine"


async def test_publish_too_big_is_refused_without_closing(start_server):
    server = await start_server(max_message_size=1024)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url) as client:
            with pytest.raises(ValueError, match="max_message_size"):
                await client.publish("big", b"x" * 2000)
            assert (await client.publish("big", b"x" * 100)).seq == 1
            assert client.stats.reconnects == 0


async def test_gap_is_reported_in_the_iteration(start_server):
    server = await start_server(history_size=8, outbound_queue_size=8, max_unacked=8)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url) as client:
            for i in range(20):
                last = await client.publish("gappy", i)
            # resume after seq 3: seqs 4..12 are no longer held (history of 8: 13..20)
            async with client.subscribe("gappy", since=(last.epoch, 3)) as messages:
                gap = await messages.receive()
                assert gap == wc.Gap("gappy", 4, 13, "history_exceeded")
                assert [(await messages.receive()).data for _ in range(8)] == list(range(12, 20))
            # a stream we held under another epoch: everything after it is reported lost
            async with client.subscribe("gappy", since=("old-epoch", 5)) as messages:
                gap = await messages.receive()
                assert (gap.reason, gap.expected_seq, gap.resumed_at_seq) == ("epoch_changed", 6, 13)
                assert (await messages.receive()).seq == 13
            assert client.stats.gaps == 2


async def test_backpressure_stops_reading(start_server):
    """A subscriber that does not read holds at most buffer_size messages; nothing is lost."""
    server = await start_server()
    count, size = 60, 4
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url) as subscriber, wc.connect(server.url) as publisher:
            async with subscriber.subscribe("slow", buffer_size=size) as messages:
                for i in range(count):
                    await publisher.publish("slow", i)
                while not subscriber.reading_paused:
                    await anyio.sleep(0.01)  # wait for the reader to stop (state, not time)
                # The stream holds buffer_size; the reader holds the one that did not fit.
                assert len(messages) == size + 1
                assert subscriber.stats.delivered == size + 1
                got = [(await messages.receive()).data for _ in range(count)]
                assert got == list(range(count))


async def test_publish_window_bounds_unconfirmed_publishes(start_server):
    server = await start_server()
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url, max_pending_publishes=3) as client:
            results = []

            async def publish(i: int) -> None:
                results.append((await client.publish("window", i)).seq)

            async with anyio.create_task_group() as group:
                for i in range(30):
                    group.start_soon(publish, i)
            assert sorted(results) == list(range(1, 31))
            assert client.session.pending_publishes == 0


async def test_exit_leaves_nothing_running(start_server):
    server = await start_server()
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url) as client:
            async with client.subscribe("bye") as messages:
                pass
        assert client._stopped.is_set()
        with pytest.raises(wc.Closed):
            await client.publish("bye", 1)
        with pytest.raises(wc.Closed):
            await messages.receive()
        # an exception in the body comes out as itself, not wrapped in a group
        with pytest.raises(KeyError):
            async with wc.connect(server.url):
                raise KeyError("boom")


async def test_policy_close_raises_forbidden(start_server):
    """Close 1008 (here: too many error frames) ends the client with Forbidden; no reconnect."""
    server = await start_server(max_errors=2)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url) as client:
            with pytest.raises(wc.ServerError):
                await client.publish("bad channel", 1)
            with pytest.raises(wc.ServerError):  # the 2nd error frame, then close 1008
                await client.publish("bad channel", 2)
            with pytest.raises(wc.Forbidden) as info:
                while True:  # until the close frame is read
                    await client.publish("fine", 3)
            assert info.value.close_code == 1008
            assert isinstance(client.error, wc.Forbidden)
            assert client.stats.reconnects == 0


async def test_http_403_on_handshake_raises_forbidden(nursery):
    async def refuse(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n")
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, refuse, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(wc.Forbidden) as info:
            async with wc.connect(f"ws://127.0.0.1:{port}/"):
                pass  # pragma: no cover
    assert info.value.close_code == 403


async def test_idle_connection_stays_up_on_heartbeats(start_server):
    """Both sides ping often; pings and pongs flow on an idle link, nobody times out."""
    server = await start_server(heartbeat_interval=0.05, heartbeat_timeout=0.3)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url, heartbeat_interval=0.05, heartbeat_timeout=0.3) as client:
            async with client.subscribe("idle") as messages:
                await anyio.sleep(0.6)  # the idle period under test, not a synchronisation
                assert client._conn is not None and client._conn.transport.pongs >= 3
                await client.publish("idle", "still here")
                assert (await messages.receive()).data == "still here"
            stats = client.stats
    assert (stats.reconnects, stats.heartbeat_timeouts) == (0, 0)
