"""The client's settings and the plain values it hands back (no I/O, no behaviour).

:class:`Options` is what ``connect(url, **options)`` takes; :class:`Published` is what
``publish`` returns; :class:`ClientStats` is ``client.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ..codec import Encoding
from .receiver import ChannelReceiver

__all__ = ["ENCODINGS", "ClientStats", "Counters", "Options", "Published", "TokenSource", "is_token"]

ENCODINGS = {"json": Encoding.JSON, "cbor": Encoding.CBOR}

TokenSource = str | Callable[[], str | Awaitable[str]] | None
"""A connection token: a fixed string, or a function (plain or async) returning a fresh one."""


@attrs.frozen
class Published:
    """Where a confirmed publish landed: ``seq`` in stream ``epoch`` of ``channel``."""

    channel: str
    epoch: str
    seq: int
    key: str


@attrs.frozen
class ClientStats:
    """The SDK's own counters (a snapshot; ``client.stats`` makes a fresh one)."""

    connects: int  # connections that got a welcome, the first included
    reconnects: int  # of those, the ones after the first
    connect_failures: int  # attempts that did not get as far as a welcome
    aborts: int  # client.abort() calls
    heartbeat_timeouts: int  # connections dropped for want of a pong or any traffic
    replays_requested: int  # replay requests sent (gap repair, and re-asks)
    retransmits_seen: int  # repeats dropped: server retransmits, replays, duplicated frames
    stale_dropped: int  # frames of a stream the subscription no longer follows
    gaps: int  # Gap events handed to the application
    delivered: int  # messages handed to subscriptions, in order, once each
    published: int  # publishes confirmed
    publish_retries: int  # publish frames sent again (timeout or reconnect), same key
    requests_resent: int  # subscribe/replay/unsubscribe/refresh re-sent after request_timeout
    server_errors: int  # error frames received
    token_refreshes: int = 0  # tokens renewed in-band (``refreshed`` replies)


@attrs.define
class Counters:
    """The session's running counts; :meth:`snapshot` makes a :class:`ClientStats`."""

    connects: int = 0
    aborts: int = 0
    heartbeat_timeouts: int = 0
    replays_requested: int = 0
    retransmits_seen: int = 0  # these three: of retired receivers; live ones count their own
    stale_dropped: int = 0
    gaps: int = 0
    delivered: int = 0
    published: int = 0
    requests_resent: int = 0
    server_errors: int = 0

    def retire(self, receiver: ChannelReceiver) -> None:
        """Keep the counts of a receiver whose subscription ended (:meth:`snapshot` reads
        only the live ones)."""
        self.retransmits_seen += receiver.duplicates_dropped
        self.stale_dropped += receiver.stale_dropped
        self.gaps += receiver.gaps_reported

    def snapshot(
        self,
        receivers: list[ChannelReceiver],
        *,
        connect_failures: int,
        publish_retries: int,
        token_refreshes: int,
    ) -> ClientStats:
        return ClientStats(
            connects=self.connects,
            reconnects=max(0, self.connects - 1),
            connect_failures=connect_failures,
            aborts=self.aborts,
            heartbeat_timeouts=self.heartbeat_timeouts,
            replays_requested=self.replays_requested,
            retransmits_seen=self.retransmits_seen + sum(r.duplicates_dropped for r in receivers),
            stale_dropped=self.stale_dropped + sum(r.stale_dropped for r in receivers),
            gaps=self.gaps + sum(r.gaps_reported for r in receivers),
            delivered=self.delivered,
            published=self.published,
            publish_retries=publish_retries,
            requests_resent=self.requests_resent,
            server_errors=self.server_errors,
            token_refreshes=token_refreshes,
        )


def is_token(value: object) -> bool:
    """Whether ``value`` can be sent as a token: a non-empty string on one line (a header)."""
    return isinstance(value, str) and bool(value) and "\r" not in value and "\n" not in value


def _token_source(_: Any, __: Any, value: Any) -> None:
    if value is not None and not callable(value) and not is_token(value):
        raise ValueError("token must be a non-empty one-line string or a callable returning one")


@attrs.frozen(kw_only=True)
class Options:
    """Client settings; ``connect(url, **options)`` takes these as keyword arguments."""

    encoding: str = attrs.field(default="cbor", validator=attrs.validators.in_(tuple(ENCODINGS)))
    request_timeout: float = 2.0  # no reply in this long: the request is sent again
    connect_timeout: float = 10.0  # TCP connect + handshake + welcome
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 10.0
    max_reconnects: int = 10  # consecutive failed attempts before GaveUp
    backoff_base: float = 0.1  # reconnect delay: min(backoff_max, base * 2**n) * U(0.5, 1)
    backoff_max: float = 10.0
    publish_backoff_max: float = 5.0  # cap on the extra jittered wait between publish retries
    max_pending_publishes: int = 256  # unconfirmed publishes; publish() waits past it
    buffer_size: int = 1024  # per-subscription delivery buffer (default for subscribe())
    close_timeout: float = 1.0  # graceful close handshake on exit
    max_message_size: int = 64 * 2**20  # largest message accepted from the server
    seed: int | None = None  # seeds the jitter (reconnect and retry timing) for reproducible runs
    extra_headers: tuple[tuple[str, str], ...] = ()
    ssl_context: Any = None
    # ``Authorization: Bearer <token>`` on every upgrade. A callable (plain or async) is
    # called before every connection and again ``token_refresh_margin`` seconds before the
    # token's ``exp``, for an in-band ``refresh``; with a fixed string a close 4001 ends the
    # client with TokenExpired.
    token: TokenSource = attrs.field(default=None, validator=_token_source)
    token_refresh_margin: float = 30.0
    compression: bool = True  # offer permessage-deflate; a server may decline it

    def __attrs_post_init__(self) -> None:
        for name in (
            "request_timeout",
            "connect_timeout",
            "heartbeat_interval",
            "heartbeat_timeout",
            "backoff_base",
            "backoff_max",
            "close_timeout",
            "token_refresh_margin",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number of seconds greater than 0, not {value!r}")
        for name in ("max_pending_publishes", "buffer_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1")
        if not (isinstance(self.max_reconnects, int) and self.max_reconnects >= 0):
            raise ValueError("max_reconnects must be a whole number of at least 0")

    @property
    def refreshable(self) -> bool:
        """Whether a fresh token can be had (``token`` is a callable)."""
        return callable(self.token)
