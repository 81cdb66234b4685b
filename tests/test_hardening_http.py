"""Issue 12, item 11 (the HTTP edges): an HTTP/1.0 upgrade is refused, and every status line
carries its standard reason phrase."""

from __future__ import annotations

import base64
import os

import pytest
import trio

from wsnursery import handshake, http

from .helpers import TIMEOUT, http_request


def upgrade_head(version: str = "HTTP/1.1", ws_version: str = "13") -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / {version}\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {ws_version}"
    )


async def raw_answer(port: int, head: str) -> bytes:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(head.encode("latin-1") + b"\r\n\r\n")
            data = bytearray()
            while b"\r\n\r\n" not in data and (chunk := await stream.receive_some(65536)):
                data += chunk
    return bytes(data)


def test_an_http_1_0_upgrade_is_refused_with_505():
    head = http.parse_head(upgrade_head("HTTP/1.0").encode() + b"\r\n\r\n")
    assert head.version == (1, 0)
    with pytest.raises(http.HeadError) as error:
        handshake.check_upgrade(head)
    assert error.value.status == 505


@pytest.mark.parametrize("version, status", [("HTTP/2.0", 505), ("HTTP/1.x", 400), ("HTTP/1.10", 400)])
def test_request_line_versions(version, status):
    with pytest.raises(http.HeadError) as error:
        http.parse_head(f"GET / {version}\r\nHost: x\r\n\r\n".encode())
    assert error.value.status == status


@pytest.mark.parametrize(
    "status, phrase",
    [
        (426, "Upgrade Required"),
        (505, "HTTP Version Not Supported"),
        (431, "Request Header Fields Too Large"),
        (408, "Request Timeout"),
        (503, "Service Unavailable"),
    ],
)
def test_status_lines_carry_the_standard_phrase(status, phrase):
    assert http.response(status).startswith(f"HTTP/1.1 {status} {phrase}\r\n".encode())


async def test_the_server_answers_an_http_1_0_upgrade_505_and_still_serves_http_1_0_health(server):
    answer = await raw_answer(server.port, upgrade_head("HTTP/1.0"))
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer
    health = await http_request(server.port, "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1")
    assert health.status == 200


async def test_the_426_status_line_says_upgrade_required(server):
    answer = await raw_answer(server.port, upgrade_head(ws_version="8"))
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), answer
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer
