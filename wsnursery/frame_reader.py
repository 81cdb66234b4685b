"""Client-to-server WebSocket frames in, whole messages and control frames out (RFC 6455 §5).

Sans-I/O, like wsproto's frame protocol, which it replaces on the server's receive path:
the server feeds it the bytes it reads and pulls events until it needs more. A text
message comes out as ``str``, a binary message as ``bytes``, a ping, pong or close as a
``Control``. Unconsumed frames stay buffered, so a reader that stops pulling (a close
under way) can pull again later and lose nothing.

A violation raises ``FrameError`` with the close code to send, and every later pull
raises it again:
- 1002: an unmasked frame, an RSV bit (RSV1 is allowed only when permessage-deflate was
  negotiated, and only on the first frame of a data message), an unknown opcode, a
  fragmented or oversized control frame, a continuation with nothing to continue, a new
  message inside a fragmented one, a close payload of one byte or a close code that may
  not be sent;
- 1007: a text message or a close reason that is not UTF-8, or compressed data zlib
  refuses. A fragmented text message is checked fragment by fragment with an incremental
  decoder, so the first fragment that makes it invalid fails it, before the rest arrives
  (a single frame is checked whole);
- 1009: a message longer than ``max_message_size`` bytes, or sent in more than
  ``max_fragments`` frames (empty continuation frames count). Both are checked from the
  frame header, before the payload is buffered. A compressed message (RSV1, with an
  ``inflater``) is inflated fragment by fragment as it arrives: its inflated size counts
  toward ``max_message_size`` while inflating (``deflate.Inflater``), so a decompression
  bomb is refused after ``max_message_size + 1`` bytes of output, and its compressed bytes
  may not exceed ``deflate.wire_bound(max_message_size)``.

Without an inflater, compression costs nothing per frame: RSV bits are one test, as before.

Memory: a fragmented message under way is one ``bytearray`` that the fragments' payloads
are appended to, so holding it costs its bytes (plus the bytearray's over-allocation),
not a Python object per fragment; ``held`` is what the reader holds, at most
``max_message_size`` plus the bytes fed and not yet parsed.
"""

from __future__ import annotations

import codecs

from .deflate import InflateError, Inflater, wire_bound
from .wire import CloseCode, Opcode, may_be_sent

DEFAULT_MAX_FRAGMENTS = 1024  # frames per message: 1 MiB in 1 KiB pieces
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY)
_CONTROL_OPCODES = (Opcode.CLOSE, Opcode.PING, Opcode.PONG)


class FrameError(Exception):
    """The peer broke the protocol; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class Control:
    """A ping, pong or close frame. For a close, ``code`` and ``reason`` are filled in."""

    __slots__ = ("code", "opcode", "payload", "reason")

    def __init__(self, opcode: int, payload: bytes, code: int = CloseCode.NO_STATUS, reason: str = "") -> None:
        self.opcode = opcode
        self.payload = payload
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Control(opcode={self.opcode:#x}, payload={self.payload!r}, code={self.code})"


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask``, as one big-integer operation."""
    length = len(payload)
    if not length:
        return b""
    key = int.from_bytes(bytes(mask) * ((length + 3) // 4), "little") & ((1 << (8 * length)) - 1)
    return (int.from_bytes(payload, "little") ^ key).to_bytes(length, "little")


class FrameReader:
    """Parses what a client sends; see the module docstring for the rules it enforces."""

    def __init__(
        self, max_message_size: int, max_fragments: int = DEFAULT_MAX_FRAGMENTS, inflater: Inflater | None = None
    ) -> None:
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self._inflater = inflater  # set when permessage-deflate was negotiated
        self._compressed = False  # the message under way is compressed (its first frame had RSV1)
        self._wire = 0  # compressed bytes of it so far
        self._buffer = bytearray()
        self._message = bytearray()  # the payload so far of a fragmented message under way
        self._fragment_opcode = 0  # its opcode (text or binary); 0 while none is under way
        self._fragment_count = 0  # frames it came in so far
        self._text: codecs.IncrementalDecoder | None = None  # checks its UTF-8 as it arrives
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet consumed."""
        return len(self._buffer)

    @property
    def held(self) -> int:
        """Bytes the reader holds: fed and not yet parsed, plus a fragmented message so far."""
        return len(self._buffer) + len(self._message)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> str | bytes | Control | None:
        """The next message or control frame, or None until more bytes are fed."""
        if self._error is not None:
            raise self._error.with_traceback(None)  # the same error, without a growing traceback
        try:
            return self._next()
        except FrameError as exc:
            self._error = exc
            raise

    def _next(self) -> str | bytes | Control | None:
        buffer = self._buffer
        while True:
            available = len(buffer)
            if available < 2:
                return None
            first, second = buffer[0], buffer[1]
            fin, opcode = first & 0x80, first & 0x0F
            compressed = False
            if first & 0x70:
                compressed = self._rsv(first, opcode)
            if not second & 0x80:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            length = second & 0x7F
            header = 6
            if opcode in _CONTROL_OPCODES:
                if not fin:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                if length > 125:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, "control frame payload over 125 bytes")
            elif opcode in _DATA_OPCODES:
                if self._fragment_opcode:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, "new message before the fragmented one finished")
            elif opcode == Opcode.CONTINUATION:
                if not self._fragment_opcode:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, "continuation frame with no message to continue")
            else:
                raise FrameError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            if length == 126:
                if available < 4:
                    return None
                length = int.from_bytes(buffer[2:4], "big")
                header = 8
            elif length == 127:
                if available < 10:
                    return None
                length = int.from_bytes(buffer[2:10], "big")
                if length >> 63:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, "64-bit payload length with its top bit set")
                header = 14
            if opcode not in _CONTROL_OPCODES:
                if compressed or self._compressed:
                    if self._wire + length > wire_bound(self.max_message_size):
                        raise FrameError(CloseCode.TOO_BIG, f"compressed message over {self.max_message_size} bytes")
                elif len(self._message) + length > self.max_message_size:
                    raise FrameError(CloseCode.TOO_BIG, f"message over {self.max_message_size} bytes")
                if self._fragment_count >= self.max_fragments:
                    raise FrameError(CloseCode.TOO_BIG, f"message in more than {self.max_fragments} fragments")
            end = header + length
            if available < end:
                return None
            payload = unmask(buffer[header:end], buffer[header - 4 : header])
            del buffer[:end]
            if opcode in _CONTROL_OPCODES:
                return _control(opcode, payload)
            if opcode != Opcode.CONTINUATION:
                if compressed:
                    if fin:
                        return _message(opcode, self._inflate(payload, True))
                    self._compressed = True
                elif fin:
                    return _message(opcode, payload)
                self._fragment_opcode = opcode
                if opcode == Opcode.TEXT:
                    self._text = _utf8_decoder()
            if self._compressed:
                self._wire += length
                payload = self._inflate(payload, bool(fin))
            self._fragment_count += 1
            self._message += payload
            if self._text is not None:
                try:
                    self._text.decode(payload, bool(fin))  # fails on the first invalid sequence
                except UnicodeDecodeError:
                    raise FrameError(CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8") from None
            if fin:
                return self._finish_fragmented()

    def _rsv(self, first: int, opcode: int) -> bool:
        """RSV bits are set: True for a compressed message's first frame, else a FrameError."""
        if self._inflater is None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "RSV bits set without a negotiated extension")
        if first & 0x30:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "RSV2 or RSV3 set (no extension defines them)")
        if opcode not in _DATA_OPCODES:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "RSV1 set on a control or continuation frame")
        return True

    def _inflate(self, payload: bytes, fin: bool) -> bytes:
        """A compressed message's next payload, inflated within the message size limit."""
        inflater = self._inflater
        assert inflater is not None
        try:
            data = inflater.feed(payload)
            return data + inflater.finish() if fin else data
        except InflateError as exc:
            raise FrameError(exc.code, exc.reason) from None

    def _finish_fragmented(self) -> str | bytes:
        message, text = self._message, self._text is not None
        self._message = bytearray()
        self._compressed = False
        self._wire = 0
        self._fragment_opcode = self._fragment_count = 0
        self._text = None
        return message.decode("utf-8") if text else bytes(message)


def _message(opcode: int, payload: bytes) -> str | bytes:
    if opcode == Opcode.BINARY:
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8") from None


def _control(opcode: int, payload: bytes) -> Control:
    if opcode != Opcode.CLOSE or not payload:
        return Control(opcode, payload)
    if len(payload) == 1:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if not may_be_sent(code):
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_PAYLOAD, "close reason is not valid UTF-8") from None
    return Control(opcode, payload, code, reason)
