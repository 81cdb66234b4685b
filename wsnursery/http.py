"""The HTTP side of the port: reading a request head and answering plain requests.

Sans-I/O. Every connection starts as HTTP/1.1. The server reads the head (bounded by
``MAX_HEAD_BYTES``; a longer head gets 431) and decides: a WebSocket upgrade goes on to
``handshake`` (checked here, answered 101 there); ``GET /healthz`` and ``GET /metrics`` are
answered here; anything else gets 404.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import attrs

MAX_HEAD_BYTES = 16 * 1024
HEAD_END = b"\r\n\r\n"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}  # the rest: http.HTTPStatus's phrase
_HTTP_VERSION = re.compile(r"HTTP/(\d)\.(\d)")


class HeadError(Exception):
    """A request head we cannot serve; ``status`` is the HTTP answer to give."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@attrs.frozen
class RequestHead:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    version: tuple[int, int] = (1, 1)  # of the request line: (1, 0) or (1, 1)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def is_websocket(self) -> bool:
        upgrade = self.headers.get("upgrade", "").lower()
        return "websocket" in (token.strip() for token in upgrade.split(","))


def find_head_end(buffer: bytes | bytearray) -> int:
    """Index just past the head's blank line, or -1 when it has not all arrived.

    Raises HeadError(431) once the buffer holds more than MAX_HEAD_BYTES without an end.
    """
    end = buffer.find(HEAD_END)
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HeadError(431, "request head too large")
        return -1
    if end + len(HEAD_END) > MAX_HEAD_BYTES:
        raise HeadError(431, "request head too large")
    return end + len(HEAD_END)


def parse_head(head: bytes) -> RequestHead:
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HeadError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    version = _HTTP_VERSION.fullmatch(parts[2]) if len(parts) == 3 else None
    if version is None:
        raise HeadError(400, "malformed request line")
    if version[1] != "1":
        raise HeadError(505, f"HTTP/{version[1]}.{version[2]} is not supported; use HTTP/1.1")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HeadError(400, "malformed header line")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return RequestHead(method, target, headers, (1, int(version[2])))


def response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """One complete HTTP/1.1 response that closes the connection."""
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
    ]
    lines.extend(f"{name}: {value}" for name, value in extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _reason(status: int) -> str:
    """The standard reason phrase (426 is "Upgrade Required"), never "Unknown"."""
    reason = _REASONS.get(status)
    if reason is not None:
        return reason
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_response(status: int, payload: dict[str, Any], extra_headers: Iterable[tuple[str, str]] = ()) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return response(status, body, "application/json", extra_headers)
