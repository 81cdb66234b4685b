"""Interoperability with a WebSocket client this project did not write: ``websockets``.

The sync client runs in a worker thread (``trio.to_thread.run_sync``) while the server runs in
the test's Trio loop; every receive has a timeout, so a silent server fails the test.
"""

from __future__ import annotations

import json

import cbor2
import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

TIMEOUT = 10

pytestmark = pytest.mark.usefixtures("server_errors")


def _open(url: str, subprotocols: list[str] | None = None):
    return connect(url, subprotocols=subprotocols, open_timeout=TIMEOUT, close_timeout=TIMEOUT)


def _pubsub_json(url: str) -> tuple[dict, dict, dict, list[dict]]:
    with _open(url, ["wsnursery.v1.json"]) as sub, _open(url) as pub:
        assert sub.subprotocol == "wsnursery.v1.json"
        assert pub.subprotocol is None  # nothing offered: JSON, no header
        welcome = json.loads(sub.recv(timeout=TIMEOUT))
        json.loads(pub.recv(timeout=TIMEOUT))
        sub.send(json.dumps({"type": "subscribe", "id": 1, "channel": "interop"}))
        subscribed = json.loads(sub.recv(timeout=TIMEOUT))
        published = []
        for i in range(3):
            pub.send(json.dumps({"type": "publish", "id": 10 + i, "channel": "interop", "data": {"i": i}}))
            published.append(json.loads(pub.recv(timeout=TIMEOUT)))
        messages = [json.loads(sub.recv(timeout=TIMEOUT)) for _ in range(3)]
        return welcome, subscribed, published[-1], messages


async def test_two_websockets_clients_exchange_json_messages(server):
    welcome, subscribed, published, messages = await trio.to_thread.run_sync(_pubsub_json, server.url)
    assert welcome["type"] == "welcome" and welcome["protocol"] == 1
    assert (subscribed["type"], subscribed["id"], subscribed["seq"]) == ("subscribed", 1, 0)
    assert (published["type"], published["id"], published["seq"]) == ("published", 12, 3)
    assert [(m["type"], m["seq"], m["data"]) for m in messages] == [("message", i + 1, {"i": i}) for i in range(3)]
    assert all(m["epoch"] == subscribed["epoch"] for m in messages)


def _pubsub_cbor(url: str) -> tuple[object, object]:
    with _open(url, ["wsnursery.v1.cbor"]) as sub, _open(url, ["x-unknown", "wsnursery.v1.cbor"]) as pub:
        assert sub.subprotocol == pub.subprotocol == "wsnursery.v1.cbor"
        welcome = sub.recv(timeout=TIMEOUT)
        pub.recv(timeout=TIMEOUT)
        sub.send(cbor2.dumps({"type": "subscribe", "id": 1, "channel": "interop.cbor"}))
        sub.recv(timeout=TIMEOUT)
        pub.send(cbor2.dumps({"type": "publish", "id": 2, "channel": "interop.cbor", "data": b"\x00\xffbin"}))
        pub.recv(timeout=TIMEOUT)
        return welcome, sub.recv(timeout=TIMEOUT)


async def test_two_websockets_clients_exchange_cbor_messages(server):
    welcome, message = await trio.to_thread.run_sync(_pubsub_cbor, server.url)
    assert isinstance(welcome, bytes) and cbor2.loads(welcome)["type"] == "welcome"
    assert isinstance(message, bytes)  # binary frames on the CBOR subprotocol
    frame = cbor2.loads(message)
    assert (frame["type"], frame["seq"], frame["data"]) == ("message", 1, b"\x00\xffbin")


def _echo(url: str) -> list[object]:
    with _open(url) as ws:
        got = []
        for message in ["hello", "", "\U0001f600 astral", b"\x00\x01\xff", b"", b"x" * 70_000]:
            ws.send(message)
            got.append(ws.recv(timeout=TIMEOUT))
        return got


async def test_echo_keeps_text_as_text_and_binary_as_binary(server):
    got = await trio.to_thread.run_sync(_echo, server.echo_url)
    assert got == ["hello", "", "\U0001f600 astral", b"\x00\x01\xff", b"", b"x" * 70_000]
    assert [type(m) for m in got] == [str, str, str, bytes, bytes, bytes]


def _close_code_on_shutdown(url: str, subscribed: trio.Event, token) -> int | None:
    with _open(url) as ws:
        ws.recv(timeout=TIMEOUT)
        trio.from_thread.run_sync(subscribed.set, trio_token=token)
        try:
            ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        return -1


async def test_websockets_client_sees_1001_on_server_shutdown(server):
    ready = trio.Event()
    token = trio.lowlevel.current_trio_token()
    async with trio.open_nursery() as nursery:
        results = []

        async def client():
            results.append(await trio.to_thread.run_sync(_close_code_on_shutdown, server.url, ready, token))

        nursery.start_soon(client)
        with trio.fail_after(TIMEOUT):
            await ready.wait()
        server.server.shutdown()
    assert results == [1001]
