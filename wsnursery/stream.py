"""The TCP stream a WebSocket connection runs on: whole frames out, bytes in, counted.

Every send is serialised, so frames never interleave on the socket. ``send_nowait`` writes
without blocking when no send is under way: what the socket does not take at once is kept
as the backlog (at most the one write it came from), and every later send writes the
backlog first. ``close_now`` closes the socket at once, without a checkpoint.

Sends count exactly what the socket took, also when they are cancelled: the rest of a
cancelled send becomes the backlog, so a frame is never left half written behind a close
frame. A send may pass the frames its data is made of (``frames``: only their sizes are
used, and only when the send is partial); ``cut_backlog`` then drops every whole frame of
the backlog after the one under way, so that a close frame can go out ahead of data it
replaces (a slow consumer's 4008) once that one frame is finished.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Sequence

import trio

from .wire import Opcode
from .wsframe import control_frame


def close_frame(code: int | None, reason: str = "") -> bytes:
    """An unmasked close frame (server to client); no payload when ``code`` is None."""
    if code is None:
        return control_frame(Opcode.CLOSE, b"")
    return control_frame(Opcode.CLOSE, struct.pack("!H", code) + _truncate_utf8(reason, 123))


def _truncate_utf8(text: str, limit: int) -> bytes:
    """``text`` in UTF-8, cut to at most ``limit`` bytes without splitting a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")


class ServerStream:
    def __init__(self, stream: trio.SocketStream, bytes_in: int = 0) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False
        self.backlog: memoryview | None = None  # the unsent end of a send_nowait or a cancelled send
        self._backlog_ends: list[int] = []  # where the backlog's frames end, when the sender said
        self.bytes_in = bytes_in  # counts what the server read before it made the stream
        self.bytes_out = 0
        self.writing = False  # True while a send_all is under way (a frame may be half sent)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    @property
    def idle(self) -> bool:
        """No send under way and nothing held back: ``send_nowait`` may write."""
        return self.backlog is None and not self._closed and not self._send_lock.locked() and not self.writing

    async def receive_some(self, max_bytes: int) -> bytes:
        """Some bytes, or ``b""`` at end of stream (raises ``trio.BrokenResourceError`` on a reset)."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        data = await self._stream.receive_some(max_bytes)
        self.bytes_in += len(data)
        return data

    def send_nowait(self, data: bytes, frames: Sequence[bytes] = ()) -> bool:
        """Write what the socket takes now (only when ``idle``); True when all of ``data`` went.

        The rest becomes the backlog, which the next ``send_all`` writes first. ``frames``: what
        ``data`` is the concatenation of, for ``cut_backlog``. Raises
        ``trio.BrokenResourceError`` when the connection is gone.
        """
        assert self.idle, "send_nowait while a send is under way"
        sent = _write_now(self._fd, data)
        self.bytes_out += sent
        if sent < len(data):
            self._keep(memoryview(data), sent, frame_ends(frames))
            return False
        return True

    async def send_all(self, data: bytes | bytearray | memoryview, frames: Sequence[bytes] = ()) -> None:
        """Write the backlog, then ``data``. When cancelled, what was not sent of the write
        under way is the backlog (the rest of ``data`` is dropped if the backlog was under way)."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        async with self._send_lock:
            await self._write(data, frames)

    def cut_backlog(self) -> int:
        """Drop the backlog's whole frames after the one under way; return the bytes dropped.

        Only frames whose ends were given are dropped (without them the backlog stays whole)."""
        backlog, ends = self.backlog, self._backlog_ends
        if backlog is None or not ends or ends[0] >= len(backlog):
            return 0
        self.backlog, self._backlog_ends = backlog[: ends[0]], ends[:1]
        return len(backlog) - ends[0]

    def _keep(self, data: memoryview, sent: int, ends: Sequence[int]) -> None:
        """Make the unsent end of ``data`` (from ``sent``) the backlog."""
        self.backlog = data[sent:]
        self._backlog_ends = [end - sent for end in ends if end > sent]

    async def _write(self, data: bytes | bytearray | memoryview, frames: Sequence[bytes] = ()) -> None:
        self.writing = True
        try:
            if self.backlog is not None:
                backlog, backlog_ends = self.backlog, self._backlog_ends
                self.backlog = None
                progress = [0]
                try:
                    await self._send_counted(backlog, progress)
                except BaseException:  # cancelled (or broken): the backlog is what is left of it
                    if progress[0] < len(backlog):
                        self._keep(backlog, progress[0], backlog_ends)
                    raise
            if data:
                view = memoryview(data)
                progress = [0]
                try:
                    await self._send_counted(view, progress)
                except BaseException:
                    if progress[0] < len(view):
                        self._keep(view, progress[0], frame_ends(frames))
                    raise
        finally:
            self.writing = False

    async def _send_counted(self, data: memoryview, progress: list[int]) -> None:
        """Send ``data``, counting in ``progress[0]`` what went. A cancellation stops it between
        two socket sends: trio's ``socket.send`` has sent nothing when it raises ``Cancelled``."""
        sock = self._stream.socket
        total = 0
        try:
            while total < len(data):
                sent = await sock.send(data[total:])
                total += sent
                progress[0] = total
                self.bytes_out += sent
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def send_close_frame(self, code: int | None, reason: str = "", owed: bytes = b"") -> None:
        """Write ``owed`` (whole frames the peer is owed first), then a close frame (without a
        code when ``code`` is None), after the backlog.

        When the socket takes them at once, in one write, no trip through the scheduler (one
        per connection: measured with callgrind, an awaited send of ``owed`` on its own cost
        about a tenth of the instructions of a connection's whole open and close).
        """
        frame = owed + close_frame(code, reason)
        if self.idle:
            if self.send_nowait(frame):
                return
            frame = b""  # the rest of it is the backlog, which _write sends first
        async with self._send_lock:
            await self._write(frame)  # after the backlog: never behind half a frame

    async def drain(self) -> None:
        """Stop sending (FIN after what was written) and drop what arrives until the peer
        closes too. The caller bounds it with a deadline."""
        try:
            self._stream.socket.shutdown(socket.SHUT_WR)
        except OSError:
            return
        while await self.receive_some(65536):
            pass

    def close_now(self) -> None:
        """Close the socket at once (trio's socket close also wakes any task waiting on it)."""
        self._closed = True
        self._stream.socket.close()


def frame_ends(frames: Sequence[bytes]) -> list[int]:
    """Where each of ``frames`` ends in their concatenation."""
    return list(itertools.accumulate(map(len, frames)))


async def send_at_once(stream: trio.SocketStream, data: bytes) -> None:
    """``stream.send_all(data)``, without a trip through the scheduler when the socket takes
    all of it at once (a handshake answer on a new connection always fits)."""
    sent = _write_now(stream.socket.fileno(), data)
    if sent < len(data):
        await stream.send_all(memoryview(data)[sent:])


def _write_now(fd: int, data: bytes) -> int:
    """Write what the non-blocking socket ``fd`` takes now; return how much (0 when full).
    Raises ``trio.BrokenResourceError`` when the connection is gone."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc
