"""Sans-I/O reconnect policy: which node next, after what delay, and which endings are final.

:class:`Reconnects` is part of the client session. A failed attempt moves to the next URL
(at once while some node was not tried since the last good connection, with backoff once
every node failed); a lost connection is retried on the same node first, with backoff. A
connection counts as good once every subscription was confirmed on it; then the count of
failed attempts starts again. After ``max_reconnects`` failed attempts in a row: GaveUp.

Final endings (no reconnect): HTTP 401/403 or close 1008 (:class:`Forbidden`), close 4003
(:class:`Disconnected`), close 4001 when no token callable can give a fresh token
(:class:`TokenExpired`), and the server's refusals 1002/1003/1007/1009
(:class:`ConnectionClosed`). Everything else (1001, 1006, 1011, 1013, 4000, 4008, and 4001
with a token callable) reconnects.
"""

from __future__ import annotations

import random

import attrs

from ..wire import CloseCode
from .effects import Attempt
from .errors import (
    ConnectionClosed,
    Disconnected,
    Forbidden,
    GaveUp,
    HandshakeRejected,
    TokenExpired,
    TransportClosed,
)

__all__ = ["FATAL_CLOSE_CODES", "Reconnects"]

# Close codes after which reconnecting would only repeat the refusal.
FATAL_CLOSE_CODES = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_PAYLOAD,
        CloseCode.TOO_BIG,
    }
)


@attrs.define
class Reconnects:
    urls: list[str]
    max_reconnects: int
    backoff_base: float
    backoff_max: float
    rng: random.Random
    refreshable: bool = False  # a token callable can give a fresh token after 4001
    attempts: int = 0
    retries: int = 0  # failed attempts since the last good connection
    failures: int = 0  # failed attempts in all
    last_error: BaseException | None = None
    _url_index: int = 0
    _tried_this_round: int = 0  # different nodes failed in a row

    @property
    def url(self) -> str:
        return self.urls[self._url_index]

    def next_attempt(self) -> Attempt | GaveUp:
        self.attempts += 1
        if self.attempts == 1:
            return Attempt(self.url, 0.0)
        if self.retries >= self.max_reconnects:
            return GaveUp(self.retries, self.last_error)
        self.retries += 1
        if 0 < self._tried_this_round < len(self.urls):
            return Attempt(self.url, 0.0)  # another node, not tried since the last success
        delay = min(self.backoff_max, self.backoff_base * 2 ** min(self.retries - 1, 64))
        return Attempt(self.url, delay * self.rng.uniform(0.5, 1.0))

    def failed(self, error: BaseException) -> BaseException | None:
        """An attempt did not get as far as a welcome; returns the error if it is final."""
        if isinstance(error, HandshakeRejected) and error.status in (401, 403):
            return Forbidden(f"handshake refused with HTTP {error.status}", close_code=error.status)
        if isinstance(error, TransportClosed) and error.code == CloseCode.POLICY:
            return Forbidden(error.reason, close_code=CloseCode.POLICY)
        if isinstance(error, (Forbidden, ConnectionClosed)):
            return error
        self.failures += 1
        self.last_error = error
        self._tried_this_round += 1
        self._url_index = (self._url_index + 1) % len(self.urls)
        return None

    def connected(self) -> None:
        self._tried_this_round = 0

    def lost(self, error: BaseException | None, good: bool) -> BaseException | None:
        """A connection ended; returns the error if that ending is final."""
        if good:
            self.retries = 0
        self.last_error = error
        if not isinstance(error, TransportClosed):
            return None
        code, reason = error.code, error.reason
        if code == CloseCode.POLICY:
            return Forbidden(reason, close_code=CloseCode.POLICY)
        if code == CloseCode.DISCONNECTED and error.remote:
            return Disconnected(reason)
        if code == CloseCode.TOKEN_EXPIRED and error.remote and not self.refreshable:
            return TokenExpired(reason)
        if code in FATAL_CLOSE_CODES and error.remote:
            return ConnectionClosed(code, reason)
        return None
