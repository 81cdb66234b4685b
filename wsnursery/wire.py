"""The WebSocket wire's numbers, in one place: opcodes and close codes as enums.

Every module that reads or writes frames, on the server and in the client SDK, names these
instead of literals, so a code's meaning is written down once (RFC 6455 §5.2 and §7.4, and
the protocol's own 4xxx codes, ``shared/protocol-v1.md``). They are ``IntEnum`` so that they
compare and pack as the plain integers the wire carries.
"""

from __future__ import annotations

import enum


class Opcode(enum.IntEnum):
    """A frame's opcode (RFC 6455 §5.2). 0x3-0x7 and 0xB-0xF are reserved: a 1002 close."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Why a connection ended (RFC 6455 §7.4, and the protocol's 4xxx codes)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  # binary on a JSON connection, text on a CBOR one
    NO_STATUS = 1005  # a close frame without a code; never sent on the wire
    LOST = 1006  # no close frame at all: the peer vanished; never sent on the wire
    INVALID_PAYLOAD = 1007  # text that is not UTF-8
    POLICY = 1008  # too many errors, refused by policy
    TOO_BIG = 1009  # a message over max_message_size
    INTERNAL = 1011
    TRY_LATER = 1013  # overloaded
    HEARTBEAT_TIMEOUT = 4000  # no pong, no frame, within the heartbeat timeout
    TOKEN_EXPIRED = 4001  # the connection token expired or was revoked
    DISCONNECTED = 4003  # disconnected through the server API
    SLOW_CONSUMER = 4008  # resume with ``since``


def may_be_sent(code: int) -> bool:
    """Whether a peer may put ``code`` in a close frame (RFC 6455 §7.4.1, §7.4.2)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
