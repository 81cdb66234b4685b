"""The TCP stream a WebSocket connection runs on, as handed to trio-websocket.

It replays the HTTP head the server already read, serialises every send (trio-websocket's
own frames and the connection's pre-encoded frames share one socket, whole frames at a
time), counts bytes, and keeps the socket open when trio-websocket closes it after a
protocol error, so the connection can still send the right close code (1002, 1007) before
it closes the socket for real with ``close_now``.

``send_nowait`` writes without blocking when no send is under way: what the socket does not
take at once is kept as the backlog (at most the one write it came from), and every later
send writes the backlog first, so frames never interleave.
"""

from __future__ import annotations

import os
import struct

import trio

from .wsframe import OPCODE_CLOSE, control_frame


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame (server to client)."""
    return control_frame(OPCODE_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


class ServerStream(trio.abc.Stream):
    def __init__(self, stream: trio.SocketStream, already_read: bytes) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._pending = already_read
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False
        self.backlog: memoryview | None = None  # the unsent end of a send_nowait
        self.bytes_in = len(already_read)
        self.bytes_out = 0
        self.writing = False  # True while a send_all is under way (a frame may be half sent)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    @property
    def idle(self) -> bool:
        """No send under way and nothing held back: ``send_nowait`` may write."""
        return self.backlog is None and not self._closed and not self._send_lock.locked()

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

    def send_nowait(self, data: bytes) -> bool:
        """Write what the socket takes now (only when ``idle``); True when all of ``data`` went.

        The rest becomes the backlog, which the next ``send_all`` writes first. Raises
        ``trio.BrokenResourceError`` when the connection is gone.
        """
        assert self.idle, "send_nowait while a send is under way"
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        self.bytes_out += sent
        if sent < len(data):
            self.backlog = memoryview(data)[sent:]
            return False
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        async with self._send_lock:
            await self._write(data)

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        self.writing = True
        if self.backlog is not None:
            backlog = self.backlog
            await self._stream.send_all(backlog)
            self.backlog = None
            self.bytes_out += len(backlog)
        if data:
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
            await self._write(close_frame(code, reason))

    def close_now(self) -> None:
        """Close the socket at once (trio's socket close also wakes any task waiting on it)."""
        self._closed = True
        self._stream.socket.close()
