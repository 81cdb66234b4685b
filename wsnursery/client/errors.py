"""What callers of the client SDK must be ready to handle.

    ClientError
    ├── Closed              the client or the subscription is closed; nothing more will come
    │   ├── ConnectionClosed    the server closed with a code the client must not retry
    │   │   ├── TokenExpired        4001 and no token callable to get a fresh token from
    │   │   └── Disconnected        4003: the server's API disconnected this user
    │   └── GaveUp              ``max_reconnects`` consecutive reconnect attempts failed
    └── ServerError         an ``error`` frame answering one request (``code``, ``reason``)
        └── Forbidden       code ``forbidden``, close 1008 or HTTP 401/403 on the handshake

``Closed``/``GaveUp``/``ConnectionClosed`` end the whole client: every pending ``publish`` and
every subscription iterator raises the same exception. A ``ServerError`` only fails the call
it answers (a ``Forbidden`` that came as a close 1008 or an HTTP 401/403 ends the client too:
``client.error`` then holds it).

The transport's own exceptions (``TransportError`` and its two kinds) live here too, so the
sans-I/O session can judge a failed connection without importing the I/O layer.
"""

from __future__ import annotations

from ..wire import CloseCode


class ClientError(Exception):
    """Base class of the SDK's exceptions."""


class Closed(ClientError):
    """The client (or the subscription) is closed."""


class ConnectionClosed(Closed):
    """The server closed the connection with a code that reconnecting cannot fix.

    Codes 1002 (protocol error), 1003 (unsupported data), 1007 (invalid payload) and 1009
    (message too big) mean the client sent something the server will refuse again; 4001 and
    4003 come as the subclasses :class:`TokenExpired` and :class:`Disconnected`.
    """

    def __init__(self, code: int, reason: str = "", *, what: str = "") -> None:
        what = what or f"server closed the connection with {int(code)}"
        super().__init__(what + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class TokenExpired(ConnectionClosed):
    """Close 4001: the connection token expired (or was revoked) and the client was given a
    fixed token string, so reconnecting would present the same dead token. Pass a callable
    as ``token`` to have the client fetch a fresh one instead."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(
            CloseCode.TOKEN_EXPIRED,
            reason,
            what="connection token expired (close 4001); pass token= a callable to renew it",
        )


class Disconnected(ConnectionClosed):
    """Close 4003: the server's API disconnected this client (``/api/disconnect``).

    The client does not reconnect: whoever runs the server decided this user must go."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(CloseCode.DISCONNECTED, reason, what="disconnected by the server's API (close 4003)")


class GaveUp(Closed):
    """``attempts`` reconnect attempts in a row failed (``max_reconnects``); ``last_error`` is
    the last failure. On the very first connect the initial attempt comes on top."""

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        detail = f": {type(last_error).__name__}: {last_error}" if last_error is not None else ""
        super().__init__(f"gave up after {attempts} failed reconnect attempts{detail}")
        self.attempts = attempts
        self.last_error = last_error


class ServerError(ClientError):
    """The server answered a request with ``{"type": "error", "code": ..., "reason": ...}``."""

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason


class Forbidden(ServerError):
    """Refused by policy: error code ``forbidden``, close 1008, or HTTP 401/403 on connect.

    ``close_code`` is 1008 (or the HTTP status) when the refusal ended the connection; the
    client does not reconnect after that.
    """

    def __init__(self, reason: str = "", close_code: int | None = None) -> None:
        super().__init__("forbidden", reason)
        self.close_code = close_code


# ----------------------------------------------------------------------------- transport


class TransportError(Exception):
    """The WebSocket connection cannot be used any more (base class)."""


class HandshakeRejected(TransportError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"handshake rejected with HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class TransportClosed(TransportError):
    """The connection ended: a close frame (``code``, ``reason``) or 1006 without one.

    ``remote`` is true when the code came in the peer's close frame, false when this side
    decided it (1006 for a lost connection, 1002 for a frame wsproto refused, 1009).
    """

    def __init__(self, code: int, reason: str = "", *, remote: bool = False) -> None:
        super().__init__(f"connection closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason
        self.remote = remote
