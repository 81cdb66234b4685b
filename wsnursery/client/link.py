"""Sans-I/O timers of one client connection: the heartbeat and the token's refresh.

Both are plain objects driven by the client session (:mod:`wsnursery.client.session`):
they are told what happened (``now`` in seconds on any monotonic clock) and say what is due.

- :class:`Heartbeat`: ping every ``interval``; a ping unanswered for ``timeout`` seconds with
  no other byte received in the meantime means the link is dead. While the client is not
  reading (the application is behind: backpressure) silence proves nothing, so no verdict.
- :class:`TokenRefresh`: when to ask the application for a fresh connection token (before the
  current one's ``exp``), and the ``refresh`` request waiting for its ``refreshed`` reply.

:func:`token_expiry` reads a JWT's ``exp`` without verifying anything: the client only needs
to know when to renew; the server is the one that checks signatures.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from typing import Any

import attrs

__all__ = ["Heartbeat", "HeartbeatVerdict", "TokenRefresh", "token_expiry"]


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a compact JWT, unverified; None if it has none."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 64 * 1024:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims: Any = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return float(exp)


class HeartbeatVerdict(enum.Enum):
    """What :meth:`Heartbeat.tick` found."""

    NOTHING = "nothing"
    PING = "ping"  # send a ping now
    DEAD = "dead"  # no pong, no byte within the timeout: drop the connection (4000)


@attrs.define
class Heartbeat:
    """Ping schedule and dead-link verdict of one connection.

    A ping goes out ``interval`` seconds after the connection started or the last pong (or
    the last verdict "alive"); it is answered when :meth:`pong` is called. At ``timeout``
    seconds after the ping: any byte received since (``bytes_in`` moved) or the client being
    paused counts as alive; otherwise the verdict is :attr:`HeartbeatVerdict.DEAD`, once.
    """

    interval: float
    timeout: float
    next_ping: float | None = None
    deadline: float | None = None  # an unanswered ping times out then
    pings: int = 0
    _bytes_at_ping: int = 0

    def start(self, now: float) -> None:
        self.next_ping, self.deadline = now + self.interval, None

    def stop(self) -> None:
        self.next_ping = self.deadline = None

    def pong(self, now: float) -> None:
        if self.deadline is not None:
            self.start(now)

    def tick(self, now: float, bytes_in: int, paused: bool) -> HeartbeatVerdict:
        if self.deadline is not None:
            if now < self.deadline:
                return HeartbeatVerdict.NOTHING
            if paused or bytes_in != self._bytes_at_ping:
                self.start(now)  # no pong yet, but the link carries traffic (or we hold it)
                return HeartbeatVerdict.NOTHING
            self.stop()
            return HeartbeatVerdict.DEAD
        if self.next_ping is None or now < self.next_ping:
            return HeartbeatVerdict.NOTHING
        if paused:
            self.start(now)  # we are not reading: a pong could not even be seen
            return HeartbeatVerdict.NOTHING
        self.pings += 1
        self.deadline, self._bytes_at_ping = now + self.timeout, bytes_in
        return HeartbeatVerdict.PING

    def next_deadline(self) -> float | None:
        return self.deadline if self.deadline is not None else self.next_ping


@attrs.define
class TokenRefresh:
    """When to renew the connection token, and the ``refresh`` request in flight.

    Times are kept on the session's monotonic clock; a token's ``exp`` (unix seconds) is
    converted with the wall clock reading given alongside. The renewal is due ``margin``
    seconds before expiry, or half-way through what is left for a token shorter than that.
    A refresh refused by the server (or one the server does not know) is not asked again on
    this connection: an ``error`` counts towards the server's ``max_errors``, and the worst
    case is a close 4001 at expiry, after which the client reconnects with a fresh token.
    """

    margin: float
    request_timeout: float
    refresh_at: float | None = None
    fetching: bool = False  # the application's token callable is running
    request_id: int | None = None  # the refresh sent, awaiting ``refreshed``
    token: str | None = None
    sent_at: float = 0.0
    refreshes: int = 0

    def schedule(self, exp: float | None, now: float, wall: float) -> None:
        """The connection now runs on a token expiring at ``exp`` (unix seconds, or None)."""
        self.request_id = self.token = None
        if exp is None:
            self.refresh_at = None
            return
        remaining = exp - wall
        self.refresh_at = now + max(0.0, remaining - min(self.margin, remaining / 2))

    def stop(self) -> None:
        self.refresh_at = self.request_id = self.token = None
        self.fetching = False

    def fetch_due(self, now: float) -> bool:
        """Whether to ask the application for a fresh token now (then :meth:`fetched` follows)."""
        if self.fetching or self.request_id is not None or self.refresh_at is None:
            return False
        if now < self.refresh_at:
            return False
        self.fetching = True
        return True

    def fetched(self, token: str, request_id: int, now: float) -> None:
        self.fetching = False
        self.token, self.request_id, self.sent_at = token, request_id, now

    def fetch_failed(self, now: float) -> None:
        self.fetching = False
        self.refresh_at = now + self.request_timeout

    def resend_due(self, now: float) -> bool:
        if self.request_id is None or now < self.sent_at + self.request_timeout:
            return False
        self.sent_at = now
        return True

    def next_deadline(self) -> float | None:
        if self.request_id is not None:
            return self.sent_at + self.request_timeout
        return None if self.fetching else self.refresh_at
