"""What one connection may do: admission before the upgrade, then checks on each request.

Sans-I/O (the caller passes times). ``admit`` runs on the upgrade request, before any 101:
- a browser ``Origin`` outside ``--allowed-origin``: HTTP 403;
- with tokens on, no token, or any token ``tokens.KeySet`` refuses: HTTP 401 with the short
  reason (and ``WWW-Authenticate: Bearer``); ``/echo`` needs none with ``--echo-open``.
The token and the query string that may carry it are never logged or echoed.

``Access`` then holds the connection's identity, its compiled grants and its rate buckets:
- subscribe, replay and presence need the right to subscribe, publish the right to publish:
  else ``error`` ``forbidden`` (counted toward ``max_errors``, like every error);
- past ``--subscribe-rate`` / ``--publish-rate``: ``error`` ``rate_limited`` (likewise);
- ``refresh`` verifies a new token for the same ``sub``: the grants and expiry are replaced;
  a bad one gets ``bad_request`` and the old token stays in force.
Without tokens the grants are everything and ``user`` is None, as in version 1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

from .http import HeadError
from .limits import TokenBucket
from .permissions import ALL, Grants
from .protocol import ProtocolError
from .security import Security
from .tokens import Identity, TokenError, token_from_request


class Refused(HeadError):
    """An upgrade refused before the 101: ``status``, a one-line reason, and the metric label."""

    def __init__(self, status: int, reason: str, label: str) -> None:
        super().__init__(status, reason)
        self.label = label

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", 'Bearer realm="wsnursery"')] if self.status == 401 else []


def admit(security: Security, headers: Mapping[str, str], target: str, endpoint: str) -> Identity | None:
    """The identity an upgrade request carries (None with tokens off), or ``Refused``."""
    if not security.origins.allows(headers.get("origin")):
        raise Refused(403, "origin not allowed", "origin")
    keys = security.keys
    if keys is None or (endpoint == "echo" and security.echo_open):
        return None
    token = token_from_request(headers, target)
    if token is None:
        raise Refused(401, "a token is required (Authorization: Bearer, or the token query parameter)", "token")
    try:
        return keys.verify(token)
    except TokenError as exc:
        raise Refused(401, str(exc), "token") from None


def for_connection(security: Security, identity: Identity | None, now: float) -> Access:
    """A connection's ``Access``: its own with a token or rate limits, else one shared by every
    connection of the server (it holds nothing per connection), so a server without the
    new settings spends no memory per connection on them."""
    if identity is None and not (security.publish_rate or security.subscribe_rate):
        return _shared(security)
    return Access(security, identity, now)


@functools.lru_cache(maxsize=16)
def _shared(security: Security) -> Access:
    return Access(security, None, 0.0)


class Access:
    """One connection's identity, grants and rate buckets."""

    __slots__ = ("_publish_bucket", "_security", "_subscribe_bucket", "grants", "identity")

    def __init__(self, security: Security, identity: Identity | None, now: float) -> None:
        self._security = security
        self.identity = identity
        self.grants: Grants = ALL if identity is None else identity.grants
        self._publish_bucket = TokenBucket(security.publish_rate, now=now) if security.publish_rate else None
        self._subscribe_bucket = TokenBucket(security.subscribe_rate, now=now) if security.subscribe_rate else None

    @property
    def user(self) -> str | None:
        return None if self.identity is None else self.identity.sub

    @property
    def expires(self) -> float | None:
        """Unix seconds when the token runs out (None: never, tokens off)."""
        return None if self.identity is None else self.identity.exp

    def may_read(self, channel: str, request_id: int | None) -> None:
        """replay and presence: the right to subscribe, no rate."""
        if not self.grants.subscribe(channel):
            raise ProtocolError("forbidden", f"no right to subscribe to {channel}", request_id)

    def may_subscribe(self, channel: str, request_id: int | None, now: float) -> None:
        self.may_read(channel, request_id)
        _take(self._subscribe_bucket, "subscribes", request_id, now)

    def may_publish(self, channel: str, request_id: int | None, now: float) -> None:
        if not self.grants.publish(channel):
            raise ProtocolError("forbidden", f"no right to publish to {channel}", request_id)
        _take(self._publish_bucket, "publishes", request_id, now)

    def refresh(self, token: str, request_id: int | None) -> Identity:
        keys = self._security.keys
        if keys is None or self.identity is None:
            raise ProtocolError("bad_request", "this server does not use tokens", request_id)
        try:
            identity = keys.verify_refresh(token, self.identity.sub)
        except TokenError as exc:
            raise ProtocolError("bad_request", f"refresh refused: {exc}", request_id) from None
        self.identity = identity
        self.grants = identity.grants
        return identity

    def seconds_left(self, now: float | None = None) -> float | None:
        """Seconds until the token expires (None without tokens); ``now`` is unix time."""
        if self.identity is None:
            return None
        return self.identity.exp - (time.time() if now is None else now)


def _take(bucket: TokenBucket | None, what: str, request_id: int | None, now: float) -> None:
    """One request out of ``bucket`` (None: no limit), else ``rate_limited``."""
    if bucket is not None and not bucket.take(now):
        raise ProtocolError("rate_limited", f"more than {bucket.rate:g} {what} a second", request_id)
