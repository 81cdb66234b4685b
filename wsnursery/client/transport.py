"""A thin WebSocket client transport: wsproto (client role) over an anyio byte stream.

What it does and nothing more: the opening handshake (offering ``Sec-WebSocket-Protocol``),
reading whole messages (reassembling fragments), queueing pongs for pings, queueing pings,
data frames and the close frame, and an abrupt ``abort``. Frames are masked by wsproto,
as RFC 6455 requires of a client.

Sending is split in two so that exactly one task ever writes the socket: anything may queue
bytes (``queue_*``, never blocking), and the single writer task calls :meth:`flush`. The reader
answers a ping by queueing the pong and calling ``on_outgoing`` to wake that writer, so a reader
never blocks on a send (a peer that stops reading cannot wedge our reader).
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError

from ..wire import CloseCode
from .errors import HandshakeRejected, TransportClosed, TransportError

__all__ = [
    "HandshakeRejected",
    "TransportClosed",
    "TransportError",
    "WebSocketTransport",
    "open_transport",
    "parse_url",
]

READ_SIZE = 65536
MAX_HANDSHAKE_BYTES = 65536
DEFAULT_MAX_MESSAGE_SIZE = 64 * 2**20


def parse_url(url: str) -> tuple[str, int, str, bool]:
    """``ws://host:port/path?query`` -> (host, port, target, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.hostname, port, target, tls


class WebSocketTransport:
    """One open WebSocket connection (client side). Create with :func:`open_transport`."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        ws: WSConnection,
        subprotocol: str | None,
        max_message_size: int,
    ) -> None:
        self.stream = stream
        self.subprotocol = subprotocol
        self.max_message_size = max_message_size
        self.on_outgoing: Callable[[], None] = lambda: None
        self.on_pong: Callable[[], None] = lambda: None  # called by the reader for each pong
        self.pongs = 0  # pongs received
        self.bytes_in = 0  # bytes read from the socket
        self._ws = ws
        self._outgoing = bytearray()
        self._send_broken = False
        self._fragments: list[Any] = []
        self._fragment_size = 0
        self.compressed = False  # permessage-deflate was negotiated

    # -- queueing (any task, never blocks) --------------------------------------------

    @property
    def has_outgoing(self) -> bool:
        return bool(self._outgoing)

    def queue_message(self, payload: str | bytes) -> int:
        """Queue one unfragmented data frame (text for ``str``); returns its size in bytes."""
        data = self._send(TextMessage(payload) if isinstance(payload, str) else BytesMessage(payload))
        return len(data)

    def queue_ping(self, payload: bytes = b"") -> None:
        self._send(Ping(payload))
        self.on_outgoing()

    def queue_close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Queue our close frame (or the answer to the peer's), if the state allows one."""
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._send(CloseConnection(code, reason[:120]))
            self.on_outgoing()

    def _send(self, event: Any) -> bytes:
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            return b""  # closing: nothing more may be sent; the reader reports the close
        self._outgoing += data
        return data

    # -- the single writer ------------------------------------------------------------

    @property
    def can_flush(self) -> bool:
        """False once a send was interrupted (cancelled or failed) part way: the byte stream
        may hold half a frame, so nothing more may be written to it."""
        return not self._send_broken

    async def flush(self, limit: int = 256 * 1024) -> None:
        """Write every queued byte, ``limit`` bytes per ``send``."""
        if self._send_broken:
            raise anyio.BrokenResourceError("an earlier send was interrupted")
        while self._outgoing:
            chunk = bytes(self._outgoing[:limit])
            del self._outgoing[:limit]
            self._send_broken = True
            await self.stream.send(chunk)
            self._send_broken = False

    # -- the single reader ------------------------------------------------------------

    async def receive(self) -> str | bytes:
        """The next whole data message; raises :class:`TransportClosed` when the connection ends."""
        while True:
            for event in self._ws.events():
                result = self._handle(event)
                if result is not None:
                    return result
            try:
                data = await self.stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                data = None
            if data is None:
                self._ws.receive_data(None)
            else:
                self.bytes_in += len(data)
                self._ws.receive_data(data)

    def _handle(self, event: Any) -> str | bytes | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            self._fragments.append(event.data)
            self._fragment_size += len(event.data)
            if self._fragment_size > self.max_message_size:
                self.queue_close(CloseCode.TOO_BIG, "message too big")
                raise TransportClosed(CloseCode.TOO_BIG, "message from the server too big")
            if not event.message_finished:
                return None
            pieces, self._fragments, self._fragment_size = self._fragments, [], 0
            if isinstance(event, TextMessage):
                return "".join(pieces)
            return b"".join(bytes(piece) for piece in pieces)
        if isinstance(event, Ping):
            self._send(event.response())
            self.on_outgoing()
        elif isinstance(event, Pong):
            self.pongs += 1
            self.on_pong()
        elif isinstance(event, CloseConnection):
            remote = True
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self._send(event.response())  # the peer's close: answer it
                self.on_outgoing()
            elif self._ws.state is ConnectionState.OPEN:  # wsproto found a protocol error
                remote = False
                self.queue_close(event.code, event.reason or "")
            elif event.code == CloseCode.LOST:  # the TCP connection ended without a close frame
                remote = False
            raise TransportClosed(event.code, event.reason or "", remote=remote)
        return None

    # -- ending -------------------------------------------------------------------------

    def abort(self) -> None:
        """Make the coming close reset the TCP connection (RST, no close frame, no FIN).

        Call :meth:`aclose` (or cancel the tasks and let the owner close) afterwards.
        """
        sock = _raw_socket(self.stream)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._outgoing.clear()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass


def _raw_socket(stream: anyio.abc.ByteStream) -> socket.socket | None:
    try:
        return stream.extra(anyio.abc.SocketAttribute.raw_socket)
    except anyio.TypedAttributeLookupError:
        return None


async def open_transport(
    url: str,
    subprotocols: list[str],
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    extra_headers: list[tuple[str, str]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    compression: bool = True,
) -> WebSocketTransport:
    """Connect over TCP (TLS for ``wss://``) and complete the opening handshake.

    Raises ``OSError`` when the TCP connection fails, :class:`HandshakeRejected` for an HTTP
    answer other than 101 and :class:`TransportClosed` when the peer closes mid-handshake.
    Callers bound it in time (``anyio.fail_after``).

    ``compression`` offers permessage-deflate (RFC 7692, wsproto's ``PerMessageDeflate``);
    a server that does not accept it is spoken to uncompressed, so the offer never costs the
    connection. :attr:`WebSocketTransport.compressed` says what was agreed. Inflated messages
    count towards ``max_message_size`` like any other (the check is on the inflated data).
    """
    host, port, target, tls = parse_url(url)
    if tls:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(
            host, port, tls=True, ssl_context=ssl_context, tls_hostname=host
        )
    else:
        stream = await anyio.connect_tcp(host, port)
    try:
        sock = _raw_socket(stream)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = WSConnection(ConnectionType.CLIENT)
        default_port = 443 if tls else 80
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        request = Request(
            host=authority,
            target=target,
            subprotocols=list(subprotocols),
            extra_headers=[(k.encode(), v.encode()) for k, v in (extra_headers or [])],
            extensions=[PerMessageDeflate()] if compression else [],
        )
        await stream.send(ws.send(request))
        received = 0
        reject: RejectConnection | None = None
        body = bytearray()
        while True:
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    transport = WebSocketTransport(stream, ws, event.subprotocol, max_message_size)
                    transport.compressed = any(isinstance(ext, PerMessageDeflate) for ext in event.extensions)
                    return transport
                if isinstance(event, RejectConnection):
                    reject = event
                    if not event.has_body:
                        raise HandshakeRejected(event.status_code, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished and reject is not None:
                        raise HandshakeRejected(reject.status_code, bytes(body))
            try:
                data = await stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                if reject is not None:
                    raise HandshakeRejected(reject.status_code, bytes(body)) from None
                raise TransportClosed(CloseCode.LOST, "connection closed during the handshake") from None
            received += len(data)
            if received > MAX_HANDSHAKE_BYTES:
                raise TransportClosed(CloseCode.PROTOCOL_ERROR, "handshake response too large")
            ws.receive_data(data)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise
