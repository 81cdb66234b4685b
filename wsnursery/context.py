"""What a connection is handed: the server's parts it may use, and the states it goes through.

A connection never sees the ``Server``: the server builds one ``ConnectionContext`` and gives
it to every connection. What is not in it (the listeners, the other connections, the
shutdown machinery) a connection cannot reach, and ``server`` imports ``connection``, never
the reverse.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import attrs

from .config import Config
from .delivery import Deliverer, FrameCache
from .heartbeat import Heartbeats
from .hub import Hub
from .metrics import Metrics
from .presence import PresenceRegistry, connection_ids
from .protocol import RequestParser
from .security import Security
from .timers import DeadlineTimer


@attrs.frozen
class ConnectionContext:
    """The server's parts a connection uses, shared by all of them."""

    config: Config
    hub: Hub  # stores messages, hands out each channel's broadcast
    deliverer: Deliverer  # writes what publishes made ready, once per burst
    frames: FrameCache  # each message's frame, encoded once per encoding
    timer: DeadlineTimer  # wakes a connection at its earliest ack-retransmit deadline
    heartbeats: Heartbeats  # sends every connection its pings
    metrics: Metrics
    parser: RequestParser
    server_name: str  # for the welcome frame
    # Identity, permissions, presence (issue 13); the defaults are "all off", as in version 1.
    security: Security = attrs.field(factory=lambda: Security.off())
    presence: PresenceRegistry = attrs.field(factory=PresenceRegistry)
    expiries: DeadlineTimer = attrs.field(factory=DeadlineTimer)  # wakes a connection when its token expires
    connection_ids: Iterator[str] = attrs.field(factory=connection_ids)  # "conn" in presence frames


class ConnectionState(enum.Enum):
    """Where a connection is in its life; it only moves forward."""

    OPEN = "open"  # reading requests, writing replies and messages
    CLOSING = "closing"  # a close code is decided: the reader stops, the writer finishes its write
    # (the whole queue for 1001 and 1008), then the close handshake runs
    CLOSED = "closed"  # the socket is closed; nothing is written or scheduled any more
