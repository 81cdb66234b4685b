"""What the fuzz entry points check, one function per target, usable without atheris.

Each takes one fuzz input (bytes) and runs it through the server's sans-I/O path for that
layer. An input must be answered: by events, by a ``FrameError`` with a close code, by a
``DecodeError`` / ``ProtocolError`` / ``ValueNotCarried`` (an error frame), or by a reply
the server can encode. Any other exception is a crash, and the size checks (what the
reader holds, what a subscriber would be sent) are assertions, so amplification is a crash
too. Hangs and memory blowups are caught by libFuzzer's ``-timeout`` and ``-rss_limit_mb``.
"""

from __future__ import annotations

import struct
from typing import Any

from wsnursery import codec, protocol
from wsnursery.codec import DecodeError, Encoding
from wsnursery.frame_reader import Control, FrameError, FrameReader
from wsnursery.wire import CloseCode

CLOSE_CODES = {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD, CloseCode.TOO_BIG}
MAX_SIZE = 4096
MAX_FRAGMENTS = 32
PARSERS = (protocol.RequestParser(), protocol.RequestParser("^.{1,64}$"))


def _masked(first: int, payload: bytes, mask: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    key = (mask * (length // 4 + 1))[:length]
    return header + mask + bytes(a ^ b for a, b in zip(payload, key))


def _frames(data: bytes) -> bytes:
    """Structured mode: the input read as (flags/opcode byte, length byte, payload) triples,
    built into masked frames, so that fragments, control frames and UTF-8 are reached."""
    wire = bytearray()
    pos = 0
    while pos + 2 <= len(data):
        first, length = data[pos], data[pos + 1]
        payload = data[pos + 2 : pos + 2 + length]
        pos += 2 + length
        wire += _masked(first & 0x8F, payload, b"\x11\x22\x33\x44")
    return bytes(wire)


def frame_reader_input(data: bytes) -> str:
    """Feed the input (raw, or built into frames) in pieces and pull everything out."""
    if not data:
        return "empty"
    mode, data = data[0], data[1:]
    wire = _frames(data) if mode & 1 else data
    cut = 1 + (mode >> 1) % 64
    reader = FrameReader(MAX_SIZE, max_fragments=MAX_FRAGMENTS)
    fed = out = 0
    events = 0
    for start in range(0, len(wire), cut):
        piece = wire[start : start + cut]
        reader.feed(piece)
        fed += len(piece)
        try:
            while (event := reader.next_event()) is not None:
                events += 1
                if isinstance(event, Control):
                    out += len(event.payload)
                else:
                    out += len(event.encode("utf-8") if isinstance(event, str) else event)
        except FrameError as exc:
            assert exc.code in CLOSE_CODES, exc.code
            try:
                reader.next_event()
            except FrameError as again:
                assert again.code == exc.code
            else:
                raise AssertionError("a failed reader delivered again") from None
            return f"close {exc.code}"
        assert reader.held <= fed and reader.held <= MAX_SIZE + reader.buffered
        assert out <= fed
    return f"{events} events" if events else "waiting for more bytes"


def _answer(frame: dict[str, Any], encoding: Encoding, received: int) -> str:
    """The request path after decoding: parse, check the data, encode every reply it causes."""
    for parser in PARSERS:
        try:
            request = parser.parse(frame)
        except protocol.ProtocolError as exc:
            codec.encode(protocol.error_frame(exc.code, exc.reason, exc.request_id), encoding)
            continue
        replies: list[dict[str, Any]] = []
        position = protocol.Position("epoch", 1)
        if isinstance(request, protocol.Publish):
            try:
                codec.check_value(request.data)
            except codec.ValueNotCarried as exc:
                replies.append(protocol.error_frame("bad_request", str(exc), request.id))
            else:
                data = request.data if encoding.is_binary else codec.bytes_from_json(request.data)
                message = protocol.message_frame(request.channel, "epoch", 1, data, 0)
                for out in Encoding:
                    size = len(codec.encode(message, out))
                    assert size <= 16 * received + 256, f"{received} bytes became a {size}-byte frame"
                replies.append(protocol.published_frame(request.id, request.channel, position))
        else:
            replies.append(protocol.subscribed_frame(request.id, request.channel, position, True))
        for reply in replies:
            codec.encode(reply, encoding)
    return "answered"


def codec_input(data: bytes, encoding: Encoding) -> str:
    if encoding is Encoding.JSON:
        try:
            payload: str | bytes = data.decode("utf-8")
        except UnicodeDecodeError:
            return "close 1007"  # the frame reader never hands this on
    else:
        payload = data
    try:
        frame = codec.decode(payload, encoding)
    except DecodeError as exc:
        codec.encode(protocol.error_frame("bad_request", str(exc), exc.request_id), encoding)
        return "bad_request"
    return _answer(frame, encoding, len(data))


def json_input(data: bytes) -> str:
    return codec_input(data, Encoding.JSON)


def cbor_input(data: bytes) -> str:
    return codec_input(data, Encoding.CBOR)
