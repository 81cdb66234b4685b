"""The opening handshake (RFC 6455 §4.2), done from the request head the server already read.

Sans-I/O. The server parses every request head once (``http``); for a WebSocket upgrade
this module checks it and builds the ``101 Switching Protocols`` answer. No handshake
state outlives it: from then on the connection reads frames with ``frame_reader``. A
request that is not a valid upgrade gets 400, or 426 with the version we speak; an upgrade
over HTTP/1.0 gets 505 (RFC 6455 §4.2.1: "HTTP/1.1 or higher"). The one extension spoken is
permessage-deflate (``deflate.negotiate`` reads the client's ``Sec-WebSocket-Extensions``; the
101 carries the agreed parameters), so RSV1 is allowed only on connections that agreed to it.
"""

from __future__ import annotations

import base64
import hashlib

from .http import HeadError, RequestHead

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = "13"


class VersionError(HeadError):
    """The client speaks another WebSocket version: 426 with ``Sec-WebSocket-Version: 13``."""

    def __init__(self, offered: str) -> None:
        super().__init__(426, f"WebSocket version {offered or '(none)'} not supported; use {VERSION}")


def _tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(",") if token.strip()]


def offered_subprotocols(head: RequestHead) -> list[str]:
    return _tokens(head.headers.get("sec-websocket-protocol", ""))


def offered_extensions(head: RequestHead) -> str:
    """Every ``Sec-WebSocket-Extensions`` line of the request, joined with ", "."""
    return head.headers.get("sec-websocket-extensions", "")


def check_upgrade(head: RequestHead) -> str:
    """Validate a WebSocket upgrade request; return its ``Sec-WebSocket-Key``."""
    headers = head.headers
    if head.version < (1, 1):
        raise HeadError(505, "a WebSocket upgrade needs HTTP/1.1 or higher")
    if head.method != "GET":
        raise HeadError(400, "a WebSocket upgrade must be a GET")
    if "upgrade" not in (token.lower() for token in _tokens(headers.get("connection", ""))):
        raise HeadError(400, "missing Connection: Upgrade")
    version = headers.get("sec-websocket-version", "")
    if version != VERSION:
        raise VersionError(version)
    key = headers.get("sec-websocket-key", "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise HeadError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return key


def accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WEBSOCKET_GUID).digest()).decode()


def switching_protocols(key: str, subprotocol: str | None, extensions: str | None = None) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_token(key)}",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
