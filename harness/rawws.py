"""A lean RFC 6455 client on a bare `asyncio.Protocol`, built for load generation.

Why not a library client: the benches need the *client* to stay cheaper than any server it
drives, and receiving tens of thousands of small frames per second is where general clients
spend their time (per-frame objects, UTF-8 decoding, queues, futures). This one parses frames
straight out of the receive buffer and hands each complete message to a callback as `bytes`
(text is not decoded). `python -m harness.bench compare` measures it against the `websockets`
asyncio client and wsproto on the same frame stream.

What it does: the opening handshake (checks `101` and `Sec-WebSocket-Accept`, optional
subprotocol), masked client frames, fragmented messages, answers pings with pongs, and the
closing handshake; with ``compression=True`` it offers permessage-deflate (RFC 7692) and
inflates the compressed messages it receives (what it sends stays uncompressed, which the RFC
allows; ``inflate=False`` hands compressed payloads over as they came, for a client that only
counts). ``bytes_in`` counts every byte received. What it does not: other extensions, TLS,
proxies, redirects, message size limits. Loopback benchmarking only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
import zlib

try:  # C implementation shipped with `websockets`; same result as the fallback below.
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover
    _apply_mask = None

__all__ = ["OP_BINARY", "OP_TEXT", "HandshakeError", "RawWS", "connect"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
_pack_h = struct.Struct("!BB").pack
_pack_h16 = struct.Struct("!BBH").pack
_pack_h64 = struct.Struct("!BBQ").pack
_rand32 = random.getrandbits


class HandshakeError(Exception):
    pass


def _mask(data: bytes, key: bytes) -> bytes:
    if _apply_mask is not None:
        return _apply_mask(data, key)
    n = len(data)  # pragma: no cover
    k = int.from_bytes((key * (n // 4 + 1))[:n], "little")  # pragma: no cover
    return (int.from_bytes(data, "little") ^ k).to_bytes(n, "little")  # pragma: no cover


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame."""
    n = len(payload)
    key = _rand32(32).to_bytes(4, "little")
    b0 = 0x80 | opcode
    if n < 126:
        head = _pack_h(b0, 0x80 | n)
    elif n < 65536:
        head = _pack_h16(b0, 0x80 | 126, n)
    else:
        head = _pack_h64(b0, 0x80 | 127, n)
    return head + key + _mask(payload, key)


# One receive buffer per process, shared by every connection: the selector transport calls
# get_buffer(), recv_into() and buffer_updated() back to back, and buffer_updated() copies the
# bytes out at once. (asyncio's default recv(256 KiB) allocates and frees a 256 KiB object per
# read, which costs far more than the read itself when each read carries one small frame.)
_RBUF = memoryview(bytearray(256 * 1024))


class RawWS(asyncio.BufferedProtocol):
    """One client connection. `on_message(payload: bytes, opcode: int)` gets each message;
    without it, each message resolves `self.waiter` (request/response use)."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/",
        on_message=None,
        subprotocol: str | None = None,
        compression: bool = False,
        inflate: bool = True,
    ):
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path = host, port, path
        self.on_message = on_message or self._resolve_waiter
        self.subprotocol = subprotocol
        self.opened: asyncio.Future = loop.create_future()
        self.close_received: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.close_sent = False
        self.is_open = False
        self._key = base64.b64encode(os.urandom(16))
        self._buf = b""
        self._frag_op = 0
        self._frags: list[bytes] = []
        self.pings = 0
        self.offer_compression, self.inflate = compression, inflate
        self.compressed = False  # permessage-deflate was agreed
        self._inflater = None  # kept between messages unless the server said server_no_context_takeover
        self._fresh_context = True
        self._frag_rsv1 = False
        self.bytes_in = 0
        #: Request/response mode (no `on_message` given): each message resolves this future.
        self.waiter: asyncio.Future | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        req = (
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            ).encode()
            + b"Sec-WebSocket-Key: "
            + self._key
            + b"\r\n"
        )
        if self.subprotocol:
            req += f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n".encode()
        if self.offer_compression:
            req += b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        transport.write(req + b"\r\n")

    def connection_lost(self, exc):
        self.is_open = False
        err = exc or ConnectionError("connection closed")
        for fut in (self.opened, self.close_received):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: nobody may be waiting on it
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(err)
        if not self.lost.done():
            self.lost.set_result(None)

    def get_buffer(self, sizehint: int):
        return _RBUF

    def buffer_updated(self, nbytes: int):
        self.bytes_in += nbytes
        self.data_received(_RBUF[:nbytes].tobytes())

    def data_received(self, data: bytes):
        if self._buf:
            data = self._buf + data
        if not self.is_open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            self._handshake(data[:end])
            if not self.is_open:
                return
            data = data[end + 4 :]
        n = len(data)
        pos = 0
        on_message = self.on_message
        while n - pos >= 2:
            b0 = data[pos]
            ln = data[pos + 1]
            if ln & 0x80:
                self._fail(1002, "masked server frame")
                return
            hdr = pos + 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (data[hdr] << 8) | data[hdr + 1]
                hdr += 2
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(data[hdr : hdr + 8], "big")
                hdr += 8
            end = hdr + ln
            if end > n:
                break
            payload = data[hdr:end]
            pos = end
            op = b0 & 0x0F
            if op in (OP_TEXT, OP_BINARY):
                if b0 & 0x80:
                    on_message(self._inflate(payload) if b0 & 0x40 and self.inflate else payload, op)
                else:
                    self._frag_op, self._frags, self._frag_rsv1 = op, [payload], bool(b0 & 0x40)
            elif op == OP_CONT:
                self._frags.append(payload)
                if b0 & 0x80:
                    msg, self._frags = b"".join(self._frags), []
                    on_message(self._inflate(msg) if self._frag_rsv1 and self.inflate else msg, self._frag_op)
            elif op == OP_PING:
                self.pings += 1
                self._write(OP_PONG, payload)
            elif op == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.close_sent:
                    self._write(OP_CLOSE, payload[:2])
                    self.close_sent = True
                self.is_open = False
                if not self.close_received.done():
                    self.close_received.set_result(self.close_code)
                self._buf = b""
                return
        self._buf = data[pos:] if pos < n else b""

    # -- helpers ------------------------------------------------------------------------
    def _inflate(self, payload: bytes) -> bytes:
        inflater = self._inflater
        if inflater is None or self._fresh_context:
            inflater = self._inflater = zlib.decompressobj(-15)
        return inflater.decompress(payload + b"\x00\x00\xff\xff")

    def _resolve_waiter(self, payload: bytes, opcode: int) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(payload)

    def _handshake(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"101":
            self._abort_open(HandshakeError(lines[0].decode("latin-1")))
            return
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        want = base64.b64encode(hashlib.sha1(self._key + GUID).digest())
        if headers.get(b"sec-websocket-accept") != want:
            self._abort_open(HandshakeError("bad Sec-WebSocket-Accept"))
            return
        self.accepted_subprotocol = headers.get(b"sec-websocket-protocol", b"").decode() or None
        extensions = headers.get(b"sec-websocket-extensions", b"")
        if self.offer_compression and extensions.startswith(b"permessage-deflate"):
            self.compressed = True
            self._fresh_context = b"server_no_context_takeover" in extensions
        self.is_open = True
        self.opened.set_result(self)

    def _abort_open(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self.transport.abort()

    def _fail(self, code: int, reason: str) -> None:
        if not self.close_sent:
            self._write(OP_CLOSE, code.to_bytes(2, "big") + reason.encode())
            self.close_sent = True
        self.transport.abort()

    def _write(self, op: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(op, payload))

    # -- public API ---------------------------------------------------------------------
    def send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        """Queue one message (text by default; `payload` must already be UTF-8 for text)."""
        self.transport.write(encode_frame(opcode, payload))

    def send_many(self, payloads, opcode: int = OP_TEXT) -> None:
        self.transport.write(b"".join([encode_frame(opcode, p) for p in payloads]))

    async def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Closing handshake: send close, wait for the server's close, then for its TCP FIN."""
        if self.transport is None or self.lost.done():
            return
        try:
            if not self.close_sent:
                self._write(OP_CLOSE, code.to_bytes(2, "big"))
                self.close_sent = True
            async with asyncio.timeout(timeout):
                try:
                    await self.close_received
                except Exception:
                    pass
                await self.lost  # the server closes TCP first (RFC 6455 7.1.1)
        except TimeoutError:
            pass
        finally:
            if not self.lost.done():
                self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    host: str,
    port: int,
    path: str = "/",
    on_message=None,
    subprotocol: str | None = None,
    timeout: float = 10.0,
    compression: bool = False,
    inflate: bool = True,
) -> RawWS:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(
            lambda: RawWS(host, port, path, on_message, subprotocol, compression, inflate), host, port
        )
        try:
            await proto.opened
        except BaseException:
            proto.abort()
            raise
    return proto
