"""The thin Trio shell of the server API: read the bounded body, answer what ``api`` decides.

The server calls ``answer`` for a request under ``/api`` inside its handshake timeout (which
bounds the body read too), and writes the bytes it returns. A client that closes before its
whole body arrived gets nothing back.
"""

from __future__ import annotations

import trio

from . import http
from .api import ApiError, ApiHandler, encode_payload

READ_SIZE = 65536


def _json(status: int, payload: dict[str, object]) -> bytes:
    extra = [("WWW-Authenticate", 'apikey realm="wsnursery"')] if status == 401 else []
    return http.response(status, encode_payload(payload), "application/json", extra)


async def answer(
    stream: trio.abc.ReceiveStream, head: http.RequestHead, already: bytes, handler: ApiHandler
) -> bytes | None:
    """The complete HTTP answer to an API request (None: the client left mid-body). With the
    API off the server never calls this: ``/api/...`` then gets the plain 404 (or 405) as before."""
    try:
        length = handler.check_head(head.method, head.target, head.headers)
    except ApiError as exc:
        return _json(exc.status, exc.payload())
    body = bytearray(already[:length])
    while len(body) < length:
        data = await stream.receive_some(min(READ_SIZE, length - len(body)))
        if not data:
            return None
        body += data
    status, payload = await handler.handle(head.method, head.target, head.headers, bytes(body))
    return _json(status, payload)
