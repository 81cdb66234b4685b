"""What the client session asks its I/O shell to do: effects, and connection attempts.

Plain values (attrs, frozen). :class:`~wsnursery.client.session.ClientSession` returns lists
of :data:`Effect`; the shell (:mod:`wsnursery.client.sdk`) carries each out in order and
never decides anything itself.
"""

from __future__ import annotations

from typing import Any

import attrs

from .errors import ServerError, TransportClosed
from .options import Published
from .receiver import Gap, Message

__all__ = [
    "Attempt",
    "DropConnection",
    "Effect",
    "FetchToken",
    "PublishConfirmed",
    "PublishFailed",
    "Ready",
    "SendFrame",
    "SendPing",
    "SubscriptionConfirmed",
    "SubscriptionRefused",
    "ToApp",
]


@attrs.frozen
class SendFrame:
    """Queue ``payload`` (``frame`` encoded once, for the connection's encoding)."""

    frame: dict[str, Any]
    payload: str | bytes


@attrs.frozen
class SendPing:
    payload: bytes


@attrs.frozen
class ToApp:
    """Hand ``item`` to the application's subscription to ``channel`` (in order, once)."""

    channel: str
    item: Message | Gap


@attrs.frozen
class SubscriptionConfirmed:
    """The first ``subscribed`` of ``channel``: its ``async with`` may return."""

    channel: str


@attrs.frozen
class SubscriptionRefused:
    """The server refused the (re)subscribe: the subscription ends with ``error``."""

    channel: str
    error: ServerError


@attrs.frozen
class PublishConfirmed:
    key: str
    published: Published


@attrs.frozen
class PublishFailed:
    key: str
    error: Exception


@attrs.frozen
class Ready:
    """Every subscription is confirmed on the current connection (``connect`` may return)."""


@attrs.frozen
class DropConnection:
    """The link is dead (heartbeat): abort it; :meth:`ClientSession.connection_lost` follows."""

    error: TransportClosed


@attrs.frozen
class FetchToken:
    """Call the application's token callable; report with ``token_fetched``/``token_fetch_failed``."""


Effect = (
    SendFrame
    | SendPing
    | ToApp
    | SubscriptionConfirmed
    | SubscriptionRefused
    | PublishConfirmed
    | PublishFailed
    | Ready
    | DropConnection
    | FetchToken
)


@attrs.frozen
class Attempt:
    """Connect to ``url`` after waiting ``delay`` seconds."""

    url: str
    delay: float
