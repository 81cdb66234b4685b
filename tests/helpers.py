"""Helpers for the tests that run a server (this module holds no tests of its own).

- ``http_request``: one raw HTTP/1.1 request on a plain socket, the whole answer back;
- ``wait_until``: a condition polled on Trio checkpoints, bounded by ``fail_after``;
- ``metric``: one sample of a server's Prometheus registry;
- ``count_tasks``: live Trio tasks, walked from the root task;
- ``raw_request`` / ``text_frame``: a RawClient speaking just enough JSON to subscribe;
- ``server_errors``: a fixture (conftest provides it to every test) that fails the test if the server logged an error,
  which is how an exception escaping a connection's tasks shows.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from wsnursery.server import Server

from .wsclient import RawClient

TIMEOUT = 10


@attrs.frozen
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_request(port: int, head: str, body: bytes = b"") -> HttpAnswer:
    """Send ``head`` (without the blank line) and read until the server closes."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(head.encode("latin-1") + b"\r\n\r\n" + body)
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
    return parse_http(bytes(data))


async def http_get(port: int, path: str, **headers: str) -> HttpAnswer:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return await http_request(port, "\r\n".join(lines))


def parse_http(data: bytes) -> HttpAnswer:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP head in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), (headers, len(body))
    return HttpAnswer(int(status), headers, body)


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    """Poll ``predicate`` on short Trio sleeps until true; fail loudly after ``timeout``."""
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.005)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}") from None


def metric(server: Server, name: str, **labels: str) -> float:
    """A sample of the server's registry (0.0 when it was never set)."""
    value = server.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def count_tasks() -> int:
    """Every live task of this Trio run, found from the root task down its nurseries."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def text_frame(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame).encode()


async def raw_request(client: RawClient, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a JSON frame from a RawClient and return the reply with its id (pings skipped)."""
    await client.send_frame(0x1, text_frame(frame))
    while True:
        got = await client.read_frame()
        assert got is not None, "connection ended before the reply"
        opcode, payload = got
        if opcode != 0x1:
            continue
        reply = json.loads(payload)
        if reply.get("id") == frame.get("id") and reply["type"] != "message":
            return reply


async def raw_welcome(client: RawClient) -> dict[str, Any]:
    got = await client.read_frame()
    assert got is not None and got[0] == 0x1, got
    welcome = json.loads(got[1])
    assert welcome["type"] == "welcome", welcome
    return welcome


def abort(client: RawClient) -> None:
    """Drop the TCP connection abruptly: SO_LINGER 0 makes close() send a RST."""
    sock = client.stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def server_errors(caplog, monkeypatch):
    """Fails the test at teardown if the server logged anything at ERROR level."""
    monkeypatch.setattr(logging.getLogger("wsnursery"), "propagate", True)
    caplog.set_level(logging.ERROR, logger="wsnursery")
    yield caplog
    errors = [
        f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else f"{r.name}: {r.getMessage()}"
        for r in caplog.get_records("setup") + caplog.get_records("call") + caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("wsnursery")
    ]
    assert not errors, errors


async def slow_subscriber(port: int, channel: str) -> RawClient:
    """Subscribed to ``channel``, then never reads (a tiny receive buffer: the server's writes back up)."""
    slow = await RawClient.connect(port, rcvbuf=4096)
    await raw_welcome(slow)
    reply = await raw_request(slow, {"type": "subscribe", "id": 1, "channel": channel})
    assert reply["type"] == "subscribed", reply
    return slow


async def read_messages(raw: RawClient, until_seq: int | None = None) -> tuple[list[int], int | None]:
    """Message seqs in arrival order, up to ``until_seq`` or the close frame (its code); None at
    EOF or a reset. Each read fails loudly after 30 s."""
    seqs: list[int] = []
    while until_seq is None or not seqs or seqs[-1] < until_seq:
        try:
            with trio.fail_after(30):
                frame = await raw.read_frame()
        except (trio.BrokenResourceError, ConnectionResetError):
            return seqs, None
        if frame is None:
            return seqs, None
        opcode, payload = frame
        if opcode == 0x8:
            return seqs, int.from_bytes(payload[:2], "big")
        if opcode == 0x1:
            message = json.loads(payload)
            if message["type"] == "message":
                seqs.append(message["seq"])
    return seqs, None
