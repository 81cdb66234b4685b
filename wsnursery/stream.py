"""The TCP stream a WebSocket connection runs on, as handed to trio-websocket.

It replays the HTTP head the server already read, serialises every send (trio-websocket's
own frames and the writer's pre-encoded frames share one socket, whole frames at a time),
counts bytes, and keeps the socket open when trio-websocket closes it after a protocol
error, so the connection can still send the right close code (1002, 1007) before it closes
the socket for real with ``close_now``.
"""

from __future__ import annotations

import struct

import trio


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame (server to client)."""
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return bytes((0x88, len(payload))) + payload


class ServerStream(trio.abc.Stream):
    def __init__(self, stream: trio.SocketStream, already_read: bytes) -> None:
        self._stream = stream
        self._pending = already_read
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False
        self.bytes_in = len(already_read)
        self.bytes_out = 0
        self.writing = False  # True while a send_all is under way (a frame may be half sent)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._pending:
            size = len(self._pending) if max_bytes is None else max_bytes
            data, self._pending = self._pending[:size], self._pending[size:]
            await trio.lowlevel.checkpoint()
            return data
        data = await self._stream.receive_some(max_bytes)
        self.bytes_in += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        async with self._send_lock:
            self.writing = True
            await self._stream.send_all(data)
            self.writing = False
            self.bytes_out += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Called by trio-websocket: stop using the stream; the socket closes in close_now."""
        self._closed = True
        await trio.lowlevel.checkpoint()

    async def send_close_frame(self, code: int, reason: str) -> None:
        """Write a close frame past a closed WebSocket (after a protocol error)."""
        if self.writing:
            return  # a frame is half written; the peer sees the TCP close instead
        async with self._send_lock:
            await self._stream.send_all(close_frame(code, reason))

    async def close_now(self) -> None:
        self._closed = True
        await trio.aclose_forcefully(self._stream)
