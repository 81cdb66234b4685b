"""End to end: trio-websocket client -> fault proxy -> trio-websocket echo server."""

import functools
import socket

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    DisconnectionTimeout,
    open_websocket,
    serve_websocket,
)
from wsproto.frame_protocol import FrameProtocol

from harness.faults import FaultSchedule
from harness.proxy import FaultProxy
from harness.wsframes import FrameSplitter

HOST = "127.0.0.1"
TIMEOUT = 5  # seconds; generous ceiling, every wait fails loudly past it
HEARTBEAT_TIMEOUT = 0.3
END = "end of messages"
NO_FAULTS = FaultSchedule(seed=0, failure_rate=0.0)


async def _echo(request) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def _start(nursery: trio.Nursery, schedule: FaultSchedule) -> FaultProxy:
    server = await nursery.start(serve_websocket, _echo, HOST, 0, None)
    proxy = FaultProxy(HOST, server.port, schedule)
    port = await nursery.start(proxy.run)
    assert port == proxy.port
    return proxy


def _client(proxy: FaultProxy, **options):
    return open_websocket(HOST, proxy.port, "/", use_ssl=False, connect_timeout=TIMEOUT, **options)


async def _round_trip(ws, messages: list) -> list:
    """Send ``messages`` then END concurrently with reading echoes up to END."""
    received = []
    async with trio.open_nursery() as nursery:

        async def send_all():
            for message in [*messages, END]:
                await ws.send_message(message)

        nursery.start_soon(send_all)
        with trio.fail_after(TIMEOUT):
            while (message := await ws.get_message()) != END:
                received.append(message)
    return received


def _numbered(count: int) -> list[str]:
    return [f"message {i}" for i in range(count)]


async def _wait_idle(proxy: FaultProxy) -> None:
    with trio.fail_after(TIMEOUT):
        await proxy.wait_idle()


async def test_without_faults_everything_round_trips(nursery):
    proxy = await _start(nursery, NO_FAULTS)
    messages = [*_numbered(10), b"\x00binary", "x" * 126, b"y" * 70_000, ""]
    async with _client(proxy) as ws:
        with trio.fail_after(TIMEOUT):
            await ws.ping()
        assert await _round_trip(ws, messages) == messages
    await _wait_idle(proxy)
    assert proxy.connections_handled == 1
    assert proxy.stats.total == 0


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
async def test_drop_removes_exactly_one_message(nursery, direction):
    proxy = await _start(nursery, FaultSchedule.forced({(0, direction, 3): "drop"}))
    messages = _numbered(8)
    async with _client(proxy) as ws:
        with trio.fail_after(TIMEOUT):
            await ws.ping()  # control frames are not counted as data frames
        assert await _round_trip(ws, messages) == messages[:3] + messages[4:]
    assert proxy.stats.count("drop", direction) == proxy.stats.total == 1


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
async def test_duplicate_delivers_exactly_one_message_twice(nursery, direction):
    proxy = await _start(nursery, FaultSchedule.forced({(0, direction, 5): "duplicate"}))
    messages = _numbered(8)
    async with _client(proxy) as ws:
        received = await _round_trip(ws, messages)
    assert received == messages[:6] + messages[5:]
    assert proxy.stats.count("duplicate", direction) == 1


async def test_slice_still_round_trips_exactly(nursery):
    messages = [*_numbered(4), b"z" * 70_000, "w" * 200, b""]
    forced = {
        (0, direction, frame): "slice" for direction in ("upstream", "downstream") for frame in range(len(messages) + 1)
    }
    proxy = await _start(nursery, FaultSchedule.forced(forced))
    async with _client(proxy) as ws:
        assert await _round_trip(ws, messages) == messages
    assert proxy.stats.count("slice") == len(forced)


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
async def test_delay_holds_a_frame_back_and_keeps_order(nursery, direction):
    spike = 0.2
    schedule = FaultSchedule.forced({(0, direction, 2): "delay"}, delay_spike=spike)
    proxy = await _start(nursery, schedule)
    messages = _numbered(10)
    async with _client(proxy) as ws:
        started = trio.current_time()
        assert await _round_trip(ws, messages) == messages
        assert trio.current_time() - started >= spike
    assert proxy.stats.count("delay", direction) == 1


async def test_reset_aborts_the_client_connection(nursery):
    proxy = await _start(nursery, FaultSchedule.forced({(0, "downstream", 2): "reset"}))
    messages = _numbered(5)
    received = []
    async with _client(proxy) as ws:
        for message in messages:
            await ws.send_message(message)
        with trio.fail_after(TIMEOUT), pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(await ws.get_message())
    assert closed.value.reason.code == 1006  # abnormal closure: no close frame
    assert received == messages[: len(received)]
    assert len(received) <= 2
    await _wait_idle(proxy)
    assert proxy.stats.count("reset", "downstream") == 1


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
async def test_stall_is_detected_by_a_heartbeat_and_ends_when_a_side_closes(nursery, direction):
    proxy = await _start(nursery, FaultSchedule.forced({(0, direction, 0): "stall"}))
    with pytest.raises(DisconnectionTimeout):  # no close reply through a stall
        async with _client(proxy, disconnect_timeout=HEARTBEAT_TIMEOUT) as ws:
            with trio.fail_after(TIMEOUT):
                await ws.ping()  # the link is healthy before the stall
            await ws.send_message("the frame that stalls the link")
            with trio.move_on_after(HEARTBEAT_TIMEOUT) as heartbeat:
                await ws.ping()
            assert heartbeat.cancelled_caught, "pong arrived through a stalled link"
    await _wait_idle(proxy)  # the client closing ended the stalled connection
    assert proxy.stats.count("stall", direction) == 1


async def test_connections_are_indexed_in_accept_order(nursery):
    proxy = await _start(nursery, FaultSchedule.forced({(1, "downstream", 0): "drop"}))
    messages = _numbered(3)
    for expected in (messages, messages[1:], messages):
        async with _client(proxy) as ws:
            assert await _round_trip(ws, messages) == expected
    await _wait_idle(proxy)
    assert proxy.connections_handled == 3


async def test_random_schedule_is_reproducible_across_concurrent_connections(nursery):
    schedule = FaultSchedule(seed=11, failure_rate=0.3, kinds={"slice", "delay"}, delay_spike=0.01)
    proxy = await _start(nursery, schedule)
    messages = _numbered(30)
    clients = 3

    async def client():
        async with _client(proxy) as ws:
            assert await _round_trip(ws, messages) == messages

    async with trio.open_nursery() as clients_nursery:
        for _ in range(clients):
            clients_nursery.start_soon(client)
    await _wait_idle(proxy)

    expected = FaultSchedule(seed=11, failure_rate=0.3, kinds={"slice", "delay"})
    predicted = [
        expected.decide(conn, direction, frame)
        for conn in range(clients)
        for direction in ("upstream", "downstream")
        for frame in range(len(messages) + 1)  # + END
    ]
    assert proxy.stats.total == sum(fault is not None for fault in predicted) > 0


async def _tcp_echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def _start_tcp_echo(nursery: trio.Nursery) -> int:
    serve = functools.partial(trio.serve_tcp, host=HOST)
    listeners = await nursery.start(serve, _tcp_echo, 0)
    return listeners[0].socket.getsockname()[1]


async def test_masked_frame_is_dropped_whole_at_byte_level(nursery):
    """A raw TCP echo upstream: the proxy removes exactly one masked frame's bytes."""

    schedule = FaultSchedule.forced({(0, "upstream", 2): "drop"})
    proxy = FaultProxy(HOST, await _start_tcp_echo(nursery), schedule)
    await nursery.start(proxy.run)

    head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    protocol = FrameProtocol(client=True, extensions=[])
    frames = [bytes(protocol.send_data(f"frame {i}" * i)) for i in range(5)]
    ping = bytes(protocol.ping(b"hb"))
    sent = head + frames[0] + ping + b"".join(frames[1:])
    expected = head + frames[0] + ping + frames[1] + b"".join(frames[3:])

    stream = await trio.open_tcp_stream(HOST, proxy.port)
    async with stream:
        await stream.send_all(sent)
        echoed = bytearray()
        with trio.fail_after(TIMEOUT):
            while len(echoed) < len(expected):
                echoed += await stream.receive_some()
    assert bytes(echoed) == expected
    chunks = FrameSplitter().feed(bytes(echoed))
    expected_frames = [frames[0], ping, frames[1], *frames[3:]]
    assert [chunk.raw for chunk in chunks[1:]] == expected_frames


async def test_unreachable_upstream_aborts_the_client(nursery):
    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind((HOST, 0))
        dead_port = probe.getsockname()[1]
    proxy = FaultProxy(HOST, dead_port, NO_FAULTS)
    await nursery.start(proxy.run)
    stream = await trio.open_tcp_stream(HOST, proxy.port)
    async with stream:
        with trio.fail_after(TIMEOUT):
            try:
                assert await stream.receive_some() == b""
            except trio.BrokenResourceError:
                pass  # RST
    await _wait_idle(proxy)


async def test_reset_is_a_tcp_rst_not_a_clean_close(nursery):
    schedule = FaultSchedule.forced({(0, "upstream", 1): "reset"})
    proxy = FaultProxy(HOST, await _start_tcp_echo(nursery), schedule)
    await nursery.start(proxy.run)
    protocol = FrameProtocol(client=True, extensions=[])
    frames = b"".join(bytes(protocol.send_data(b"payload")) for _ in range(3))
    stream = await trio.open_tcp_stream(HOST, proxy.port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\n\r\n" + frames)
        with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
            while await stream.receive_some():  # b"" would be a clean FIN
                pass
    await _wait_idle(proxy)
