"""TLS on the server's one port: ``wss://`` and ``https://`` through ``trio.SSLStream``.

With ``--certfile`` every accepted socket is wrapped before its request head is read, so the
TLS handshake counts toward ``handshake_timeout``. A WebSocket connection then writes
through ``TlsServerStream``: a ``stream.ServerStream`` whose sends always go through the
SSL stream (a TLS record cannot be written to the socket without it), so the outbox's
non-blocking write leaves everything to the writer task; closing and draining act on the
TCP socket underneath.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import trio

from .stream import ServerStream, frame_ends


def wrap(stream: trio.SocketStream, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    return trio.SSLStream(stream, context, server_side=True, https_compatible=True)


class _Transport:
    """The SSL stream for bytes, with the TCP socket under it (what ``ServerStream`` reads)."""

    def __init__(self, tls: trio.SSLStream[trio.SocketStream], raw: trio.SocketStream) -> None:
        self.tls = tls
        self.socket = raw.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.tls.send_all(data)

    async def receive_some(self, max_bytes: int) -> bytes:
        return bytes(await self.tls.receive_some(max_bytes))


class TlsServerStream(ServerStream):
    def __init__(self, tls: trio.SSLStream[trio.SocketStream], raw: trio.SocketStream, bytes_in: int = 0) -> None:
        super().__init__(_Transport(tls, raw), bytes_in)  # type: ignore[arg-type]

    def send_nowait(self, data: bytes, frames: Sequence[bytes] = ()) -> bool:
        """Nothing goes without the scheduler under TLS: all of ``data`` becomes the backlog,
        which the writer task's ``send_all`` writes first."""
        assert self.idle, "send_nowait while a send is under way"
        if not data:
            return True
        self._keep(memoryview(data), 0, frame_ends(frames))
        return False

    async def _send_counted(self, data: memoryview, progress: list[int]) -> None:
        """Through the SSL stream, never the socket under it. A TLS record cannot be resumed
        after a cancelled send (trio's SSLStream is broken then), so a cancelled send counts
        as nothing sent, and what follows on that stream fails as broken: under TLS a close
        frame cannot overtake a write that was cut (the plain-TCP stream can)."""
        await self._stream.send_all(data)
        progress[0] = len(data)
        self.bytes_out += len(data)
