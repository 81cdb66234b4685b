"""Client SDK for wsnursery (protocol v1), on anyio: runs under Trio and asyncio.

    async with wsnursery.client.connect("ws://127.0.0.1:8765/") as client:
        async with client.subscribe("jobs.42") as messages:
            await client.publish("jobs.42", {"step": 1})
            async for message in messages:   # ordered, no repeats, gaps reported
                ...

``messages`` yields :class:`Message` objects (``channel``, ``epoch``, ``seq``, ``data``,
``ts``) strictly in ``seq`` order, each once, and a :class:`Gap` object in the same
iteration, right before the first message after a loss the server could not repair
(``reason`` ``"history_exceeded"`` or ``"epoch_changed"``). ``publish`` returns a
:class:`Published` (``channel``, ``epoch``, ``seq``, ``key``) once the server holds the message.

The client reconnects by itself (exponential backoff with jitter; :class:`GaveUp` after
``max_reconnects`` failed attempts in a row), fails over between the URLs it was given,
resubscribes every channel from where it stopped (``since``), re-sends unconfirmed publishes
with the same idempotency key, re-sends requests unanswered after ``request_timeout``, and
drops a link that answers no ping within ``heartbeat_timeout``. ``token=`` sends a bearer
token (a callable is asked again on reconnect and before expiry). ``client.stats`` counts
what it did; ``client.abort()`` kills the TCP connection abruptly (for fault tests).
Exceptions: see :mod:`wsnursery.client.errors`.

Layout: :mod:`~wsnursery.client.session` (every decision, sans-I/O) with its parts
:mod:`~wsnursery.client.receiver`, :mod:`~wsnursery.client.publisher` and
:mod:`~wsnursery.client.link`; :mod:`~wsnursery.client.sdk` (the anyio shell) over
:mod:`~wsnursery.client.transport` (wsproto).
"""

from ..protocol import Position
from .errors import (
    ClientError,
    Closed,
    ConnectionClosed,
    Disconnected,
    Forbidden,
    GaveUp,
    ServerError,
    TokenExpired,
)
from .options import ClientStats, Options, Published
from .receiver import Gap, Message
from .sdk import Client, Subscription, connect

__all__ = [
    "Client",
    "ClientError",
    "ClientStats",
    "Closed",
    "ConnectionClosed",
    "Disconnected",
    "Forbidden",
    "Gap",
    "GaveUp",
    "Message",
    "Options",
    "Position",
    "Published",
    "ServerError",
    "Subscription",
    "TokenExpired",
    "connect",
]
