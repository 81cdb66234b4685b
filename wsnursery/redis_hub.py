"""``--engine redis://HOST:PORT/DB``: the hub of a cluster, every channel's stream in Redis.

Every process naming the same Redis is one cluster: a channel has one stream (one epoch, one
seq count) whichever node publishes (``redis_store``), and each node keeps, per channel its
clients use, the same local ``Broadcast`` window as the memory engine, filled by its one
fan-in reader (``redis_fanin``). Connections read that window synchronously, so a message is
decoded once per node and written once per subscriber per burst, as with the memory engine.

- ``publish`` runs the store's script (dedup by key, next seq, add, trim) and answers only
  once Redis holds the message. The publishes of all this node's connections that arrive
  during one round trip go together in the next (``redis_batch``). The message reaches this node's subscribers the way it
  reaches every node's: through the reader, which takes every entry added while it handled
  the previous batch, so a burst is still written once per subscriber (appending each
  message as its publish returned would make one write per subscriber per message).
- ``attach`` of a channel new to this node loads its epoch, head and history from Redis
  (``history_size`` messages), then the reader watches it. ``attach`` of a channel the node
  holds first reads what Redis has past the window's head, so a client that saw seq N on
  another node and resumes here finds N held (the reader may be a round trip behind).
- ``recover`` answers from the window, which mirrors Redis's history bound.
- Loss: when the reader finds a gap (it was away longer than Redis kept the messages) or a
  new epoch (Redis lost the channel), the window's held messages are dropped, so every
  subscriber's next message is gone: each is closed with 4008 and resumes with ``since``,
  getting ``recovered: false``. Never silent.
- Redis unreachable: ``publish`` and ``attach`` of a new channel raise ``unavailable``
  (nothing confirmed that is not stored); subscribers keep their connections and windows,
  and the reader resumes from its last seqs when Redis is back.

- Presence, the server API's history and channel list, and disconnects answer for the whole
  cluster: ``presence`` is a ``redis_presence.ClusterPresence`` (the server uses it instead
  of a registry of its own, and names connections after ``node``); the reader hands it the
  join/leave entries it finds in the streams; ``history``, ``channel_infos`` and
  ``disconnect`` are ``redis_api``'s (``hub.ClusterHub``).

Bounds: as the memory engine per node (``history_size``/``history_bytes``/``history_age``
per window, ``max_channels`` windows, the least recently used idle one evicted and no longer
read); in Redis, see ``redis_store``. Policy ``block`` is per node: local publishers wait for
local subscribers; messages from other nodes never wait, and a subscriber that lags past the
window is closed with 4008.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import trio

from . import logs, redis_api
from .api import ChannelInfo, History
from .broadcast import Broadcast, Policy, Receiver, StoredMessage
from .hub import LocalWindows, PublishResult, PublishTicket
from .presence import DEFAULT_MAX_MEMBERS
from .protocol import Position, ProtocolError
from .redis_batch import PendingPublish, PublishBatcher
from .redis_fanin import FanIn
from .redis_presence import DEFAULT_NODE_TTL, ClusterPresence
from .redis_store import DEFAULT_PREFIX, Entry, PresenceEntry, RedisStore, Unavailable, connect

log = logs.get("redis")


class RedisHub(LocalWindows):
    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1024,
        history_bytes: int = 64 * 2**20,
        history_age: float = 300.0,
        dedup_size: int = 10_000,
        dedup_age: float = 300.0,
        max_channels: int = 10_000,
        block: bool = False,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        read_block: float = 5.0,
        max_presence_members: int = DEFAULT_MAX_MEMBERS,
        node_ttl: float = DEFAULT_NODE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, prefix = _split_prefix(url, prefix)
        self.node = secrets.token_hex(4)  # this process in the cluster: its liveness key, its conn names
        self.presence = ClusterPresence(
            self.node,
            max_members=max_presence_members,
            node_ttl=node_ttl,
            history_size=history_size,
            history_age=history_age,
        )
        self.disconnect_handler: Callable[[str], int] | None = None  # the server's: closes a user's connections
        self._settings: dict[str, Any] = {
            "prefix": prefix,
            "history_size": history_size,
            "history_age": history_age,
            "dedup_size": dedup_size,
            "dedup_age": dedup_age,
            "timeout": timeout,
        }
        self._history_size = history_size
        self._history_bytes = history_bytes
        self._history_age = history_age
        self._max_channels = max_channels
        self._policy = Policy.WAIT if block else Policy.CLOSE
        self._read_block = read_block
        self._clock = clock
        self._channels: dict[str, Broadcast] = {}
        self._loading: dict[str, trio.Event] = {}
        self._store: RedisStore | None = None
        self.fanin: FanIn | None = None
        self.batcher: PublishBatcher | None = None
        self.resets = 0  # windows dropped for a gap or a new epoch (each closes its subscribers)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> RedisHub:
        """The hub for a server's ``Config`` (``overrides``: the keyword arguments above)."""
        settings: dict[str, Any] = {
            "history_size": config.history_size,
            "history_bytes": config.history_bytes,
            "history_age": config.history_age,
            "dedup_size": config.dedup_size,
            "dedup_age": config.dedup_age,
            "max_channels": config.max_channels,
            "block": config.slow_consumer_policy == "block",
            "max_presence_members": config.max_presence_members,
            "node_ttl": config.node_ttl,
        }
        return cls(config.engine, **(settings | overrides))

    # -- lifetime ---------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Connect (lazily: Redis may be down), start the reader, serve until cancelled."""
        async with connect(self.url, **self._settings) as store:
            self._store = store
            self.fanin = FanIn(store, self, block=self._read_block, node=self.node)
            self.batcher = PublishBatcher(store)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.batcher.run)
                    await nursery.start(self.presence.run, store)
                    await nursery.start(self.fanin.run)
                    log.info("redis engine on %s (prefix %r)", _redact(self.url), store.prefix)
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                self._store = self.batcher = None

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            raise Unavailable("the redis engine is not running")
        return self._store

    # -- the Hub protocol -------------------------------------------------------------

    async def position(self, channel: str) -> Position | None:
        return await self.store.position(channel)

    async def publish(self, channel: str, data: Any, key: str | None = None, size: int = 0) -> PublishResult:
        broadcast = self._channels.get(channel)
        if broadcast is not None:
            self._touch(channel, broadcast)
            if broadcast.policy is Policy.WAIT and broadcast.any_full():
                await broadcast.wait_room()
        return await self._submit(channel, data, key, broadcast).wait()

    def submit(self, channel: str, data: Any, key: str | None, size: int) -> PublishTicket | None:
        broadcast = self._channels.get(channel)
        if broadcast is not None:
            if broadcast.policy is Policy.WAIT and broadcast.any_full():
                return None  # ``publish`` waits for room first
            self._touch(channel, broadcast)
        return self._submit(channel, data, key, broadcast)

    def _submit(self, channel: str, data: Any, key: str | None, broadcast: Broadcast | None) -> PendingPublish:
        """Queue the publish for the next round trip, with the publishes of every other
        connection of this node that arrive meanwhile (``redis_batch``): one pipeline for all.
        This node's subscribers get the message the way every node's do: through the reader,
        which takes every entry added while it handled the previous batch, so a burst is
        written to each subscriber once (appending each message as its publish returned
        would make one write per subscriber per message)."""
        if self.batcher is None:
            raise Unavailable("the redis engine is not running")
        return self.batcher.submit(channel, data, key, broadcast.position if broadcast is not None else None)

    async def attach(self, channel: str, receiver: Receiver) -> Broadcast:
        broadcast = self._channels.get(channel)
        if broadcast is not None:
            self._touch(channel, broadcast)
            await self._catch_up(channel, broadcast)
            broadcast = self._channels.get(channel)  # a reset may have replaced it meanwhile
        if broadcast is None:  # (``is None``: an empty Broadcast is falsy, it has a length)
            broadcast = await self._load(channel)
        broadcast.expire(self._clock())
        broadcast.receivers.add(receiver)
        return broadcast

    # -- what the reader feeds (``redis_fanin.FanInSink``) -------------------------------

    def entries(self, channel: str, entries: list[Entry]) -> None:
        broadcast = self._channels.get(channel)
        if broadcast is None:
            return
        now_wall, now = time.time(), self._clock()
        broadcast.expire(now)
        for entry in entries:
            if entry.epoch != broadcast.epoch or entry.seq <= broadcast.head:
                continue  # another epoch (the reader resets it), or already held
            if entry.seq != broadcast.head + 1:
                self._gap(broadcast, entry.seq)
            born = now - max(0.0, now_wall - entry.ts / 1000)
            broadcast.send(StoredMessage(channel, entry.epoch, entry.seq, entry.data, entry.ts, born, entry.size))

    def presence_entries(self, channel: str, entries: list[PresenceEntry]) -> None:
        broadcast = self._channels.get(channel)
        self.presence.deliver(channel, entries, broadcast.head if broadcast is not None else 0)

    def control(self, fields: dict[bytes, bytes]) -> int | None:
        """A cluster-wide request from another node (``disconnect``): done here too; the count."""
        user = fields.get(b"u")
        if fields.get(b"o", b"").decode() == self.node or fields.get(b"k") != b"disconnect" or user is None:
            return None
        handler = self.disconnect_handler
        return 0 if handler is None else handler(user.decode("utf-8", "replace"))

    # -- the server API, for the whole cluster (``hub.ClusterHub``) --------------------------

    async def history(self, channel: str, since: int | None, limit: int) -> History:
        return await redis_api.history(self.store, channel, since, limit)

    async def channel_infos(self) -> list[ChannelInfo]:
        return await redis_api.channels(self.store)

    async def leave_cluster(self) -> None:
        """Stopping gracefully: this node's presence members leave now (``redis_presence``)."""
        await self.presence.leave_all()

    async def disconnect(self, user: str, here: Callable[[], int]) -> int:
        """Close ``user``'s connections on every node (``here`` closes this node's); how many,
        as far as the other nodes answered within ``DISCONNECT_WAIT`` (``redis_api``)."""
        return await redis_api.disconnect(self.store, self.node, user, here)

    def reset(self, channel: str, epoch: str) -> None:
        old = self._channels.get(channel)
        if old is None:
            return
        self._channels[channel] = self._window(channel, epoch)
        self._retire(old)

    # -- windows ----------------------------------------------------------------------

    def _window(self, channel: str, epoch: str) -> Broadcast:
        return Broadcast(
            channel,
            epoch,
            capacity=self._history_size,
            max_bytes=self._history_bytes,
            max_age=self._history_age,
            policy=self._policy,
        )

    async def _load(self, channel: str) -> Broadcast:
        """Make this node's window of ``channel`` from Redis (one load at a time per channel)."""
        while (loading := self._loading.get(channel)) is not None:
            await loading.wait()
            if (broadcast := self._channels.get(channel)) is not None:
                return broadcast
        if len(self._channels) >= self._max_channels:
            self._evict_idle_channel()
        self._loading[channel] = done = trio.Event()
        try:
            snapshot = await self.store.snapshot(channel, self._history_size)
            broadcast = self._window(channel, snapshot.epoch)
            _start_at(broadcast, snapshot.entries[0].seq if snapshot.entries else snapshot.head + 1)
            self._channels[channel] = broadcast
            self.entries(channel, list(snapshot.entries))
            if self.fanin is not None:  # from the newest entry: a presence event after the head too
                self.fanin.watch(channel, snapshot.epoch, *max((snapshot.head, 0), snapshot.last))
            return broadcast
        finally:
            del self._loading[channel]
            done.set()

    async def _catch_up(self, channel: str, broadcast: Broadcast) -> None:
        """Take what Redis holds past what the reader handed over (it may be a round trip
        behind): messages and presence events in the stream's order, as the reader would, and
        the reader goes on after them (so a watcher never gets an event after a later message).
        Bounded by the stream's length (``history_size`` messages and their presence entries)."""
        fanin = self.fanin
        start = fanin.last_id(channel) if fanin is not None else None
        if fanin is None or start is None or start[0] != broadcast.epoch:
            return
        epoch, after = start[0], (start[1], start[2])
        while True:
            try:
                raw = await self.store.read_from(channel, after, self._history_size)
            except Unavailable:
                return  # the window is what this node has; the subscriber resumes from it
            now = fanin.last_id(channel)  # the reader may have moved on meanwhile
            if now is None or now[0] != epoch or any(entry.epoch != epoch for entry in raw):
                return  # a new epoch: the reader finds it and resets the window
            seen = (now[1], now[2])
            fresh = [entry for entry in raw if (entry.seq, _sub(entry)) > seen]
            messages = [entry for entry in fresh if isinstance(entry, Entry)]
            events = [entry for entry in fresh if isinstance(entry, PresenceEntry)]
            if messages:
                self.entries(channel, messages)
            if events:
                self.presence_entries(channel, events)
            if fresh:
                fanin.advance(channel, fresh[-1].seq, _sub(fresh[-1]))
            if len(raw) < self._history_size:
                return
            after = (raw[-1].seq, _sub(raw[-1]))

    def _touch(self, channel: str, broadcast: Broadcast) -> None:
        del self._channels[channel]
        self._channels[channel] = broadcast  # re-inserted last: dict order is recency

    def _evict_idle_channel(self) -> None:
        for name, broadcast in self._channels.items():
            if not broadcast.receivers:
                del self._channels[name]
                if self.fanin is not None:
                    self.fanin.unwatch(name)
                return
        raise ProtocolError("too_many_channels", f"the server holds its limit of {self._max_channels} channels")

    def _gap(self, broadcast: Broadcast, seq: int) -> None:
        """Messages before ``seq`` are gone from Redis: drop the window so subscribers see the loss."""
        if broadcast.head == 0 and not broadcast.receivers:  # a new epoch's window, read from its oldest
            _start_at(broadcast, seq)
            return
        self.resets += 1
        log.warning(
            "channel %s: messages %d..%d are no longer in redis; subscribers resume with since",
            broadcast.name,
            broadcast.head + 1,
            seq - 1,
        )
        broadcast.expire(float("inf"))  # drop every message held
        _start_at(broadcast, seq)

    def _retire(self, broadcast: Broadcast) -> None:
        """The channel has a new epoch: every subscriber of the old window has lost its place."""
        self.resets += 1
        broadcast.expire(float("inf"))
        _start_at(broadcast, broadcast.head + 2)  # one message past every cursor is gone
        receivers = tuple(broadcast.receivers)
        broadcast.receivers.clear()
        for receiver in receivers:
            receiver.notify()  # its owner finds its next message gone: closed with 4008
        broadcast.progressed()  # publishers waiting on it (policy block) go on


def _sub(entry: Entry | PresenceEntry) -> int:
    """The n of a stream entry's id ``<seq>-<n>`` (0 for a message)."""
    return entry.sub if isinstance(entry, PresenceEntry) else 0


def _start_at(broadcast: Broadcast, seq: int) -> None:
    """Place an empty window so that ``seq`` is the next message it takes."""
    assert len(broadcast) == 0
    broadcast.head, broadcast.oldest = seq - 1, seq


def _split_prefix(url: str, default: str) -> tuple[str, str]:
    """``redis://host/0?prefix=app1:`` -> the URL without it, and the key prefix (several
    clusters can share one Redis database)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if not prefixes:
        return url, default
    rest = urllib.parse.urlencode([(name, value) for name, value in query if name != "prefix"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), prefixes[-1]


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
