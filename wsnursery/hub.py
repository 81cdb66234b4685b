"""The hub: where channels live. ``Hub`` is the whole contract; ``MemoryHub`` the embedded engine.

The server and its connections use a hub only through the ``Hub`` protocol below, so a
second engine (Redis Streams, say) is one new module implementing it. The split:

- The hub stores: messages (data only, see ``broadcast.StoredMessage``), positions, idempotency
  keys. It never encodes a wire frame; the delivery side does that, once per encoding
  (``delivery.FrameCache``).
- Each channel a connection subscribes to has a ``broadcast.Broadcast`` in this process,
  handed out by ``attach``: the bounded window of recent messages that subscribers' cursors
  read synchronously on the hot path (``Broadcast.after``). A remote engine keeps that
  window filled from its store (in ``run``) and the cursors never know.
- Methods that may need I/O are ``async`` (``publish``, ``attach``, ``recover``,
  ``position``); ``detach``, ``broadcast`` and ``channel_count`` answer from this process.

Bounds (``MemoryHub``):
- history, per channel: ``history_size`` messages, ``history_bytes`` bytes (each message
  counts the length of the payload its publisher sent), ``history_age`` seconds; the oldest
  are dropped (see ``broadcast``): a resume from before them gets ``recovered: false``, a
  subscriber whose next message was dropped is closed with 4008.
- subscriber lag: policy ``close`` closes the lagging subscriber with 4008 (the connection
  decides); policy ``block`` makes the publisher wait (``Broadcast.wait_room``).
- channels: at most ``max_channels``; a new channel evicts the least recently used channel
  without subscribers, and when every channel has subscribers the request is refused with
  ``too_many_channels``.
- dedup: a bounded window of idempotency keys per channel (see ``DedupWindow``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import trio

from .api import ChannelInfo, History
from .broadcast import Broadcast, Policy, Receiver, StoredMessage
from .presence import PresenceRegistry
from .protocol import Position, ProtocolError
from .reliability import DedupWindow

__all__ = [
    "Broadcast",
    "ClusterHub",
    "Hub",
    "LocalWindows",
    "MemoryHub",
    "Policy",
    "PublishResult",
    "PublishTicket",
    "Receiver",
    "StoredMessage",
]


@attrs.frozen
class PublishResult:
    """What ``Hub.publish`` did: the message's position, and whether the key was a repeat."""

    position: Position
    duplicate: bool


class PublishTicket(Protocol):
    """A publish under way (``Hub.submit``)."""

    async def wait(self) -> PublishResult:
        """Where the message was stored (raises ``ProtocolError`` as ``publish`` would)."""


class Hub(Protocol):
    """Everything the server and its connections use of a hub.

    Errors a client should hear about are raised as ``ProtocolError`` (for example
    ``too_many_channels``); the connection turns them into error frames.
    """

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The hub's own background work (a remote engine reads its store here), for the
        server's lifetime: call ``task_status.started()`` when ready; cancelled at exit."""

    async def publish(self, channel: str, data: Any, key: str | None, size: int) -> PublishResult:
        """Store ``data`` as the channel's next message and deliver it to the channel's
        broadcast. ``key``: an idempotency key (a repeat returns the first position with
        ``duplicate=True``). ``size``: the message's byte estimate for the history bound.
        Under policy ``block`` this waits while a subscriber of the channel is full."""

    def submit(self, channel: str, data: Any, key: str | None, size: int) -> PublishTicket | None:
        """Start a publish, as ``publish`` would, without waiting for it to be stored, or
        None when this engine would gain nothing (then ``publish``). Publishes submitted one
        after another are stored in that order. A connection uses it to read its client's next
        requests while a remote engine stores the previous publishes (``handlers``)."""

    async def attach(self, channel: str, receiver: Receiver) -> Broadcast:
        """Add ``receiver`` to the channel's broadcast (creating the channel if needed)."""

    def detach(self, channel: str, receiver: Receiver) -> None:
        """Remove ``receiver`` (nothing happens when it is not attached)."""

    async def recover(self, channel: str, since: Position) -> bool:
        """Make the channel's attached broadcast hold every message after ``since`` if the
        store still has them (a remote engine reads them into the window); True when it
        does, False when some are gone (another epoch, or dropped at a bound)."""

    async def position(self, channel: str) -> Position | None:
        """The channel's head, or None when the hub holds no such channel."""

    def broadcast(self, channel: str) -> Broadcast | None:
        """The channel's broadcast in this process, if it has one (no I/O)."""

    @property
    def channel_count(self) -> int:
        """Channels held (for ``/healthz``)."""


@runtime_checkable
class ClusterHub(Protocol):
    """A hub shared by several nodes (``RedisHub``): what it answers for the whole cluster.

    The server uses its ``presence`` registry instead of one of its own, names connections
    after its ``node`` (``conn`` is unique in the cluster), answers the server API's history,
    channel list and disconnect through it, and sets ``disconnect_handler`` (which closes a
    user's connections on this node) for the disconnects other nodes ask for.
    """

    node: str
    presence: PresenceRegistry
    disconnect_handler: Callable[[str], int] | None

    async def history(self, channel: str, since: int | None, limit: int) -> History: ...

    async def channel_infos(self) -> list[ChannelInfo]: ...

    async def disconnect(self, user: str, here: Callable[[], int]) -> int:
        """Close ``user``'s connections on every node: ask the others, call ``here`` (which
        closes this node's and counts them) once asked; the total."""

    async def leave_cluster(self) -> None:
        """The server stops gracefully: what this node holds for the cluster goes now."""


class LocalWindows:
    """What every engine keeps in this process, and the part of ``Hub`` that needs nothing more.

    One ``Broadcast`` window per channel this process's clients use, in ``_channels``, in
    least recently used order (dict order). ``detach``, ``recover``, ``broadcast`` and the
    channel list answer from those windows alone, for ``MemoryHub`` and ``RedisHub`` alike.
    """

    _channels: dict[str, Broadcast]

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def broadcast(self, channel: str) -> Broadcast | None:
        return self._channels.get(channel)

    def channel_names(self) -> list[str]:
        """The channels held here, least recently used first (for the server API's channel list)."""
        return list(self._channels)

    def detach(self, channel: str, receiver: Receiver) -> None:
        broadcast = self._channels.get(channel)
        if broadcast is not None:
            broadcast.receivers.discard(receiver)
            broadcast.progressed()

    async def recover(self, channel: str, since: Position) -> bool:
        broadcast = self._channels.get(channel)
        return broadcast is not None and since.epoch == broadcast.epoch and broadcast.holds_after(since.seq)


class MemoryHub(LocalWindows):
    """The embedded default hub: every channel lives in this process's memory.

    Its history does not survive a restart, so each channel gets a fresh random epoch when it
    is created; a client resuming with an old epoch is told ``recovered: false``.
    """

    def __init__(
        self,
        *,
        history_size: int = 1024,
        history_bytes: int = 64 * 2**20,
        history_age: float = 300.0,
        dedup_size: int = 10_000,
        dedup_age: float = 300.0,
        max_channels: int = 10_000,
        block: bool = False,
        block_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._history_size = history_size
        self._history_bytes = history_bytes
        self._history_age = history_age
        self._dedup_size = dedup_size
        self._dedup_age = dedup_age
        self._max_channels = max_channels
        self._policy = Policy.WAIT if block else Policy.CLOSE
        self._block_timeout = block_timeout
        self._clock = clock
        self._channels: dict[str, Broadcast] = {}
        self._dedup: dict[str, DedupWindow] = {}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to do in the background: expiry happens on publish and attach."""
        task_status.started()
        await trio.sleep_forever()

    async def position(self, channel: str) -> Position | None:
        broadcast = self._channels.get(channel)
        return None if broadcast is None else broadcast.position

    def _channel(self, channel: str) -> Broadcast:
        broadcast = self._channels.pop(channel, None)
        if broadcast is None:
            if len(self._channels) >= self._max_channels:
                self._evict_idle_channel()
            broadcast = Broadcast(
                channel,
                secrets.token_hex(4),
                capacity=self._history_size,
                max_bytes=self._history_bytes,
                max_age=self._history_age,
                policy=self._policy,
            )
            self._dedup[channel] = DedupWindow(max_keys=self._dedup_size, max_age=self._dedup_age)
        self._channels[channel] = broadcast  # re-inserted last: dict order is recency
        return broadcast

    def _evict_idle_channel(self) -> None:
        for name, broadcast in self._channels.items():
            if not broadcast.receivers:
                del self._channels[name]
                del self._dedup[name]
                return
        raise ProtocolError("too_many_channels", f"the server holds its limit of {self._max_channels} channels")

    async def publish(self, channel: str, data: Any, key: str | None = None, size: int = 0) -> PublishResult:
        broadcast = self._channel(channel)
        now = self._clock()
        dedup = self._dedup[channel]
        if key is not None and (seen := dedup.lookup(key, now)) is not None:
            return PublishResult(Position(*seen), duplicate=True)
        if broadcast.policy is Policy.WAIT and broadcast.any_full():
            await broadcast.wait_room(self._block_timeout)  # then the lagging ones are closed 4008
            # The wait may have let the same key through on another task.
            if key is not None and (seen := dedup.lookup(key, now)) is not None:
                return PublishResult(Position(*seen), duplicate=True)
        broadcast.expire(now)
        seq = broadcast.head + 1
        broadcast.send(StoredMessage(channel, broadcast.epoch, seq, data, int(time.time() * 1000), now, size))
        if key is not None:
            dedup.remember(key, broadcast.epoch, seq, now)
        return PublishResult(Position(broadcast.epoch, seq), duplicate=False)

    def submit(self, channel: str, data: Any, key: str | None, size: int) -> PublishTicket | None:
        return None  # ``publish`` stores at once (but under policy ``block``): nothing to overlap

    async def attach(self, channel: str, receiver: Receiver) -> Broadcast:
        broadcast = self._channel(channel)
        broadcast.expire(self._clock())
        broadcast.receivers.add(receiver)
        return broadcast
