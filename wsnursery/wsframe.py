"""Server-to-client WebSocket frames, built once and written to many sockets.

A server's frames are never masked (RFC 6455 §5.1), so the bytes of one message frame are
the same for every subscriber on the same encoding. That is what lets the hub encode a
broadcast once and every writer send the very same bytes.
"""

from __future__ import annotations

import struct

from .wire import Opcode


def control_frame(opcode: int, payload: bytes) -> bytes:
    """Return one unmasked control frame (close, ping, pong); its payload is at most 125 bytes."""
    assert len(payload) <= 125, "control frame payloads are at most 125 bytes (RFC 6455 §5.5)"
    return bytes((0x80 | opcode, len(payload))) + payload


def data_frame(payload: bytes, *, binary: bool) -> bytes:
    """Return one complete, unfragmented, unmasked data frame holding ``payload``."""
    first = 0x80 | (Opcode.BINARY if binary else Opcode.TEXT)
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload
