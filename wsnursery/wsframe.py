"""Server-to-client WebSocket frames, built once and written to many sockets.

A server's frames are never masked (RFC 6455 §5.1), so the bytes of one message frame are
the same for every subscriber on the same encoding. That is what lets the hub encode a
broadcast once and every writer send the very same bytes. With permessage-deflate, the
server compresses every message from a fresh context (``server_no_context_takeover``), so
the same holds for a compressed frame among the subscribers that agreed to one window size.

``message_frame`` is the frame a connection writes for one payload: compressed (RSV1) when
the connection negotiated compression (``window_bits`` is not None) and the payload is at
least ``threshold`` bytes, else plain.
"""

from __future__ import annotations

import struct

from .deflate import compress
from .wire import Opcode


def control_frame(opcode: int, payload: bytes) -> bytes:
    """Return one unmasked control frame (close, ping, pong); its payload is at most 125 bytes."""
    assert len(payload) <= 125, "control frame payloads are at most 125 bytes (RFC 6455 §5.5)"
    return bytes((0x80 | opcode, len(payload))) + payload


def data_frame(payload: bytes, *, binary: bool, compressed: bool = False) -> bytes:
    """Return one complete, unfragmented, unmasked data frame holding ``payload``.

    ``compressed``: the payload is permessage-deflate data (``deflate.compress``), marked
    with RSV1.
    """
    first = (0xC0 if compressed else 0x80) | (Opcode.BINARY if binary else Opcode.TEXT)
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def message_frame(payload: bytes, *, binary: bool, window_bits: int | None, threshold: int, level: int = 6) -> bytes:
    """The frame for ``payload`` on a connection that compresses with ``window_bits`` (None: not)."""
    if window_bits is None or len(payload) < threshold:
        return data_frame(payload, binary=binary)
    return data_frame(compress(payload, window_bits, level), binary=binary, compressed=True)
