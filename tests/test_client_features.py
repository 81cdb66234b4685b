"""The SDK's shell end to end: backpressure to a slow consumer close, failover between URLs,
bearer tokens (header, in-band refresh, 4001 and 4003, against a tiny fake server) and
permessage-deflate (offered, and declined by today's server)."""

from __future__ import annotations

import base64
import functools
import json
import socket
import time

import anyio
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Request,
    TextMessage,
)

import wsnursery.client as wc
from wsnursery.client.transport import open_transport

from .helpers import metric

TIMEOUT = 20
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "request_timeout": 0.5}


# ----------------------------------------------------------------------------- backpressure


async def test_a_subscriber_that_stops_reading_is_closed_4008_and_resumes(start_server):
    """The application stops reading: the SDK stops reading (so stops acking), the server's
    unacked window fills and it closes the subscriber with 4008; once the application reads
    again the SDK reconnects and resumes with since: nothing lost, nothing repeated."""
    running = await start_server(max_unacked=8, outbound_queue_size=8)
    count = 200
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(running.url, **FAST) as subscriber, wc.connect(running.url, **FAST) as publisher:
            async with subscriber.subscribe("stuck", buffer_size=4) as messages:
                for i in range(count):
                    await publisher.publish("stuck", i)
                while metric(running.server, "wsnursery_slow_consumer_closes_total") == 0:
                    await anyio.sleep(0.01)  # wait for the server's verdict (state, not time)
                assert subscriber.reading_paused
                assert len(messages) == 4 + 1  # the stream's 4, and the one the reader holds
                assert subscriber.stats.reconnects == 0  # the close is not even read yet
                got = [await messages.receive() for _ in range(count)]
            assert all(isinstance(item, wc.Message) for item in got)
            assert [m.data for m in got] == list(range(count))
            assert [m.seq for m in got] == list(range(1, count + 1))
            assert subscriber.stats.reconnects >= 1 and subscriber.stats.gaps == 0


# ----------------------------------------------------------------------------- failover


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connect_skips_an_unreachable_node(start_server):
    dead = f"ws://127.0.0.1:{_unused_port()}/"
    live = await start_server()
    with anyio.fail_after(TIMEOUT):
        async with wc.connect([dead, live.url], **FAST) as client:
            assert client.url == live.url
            assert (client.stats.connect_failures, client.stats.connects) == (1, 1)
            async with client.subscribe("fo") as messages:
                await client.publish("fo", "hello")
                assert (await messages.receive()).data == "hello"


@pytest.mark.parametrize("urls", ["http://127.0.0.1:1/", ["ws://127.0.0.1:1/", "127.0.0.1:2"], [], [b"ws://x/"]])
async def test_bad_urls_are_refused_at_once(urls):
    with pytest.raises(ValueError):
        async with wc.connect(urls):
            pass  # pragma: no cover


async def test_a_node_that_goes_away_fails_over_to_the_next_with_since(start_server):
    """Node A shuts down; the client tries A again, then B, and resubscribes there with
    ``since``. Two memory hubs are two streams, so B reports the epoch change as a Gap
    (a cluster engine would resume the same stream): proof that ``since`` went along."""
    node_a = await start_server(shutdown_timeout=0.5)
    node_b = await start_server()
    with anyio.fail_after(TIMEOUT):
        async with wc.connect([node_a.url, node_b.url], **FAST) as client:
            async with client.subscribe("fo.move") as messages:
                first = await client.publish("fo.move", "on A")
                assert (await messages.receive()).data == "on A"
                node_a.server.shutdown()
                gap = await messages.receive()
                assert isinstance(gap, wc.Gap) and gap.reason == "epoch_changed"
                assert gap.expected_seq == first.seq + 1
                assert client.url == node_b.url
                await client.publish("fo.move", "on B")
                assert (await messages.receive()).data == "on B"
            assert client.stats.reconnects == 1 and client.stats.connect_failures >= 1


# ----------------------------------------------------------------------------- tokens


def jwt(exp: float, sub: str = "alice") -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part({'sub': sub, 'exp': exp})}.c2ln"


class FakeServer:
    """Enough of a v1.1 server for the token tests: records each upgrade's Authorization
    header and each refresh, answers refresh with refreshed, and closes on demand."""

    def __init__(self, close_with: int | None = None) -> None:
        self.close_with = close_with  # close the first connection with this code
        self.headers: list[str | None] = []
        self.refreshes: list[str] = []
        self.refreshed = trio.Event()
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        number = self.connections
        self.connections += 1
        while True:
            ws.receive_data(await stream.receive_some(65536))
            events = list(ws.events())
            if any(isinstance(e, Request) for e in events):
                break
        (request,) = [e for e in events if isinstance(e, Request)]
        headers = dict(request.extra_headers)
        auth = headers.get(b"authorization")
        self.headers.append(auth.decode() if auth is not None else None)
        await stream.send_all(ws.send(AcceptConnection(subprotocol="wsnursery.v1.json")))
        welcome = {"type": "welcome", "protocol": 1, "server": "fake", "heartbeat": 60, "max_message_size": 2**20}
        await stream.send_all(ws.send(TextMessage(json.dumps(welcome))))
        if self.close_with is not None and number == 0:
            await stream.send_all(ws.send(CloseConnection(self.close_with, "by the fake")))
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    if ws.state.name == "REMOTE_CLOSING":
                        await stream.send_all(ws.send(event.response()))
                    return
                if isinstance(event, TextMessage):
                    frame = json.loads(event.data)
                    if frame.get("type") == "refresh":
                        self.refreshes.append(frame["token"])
                        reply = {"type": "refreshed", "id": frame["id"], "exp": time.time() + 3600}
                        await stream.send_all(ws.send(TextMessage(json.dumps(reply))))
                        self.refreshed.set()

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"


async def test_a_fixed_token_goes_in_the_authorization_header(nursery):
    fake = FakeServer()
    url = await fake.start(nursery)
    token = jwt(time.time() + 3600)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(url, token=token, encoding="json", **FAST) as client:
            assert client.connected
    assert fake.headers == [f"Bearer {token}"]


async def test_a_token_callable_is_refreshed_in_band_before_exp(nursery):
    fake = FakeServer()
    url = await fake.start(nursery)
    issued: list[str] = []

    async def fresh_token() -> str:  # async callables work; plain ones too
        issued.append(jwt(time.time() + 2.0, sub=f"alice{len(issued)}"))
        return issued[-1]

    with anyio.fail_after(TIMEOUT):
        async with wc.connect(url, token=fresh_token, token_refresh_margin=1.5, encoding="json", **FAST) as client:
            await fake.refreshed.wait()  # due 0.5 s in: exp 2 s away, margin 1.5 s
            while client.stats.token_refreshes == 0:
                await anyio.sleep(0.01)  # the refreshed reply is on its way back
    assert fake.headers == [f"Bearer {issued[0]}"]
    assert fake.refreshes == [issued[1]]


async def test_close_4001_reconnects_with_a_fresh_token_from_the_callable(nursery):
    fake = FakeServer(close_with=4001)
    url = await fake.start(nursery)
    issued: list[str] = []

    def fresh_token() -> str:
        issued.append(jwt(time.time() + 3600, sub=f"alice{len(issued)}"))
        return issued[-1]

    with anyio.fail_after(TIMEOUT):
        async with wc.connect(url, token=fresh_token, encoding="json", **FAST) as client:
            while client.stats.reconnects == 0:
                await anyio.sleep(0.01)
    assert fake.headers[:2] == [f"Bearer {issued[0]}", f"Bearer {issued[1]}"]


async def test_close_4001_with_a_fixed_token_ends_the_client(nursery):
    fake = FakeServer(close_with=4001)
    url = await fake.start(nursery)
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(wc.TokenExpired) as info:
            async with wc.connect(url, token=jwt(0), encoding="json", **FAST) as client:
                await client.publish("x", 1)  # waits: the close comes instead of a reply
    assert info.value.code == 4001 and fake.connections == 1


async def test_close_4003_ends_the_client_with_disconnected(nursery):
    fake = FakeServer(close_with=4003)
    url = await fake.start(nursery)
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(wc.Disconnected) as info:
            async with wc.connect(url, token=lambda: jwt(time.time() + 60), encoding="json", **FAST) as client:
                await client.publish("x", 1)  # waits: the close comes instead of a reply
    assert info.value.code == 4003 and "disconnected" in str(info.value)
    assert fake.connections == 1


def test_a_token_must_be_one_line():
    with pytest.raises(ValueError, match="one-line"):
        wc.Options(token="abc\r\nX-Injected: 1")


# ----------------------------------------------------------------------------- compression


@pytest.mark.parametrize("server_compression", ["off", "on"])
async def test_compression_is_offered_and_declined_or_accepted_by_the_server(start_server, server_compression):
    """A server with --compression off declines the offer; ours by default accepts it."""
    running = await start_server(compression=server_compression)
    with anyio.fail_after(TIMEOUT):
        transport = await open_transport(running.echo_url, [], compression=True)
        try:
            assert transport.compressed is (server_compression == "on")
            transport.queue_message("plain " * 100)
            await transport.flush()
            assert await transport.receive() == "plain " * 100
        finally:
            await transport.aclose()
        async with wc.connect(running.url, compression=True) as client, client.subscribe("z") as messages:
            await client.publish("z", "x" * 1000)
            assert (await messages.receive()).data == "x" * 1000


def _websockets_echo_roundtrip(compression: bool) -> tuple[bool, int]:
    """Against the websockets library's server (it negotiates permessage-deflate)."""
    websockets = pytest.importorskip("websockets.asyncio.server")
    text = "compressible " * 20_000

    async def main() -> tuple[bool, int]:
        async def echo(connection) -> None:
            async for message in connection:
                await connection.send(message)

        async with websockets.serve(echo, "127.0.0.1", 0, max_size=2**22) as server:
            port = server.sockets[0].getsockname()[1]
            transport = await open_transport(f"ws://127.0.0.1:{port}/", [], compression=compression)
            try:
                transport.queue_message(text)
                await transport.flush()
                assert await transport.receive() == text
                return transport.compressed, transport.bytes_in
            finally:
                await transport.aclose()

    return anyio.run(main, backend="asyncio")


def test_compression_is_negotiated_with_a_server_that_accepts_it():
    compressed, bytes_in = _websockets_echo_roundtrip(True)
    assert compressed and bytes_in < 20_000  # 260 kB of text came back deflated
    plain, plain_bytes_in = _websockets_echo_roundtrip(False)
    assert not plain and plain_bytes_in > 260_000
