"""The opening handshake the server does itself (``wsnursery.handshake``): RFC 6455 §4.2."""

from __future__ import annotations

import pytest
import trio

from wsnursery import handshake

from .helpers import http_request, parse_http
from .wsclient import TIMEOUT, RawClient, masked_frame

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example


def _upgrade(path: str = "/echo", **overrides: str | None) -> str:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return "\r\n".join([f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())])


def test_accept_token_is_the_rfc_example():
    assert handshake.accept_token(RFC_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_101_carries_the_accept_token_and_the_chosen_subprotocol(server):
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            head = _upgrade("/", Sec_WebSocket_Protocol="nope, wsnursery.v1.cbor, wsnursery.v1.json")
            await stream.send_all(head.encode() + b"\r\n\r\n")
            data = bytearray()
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
    answer = parse_http(bytes(data))
    assert answer.status == 101
    assert answer.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert answer.headers["sec-websocket-protocol"] == "wsnursery.v1.cbor"
    assert answer.headers["upgrade"].lower() == "websocket"


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"Sec_WebSocket_Key": None}, 400),
        ({"Sec_WebSocket_Key": "c2hvcnQ="}, 400),  # 5 bytes, not 16
        ({"Sec_WebSocket_Key": "not base64 at all!!!"}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Sec_WebSocket_Version": "8"}, 426),
        ({"Sec_WebSocket_Version": None}, 426),
    ],
)
async def test_a_bad_upgrade_gets_a_clear_http_answer(server, overrides, status):
    answer = await http_request(server.port, _upgrade(**overrides))
    assert answer.status == status, answer
    if status == 426:
        assert answer.headers["sec-websocket-version"] == "13"


async def test_frames_sent_right_behind_the_head_are_not_lost(server):
    """A client may send its first frames in the same packet as the upgrade request."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        client = RawClient(stream)
        first = masked_frame(0x1, b"hello") + masked_frame(0x2, b"\x00\x01")
        await stream.send_all(_upgrade().encode() + b"\r\n\r\n" + first)
        assert (await client.read_head()).startswith(b"HTTP/1.1 101")
        assert await client.read_frame() == (0x1, b"hello")
        assert await client.read_frame() == (0x2, b"\x00\x01")
        await client.aclose()
