"""Test helpers speaking protocol v1 over trio-websocket, and a raw-socket WebSocket client."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import trio
import trio_websocket

from wsnursery import codec
from wsnursery.codec import Encoding

TIMEOUT = 10


class Client:
    """A protocol v1 client for tests: send frame maps, wait for frames of a type."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, encoding: Encoding) -> None:
        self.ws = ws
        self.encoding = encoding
        self.welcome: dict[str, Any] | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        payload = codec.encode(frame, self.encoding)
        await self.ws.send_message(payload if self.encoding.is_binary else payload.decode())

    async def receive(self) -> dict[str, Any]:
        with trio.fail_after(TIMEOUT):
            return codec.decode(await self.ws.get_message(), self.encoding)

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next frame, which must be of type ``kind``."""
        frame = await self.receive()
        assert frame["type"] == kind, frame
        return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a request with an id and return the reply with that id (skipping messages)."""
        await self.send(frame)
        while True:
            reply = await self.receive()
            if reply.get("id") == frame.get("id") and reply["type"] != "message":
                return reply

    async def subscribe(self, channel: str, **extra: Any) -> dict[str, Any]:
        reply = await self.request({"type": "subscribe", "id": 1, "channel": channel, **extra})
        assert reply["type"] == "subscribed", reply
        return reply

    async def publish(self, channel: str, data: Any, **extra: Any) -> dict[str, Any]:
        reply = await self.request({"type": "publish", "id": 2, "channel": channel, "data": data, **extra})
        assert reply["type"] == "published", reply
        return reply

    async def messages(self, count: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < count:
            frame = await self.receive()
            if frame["type"] == "message":
                out.append(frame)
        return out


@contextlib.asynccontextmanager
async def connect(
    url: str,
    encoding: Encoding = Encoding.JSON,
    offer: bool = True,
    *,
    headers: list[tuple[str, str]] | None = None,
    ssl_context: Any = None,
) -> AsyncIterator[Client]:
    """``async with connect(url, Encoding.CBOR) as client`` — reads the welcome first.
    ``headers``: extra headers on the upgrade request (a token, an Origin)."""
    subprotocols = [encoding.subprotocol] if offer else None
    async with trio_websocket.open_websocket_url(
        url,
        subprotocols=subprotocols,
        extra_headers=headers,
        ssl_context=ssl_context,
        connect_timeout=TIMEOUT,
        disconnect_timeout=TIMEOUT,
    ) as ws:
        client = Client(ws, encoding)
        client.welcome = await client.expect("welcome")
        yield client


def bytes_form(data: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(data).decode()}


# -- a raw client, for peers that misbehave ------------------------------------------------


def masked_frame(opcode: int, payload: bytes, fin: bool = True, *, mask: bytes | None = None, rsv: int = 0) -> bytes:
    """One client frame, built by hand so that tests can break any rule (a random mask
    unless ``mask`` is given; ``rsv`` sets reserved bits)."""
    mask = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


class RawClient:
    """A WebSocket client on a plain trio socket: it answers nothing unless told to."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(
        cls, port: int, path: str = "/", subprotocol: str | None = None, rcvbuf: int | None = None
    ) -> RawClient:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if subprotocol:
            head += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
        await client.stream.send_all((head + "\r\n").encode())
        response = await client.read_head()
        assert response.startswith(b"HTTP/1.1 101"), response
        return client

    async def read_head(self) -> bytes:
        with trio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.buffer += data
        end = self.buffer.find(b"\r\n\r\n") + 4
        head, self.buffer = bytes(self.buffer[:end]), self.buffer[end:]
        return head

    async def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        await self.stream.send_all(masked_frame(opcode, payload, fin))

    async def _fill(self, count: int) -> bool:
        while len(self.buffer) < count:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.buffer += data
        return True

    async def read_frame(self) -> tuple[int, bytes] | None:
        """The next frame (opcode, payload), or None at end of stream."""
        with trio.fail_after(TIMEOUT):
            if not await self._fill(2):
                return None
            first, second = self.buffer[0], self.buffer[1]
            length, offset = second & 0x7F, 2
            if length == 126:
                if not await self._fill(4):
                    return None
                (length,) = struct.unpack("!H", self.buffer[2:4])
                offset = 4
            elif length == 127:
                if not await self._fill(10):
                    return None
                (length,) = struct.unpack("!Q", self.buffer[2:10])
                offset = 10
            if not await self._fill(offset + length):
                return None
            payload = bytes(self.buffer[offset : offset + length])
            del self.buffer[: offset + length]
            return first & 0x0F, payload

    async def read_close_code(self) -> int | None:
        """Skip data frames up to the close frame; its code, or None when the TCP just ended."""
        while True:
            try:
                frame = await self.read_frame()
            except (trio.BrokenResourceError, ConnectionResetError):
                return None
            if frame is None:
                return None
            opcode, payload = frame
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
