"""The server side of the server API, and what an embedding trio application calls directly.

``Server`` inherits these methods: ``await server.publish(channel, data, key=...)`` publishes
like a client would (same channel grammar, same data model, same idempotency keys), and the
HTTP API (``api.ApiHandler``) calls the same methods. On the memory engine they read this
process's state; on a hub shared by a cluster (``hub.ClusterHub``: the Redis engine) history,
the channel list and presence answer from Redis for every node, and ``disconnect`` also asks
every other node to close the user's connections (``redis_api``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import codec
from .api import ChannelInfo, History, HistoryMessage
from .codec import Encoding
from .hub import ClusterHub
from .presence import Member
from .protocol import Position, ProtocolError
from .wire import CloseCode

if TYPE_CHECKING:
    from .broadcast import Broadcast
    from .connection import Connection
    from .context import ConnectionContext
    from .hub import Hub
    from .metrics import Metrics

DISCONNECT_REASON = "disconnected by the server API"
HISTORY_DEFAULT_LIMIT = 1000


class ServerApiMixin:
    """Publish, history, channels, presence and disconnect, on a server's own state."""

    hub: Hub
    metrics: Metrics
    context: ConnectionContext
    connections: set[Connection]

    def check_channel(self, channel: str) -> None:
        """ProtocolError ``invalid_channel`` for a name the channel grammar refuses."""
        self.context.parser.check_channel(channel)

    async def publish(self, channel: str, data: Any, key: str | None = None) -> Position:
        """Publish ``data`` on ``channel`` (``key``: idempotency); the message's position."""
        self.check_channel(channel)
        try:
            codec.check_value(data)
        except codec.ValueNotCarried as exc:
            raise ProtocolError("bad_request", str(exc)) from None
        size = len(codec.encode({"data": data}, Encoding.JSON))  # what the history byte bound counts
        published = await self.hub.publish(channel, data, key, size)
        (self.metrics.duplicate_publishes if published.duplicate else self.metrics.publishes).inc()
        return published.position

    def _stream(self, channel: str) -> Broadcast | None:
        return self.hub.broadcast(channel)

    async def history(self, channel: str, since: int | None, limit: int | None) -> History:
        self.check_channel(channel)
        if isinstance(self.hub, ClusterHub):
            return await self.hub.history(channel, since, limit or HISTORY_DEFAULT_LIMIT)
        stream = self._stream(channel)
        if stream is None:
            return History(None, 0, [])
        start = stream.oldest - 1 if since is None else max(since, stream.oldest - 1)
        messages = stream.after(start, min(limit or HISTORY_DEFAULT_LIMIT, stream.head - start)) or []
        held = [HistoryMessage(m.seq, m.data, m.ts) for m in messages if m is not None]
        return History(stream.epoch, stream.head, held)

    async def channels(self) -> list[ChannelInfo]:
        if isinstance(self.hub, ClusterHub):
            return await self.hub.channel_infos()
        names = getattr(self.hub, "channel_names", None)  # a hub that can list its channels
        found = (
            names()
            if names is not None
            else sorted({c for conn in self.connections for c in conn.handlers.subscriptions})
        )
        infos = []
        for name in found:
            stream = self._stream(name)
            if stream is not None:
                infos.append(ChannelInfo(name, stream.epoch, stream.head, len(stream.receivers)))
        return infos

    async def presence(self, channel: str) -> tuple[list[Member], bool]:
        self.check_channel(channel)
        return await self.context.presence.listing(channel)

    async def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` with 4003: this process's, and in a cluster every
        other node's too; how many were closed (in a cluster: see ``redis_api.disconnect``)."""
        if isinstance(self.hub, ClusterHub):  # unavailable: nothing is closed anywhere
            return await self.hub.disconnect(user, lambda: self.disconnect_here(user))
        return self.disconnect_here(user)

    def disconnect_here(self, user: str) -> int:
        """Close every connection of ``user`` in this process with 4003; how many there were."""
        count = 0
        for connection in list(self.connections):
            if connection.user == user and connection.close_code is None:
                connection.request_close(CloseCode.DISCONNECTED, DISCONNECT_REASON)
                count += 1
        return count
