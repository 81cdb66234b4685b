"""Presence for a cluster on Redis: members of every node, ``join``/``leave`` in the channel's order.

With ``--engine redis://`` a channel's presence lives in Redis, next to its stream
(``redis_store``), so every node lists the same members and every node's watchers get the
same events:

- ``<prefix>{<channel>}:p``: a hash of the listed members, ``conn`` -> ``<node>\\n<user>``
  (user ``""`` for none, ``"=" + user`` for one); ``:pu``: the subscribers past
  ``max_presence_members`` (not listed), ``conn`` -> ``<node>``. ``conn`` names are unique in
  the cluster: they carry the node id (``presence.connection_ids(node)``).
- Every join and leave of a listed member is an entry of the channel's stream with the id
  ``<head seq>-*`` (so ``<seq>-<n>``, n >= 1) and the fields ``e`` (epoch), ``t``, ``k``
  (``j``/``l``), ``c`` (conn), ``u`` (user). It takes no seq; it sits after the message that
  was the head when it happened and before the next, and each node's fan-in reader, which
  reads the stream in order, hands it to the local watchers with ``after`` = that seq: the
  channel's order on every node. Readers of messages (history, snapshots, resumes) skip it.
- One script (``WRITE``) does a join or a leave atomically: the hashes, and the stream entry
  when a listed member came or went. ``max_presence_members`` is counted in Redis, for the
  whole cluster; ``complete`` is false while ``:pu`` is not empty.

Writes leave the connection at once: a join or leave is put in this node's queue of pending
writes (``PendingWrites``, plain data), which one task writes in order. A join and a leave of
the same membership that are both still pending cancel out (nobody could have seen either),
so the queue holds at most one write per membership of this node, plus the leaves of
memberships that ended while Redis was unreachable, at most ``MAX_PENDING`` in all. Past it
the oldest are dropped and logged: a dropped join is written again by the resync below when
the outage outlasted ``node_ttl``; a dropped leave leaves its member listed until this node
stops and is reaped (stale, never lost silently: the log says so). Each write is one script
call, one after another (about 0.4 ms each on the project's 2-core test machine).

Nodes. Each node refreshes ``<prefix>node:<id>`` (a liveness key expiring after ``node_ttl``
seconds) every ``node_ttl / 3`` and is in the set ``<prefix>nodes``; ``<prefix>node:<id>:ch``
is the set of channels where it has members. A presence listing skips the members of a node
whose liveness key is gone, so a SIGKILLed node's members drop out of every listing within
``node_ttl``. Within one more refresh period a live node reaps it: it takes
``<prefix>reap:<id>`` (SET NX, so one node does it), removes the dead node's members channel
by channel (script ``REAP``, which adds their ``leave`` entries to each stream at its head:
watchers get them in the channel's order), then deletes its sets. A live node that finds
its own liveness key gone when it refreshes (Redis was unreachable longer than ``node_ttl``,
or lost its data; it may have been reaped) writes all its current members again (a resync).
A node stopped gracefully (the server's shutdown calls ``leave_all`` before its hub stops)
writes every member's leave at once and deletes its liveness key; anything left behind is
reaped by another node.

Redis unreachable: queries (``presence``, ``GET /api/presence``) get ``unavailable``; writes
wait in the queue and are retried with backoff (50 ms doubling to 2 s); connections never wait
on Redis for presence. Redis Cluster is not supported (scripts touch the liveness keys of
nodes they learn from the hashes).
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
import trio
from coredis.tokens import PureToken

from . import logs
from .presence import DEFAULT_MAX_MEMBERS, Member, PresenceEvent, PresenceRegistry
from .redis_store import (
    _ENSURE,
    PRESENCE_ENTRIES,
    PresenceEntry,
    RedisStore,
    Unavailable,
    _ms,
    _text,
    user_of,
    user_text,
)

log = logs.get("redis")

DEFAULT_NODE_TTL = 10.0
MAX_PENDING = 100_000
REAP_BATCH = 100  # channels of a dead node read per SSCAN

# KEYS: the channel's meta, stream, dz, dh, epochs (for ensure), then :p, :pu, the node's channel set.
WRITE = (
    _ENSURE
    + f"local PRESENCE_ENTRIES = {PRESENCE_ENTRIES}\n"
    + """
local members, untracked, node_channels = KEYS[6], KEYS[7], KEYS[8]
local now, op, conn, node, user = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local max_members, size, age, last = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14] == '1'
local event = nil
if op == 'j' then
  if redis.call('HEXISTS', members, conn) == 0 and redis.call('HEXISTS', untracked, conn) == 0 then
    if redis.call('HLEN', members) < max_members then
      redis.call('HSET', members, conn, node .. '\\n' .. user)
      event = 'j'
    else
      redis.call('HSET', untracked, conn, node)
    end
  end
  redis.call('SADD', node_channels, channel)
else
  if redis.call('HDEL', members, conn) == 1 then event = 'l' else redis.call('HDEL', untracked, conn) end
  if last then redis.call('SREM', node_channels, channel) end
end
if event then
  local epoch, seq = ensure()
  redis.call('XADD', stream, 'MAXLEN', size + PRESENCE_ENTRIES, string.format('%d-*', seq),
    'e', epoch, 't', now, 'k', event, 'c', conn, 'u', user)
  if redis.call('PTTL', stream) < 0 then redis.call('PEXPIRE', stream, age) end
end
return event and 1 or 0
"""
)

# KEYS: meta, stream, dz, dh, epochs, :p, :pu, the dead node's liveness key. Removes the
# members of the node ARGV[7], unless its liveness key is back (checked here, atomically with
# the removal: a node that refreshed and wrote its members again is never reaped after that).
REAP = (
    _ENSURE
    + f"local PRESENCE_ENTRIES = {PRESENCE_ENTRIES}\n"
    + """
local members, untracked = KEYS[6], KEYS[7]
local now, dead, size, age = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
if redis.call('EXISTS', KEYS[8]) == 1 then return -1 end
local gone = {}
local raw = redis.call('HGETALL', members)
for i = 1, #raw, 2 do
  local node, user = string.match(raw[i + 1], '^([^\\n]*)\\n(.*)$')
  if node == dead then
    redis.call('HDEL', members, raw[i])
    gone[#gone + 1] = {raw[i], user}
  end
end
raw = redis.call('HGETALL', untracked)
for i = 1, #raw, 2 do
  if raw[i + 1] == dead then redis.call('HDEL', untracked, raw[i]) end
end
if #gone > 0 then
  local epoch, seq = ensure()
  for _, member in ipairs(gone) do
    redis.call('XADD', stream, 'MAXLEN', size + PRESENCE_ENTRIES, string.format('%d-*', seq),
      'e', epoch, 't', now, 'k', 'l', 'c', member[1], 'u', member[2])
  end
  if redis.call('PTTL', stream) < 0 then redis.call('PEXPIRE', stream, age) end
end
return #gone
"""
)

# KEYS: the dead node's liveness key, its channel set, the nodes set. ARGV: the node. Forgets
# the node once reaped, unless it came back meanwhile.
FORGET = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: :p, :pu. ARGV: the prefix. The listed members of live nodes, and the untracked count.
LIST = """
local raw = redis.call('HGETALL', KEYS[1])
local alive, out = {}, {}
for i = 1, #raw, 2 do
  local node = string.match(raw[i + 1], '^([^\\n]*)')
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 1 end
  if alive[node] then
    out[#out + 1] = raw[i]
    out[#out + 1] = raw[i + 1]
  end
end
return {out, redis.call('HLEN', KEYS[2])}
"""


@attrs.frozen
class Write:
    """One pending presence write: a join (``"j"``) or a leave (``"l"``) of ``conn`` on ``channel``."""

    kind: str
    channel: str
    conn: str
    user: str | None
    last: bool = False  # a leave of this node's last member of the channel


class PendingWrites:
    """This node's presence writes not yet in Redis, in order; at most one per membership."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.dropped = 0
        self._writes: collections.OrderedDict[tuple[str, str], Write] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, write: Write) -> None:
        key = (write.channel, write.conn)
        pending = self._writes.get(key)
        if pending is not None and pending.kind != write.kind:
            del self._writes[key]  # a join and its leave (or a leave and a rejoin): nothing to tell
            return
        self._writes[key] = write
        while len(self._writes) > self.max_pending:
            self._writes.popitem(last=False)
            self.dropped += 1

    def take(self) -> Write | None:
        if not self._writes:
            return None
        return self._writes.popitem(last=False)[1]


class ClusterPresence(PresenceRegistry):
    """Presence of a cluster: members in Redis, this node's watchers and members here.

    ``join``/``leave`` answer at once (they queue a write); ``listing`` asks Redis; events
    come back from the fan-in reader through ``deliver``.
    """

    def __init__(
        self,
        node: str,
        *,
        max_members: int = DEFAULT_MAX_MEMBERS,
        node_ttl: float = DEFAULT_NODE_TTL,
        history_size: int = 1024,
        history_age: float = 300.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        super().__init__(max_members)
        self.node = node
        self.node_ttl = node_ttl
        self._history_size = history_size
        self._history_age = history_age
        self._backoff = (backoff_min, backoff_max)
        self.writes = PendingWrites()
        self.local: dict[str, dict[str, Member]] = {}  # this node's members, by channel and conn
        self.resyncs = 0
        self.reaped = 0  # members of dead nodes this node removed
        self._alive = False  # refreshed its liveness key once (the first refresh finds none)
        self._store: RedisStore | None = None
        self._wake = trio.Event()
        self._scripts: dict[str, Any] = {}

    # -- keys -------------------------------------------------------------------------

    def node_key(self, node: str) -> str:
        assert self._store is not None
        return f"{self._store.prefix}node:{node}"

    def _channel_keys(self, store: RedisStore, channel: str) -> list[str]:
        base = f"{store.prefix}{{{channel}}}"
        return [f"{base}:m", f"{base}:s", f"{base}:dz", f"{base}:dh", store.epochs_key, f"{base}:p", f"{base}:pu"]

    # -- what connections call (no I/O) -------------------------------------------------

    def join(self, channel: str, member: Member, after: int) -> bool:
        self.local.setdefault(channel, {})[member.conn] = member
        self._queue(Write("j", channel, member.conn, member.user))
        return True  # Redis decides whether it is listed; the leave finds out

    def leave(self, channel: str, conn: str, tracked: bool, after: int) -> None:
        members = self.local.get(channel)
        member = None if members is None else members.pop(conn, None)
        if members is None or member is None:
            return
        if not members:
            del self.local[channel]
        self._queue(Write("l", channel, conn, member.user, last=not members))

    def members(self, channel: str) -> list[Member]:
        """This node's members only (the cluster's: ``listing``)."""
        return list(self.local.get(channel, {}).values())

    def complete(self, channel: str) -> bool:
        return True

    async def listing(self, channel: str) -> tuple[list[Member], bool]:
        store = self._running()

        async def read() -> Any:
            return await self._scripts["list"](self._channel_keys(store, channel)[5:], [store.prefix])

        raw, untracked = await store.guard(read)
        members = [Member(user_of(value.partition(b"\n")[2]), _text(conn)) for conn, value in zip(raw[::2], raw[1::2])]
        return members, int(untracked) == 0

    def deliver(self, channel: str, entries: list[PresenceEntry], head: int) -> None:
        """Events the reader found in the channel's stream: tell this node's watchers."""
        if not self.watched(channel):
            return
        for entry in entries:
            kind = "join" if entry.kind == "j" else "leave"
            # ``after`` never past the window's head: the outbox writes an event once its
            # subscriber's cursor reaches it (a window that was reset starts further on).
            event = PresenceEvent(kind, channel, Member(entry.user, entry.conn), min(entry.seq, head))
            self.tell(channel, event)

    def refreshed(self, existed: bool) -> bool:
        """This node's liveness key was renewed (``existed``: it was still there). When it had
        expired since an earlier refresh, other nodes may have reaped this one: every member
        of this node is queued again (a resync; joins of members still listed change nothing).
        True then."""
        first, self._alive = not self._alive, True
        if existed or first:
            return False
        self.resyncs += 1
        for channel, members in self.local.items():
            for member in members.values():
                self._queue(Write("j", channel, member.conn, member.user))
        return True

    def _queue(self, write: Write) -> None:
        before = self.writes.dropped
        self.writes.add(write)
        if self.writes.dropped != before:
            log.warning("presence: %d pending writes dropped (redis unreachable too long)", self.writes.dropped)
        self._wake.set()

    def _running(self) -> RedisStore:
        if self._store is None:
            raise Unavailable("the redis engine is not running")
        return self._store

    # -- the tasks ----------------------------------------------------------------------

    async def run(self, store: RedisStore, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write the queue and keep this node alive in Redis, until cancelled."""
        client = store.client
        self._scripts = {
            "write": client.register_script(WRITE),
            "reap": client.register_script(REAP),
            "list": client.register_script(LIST),
            "forget": client.register_script(FORGET),
        }
        self._store = store
        try:
            try:
                await self._refresh(store)  # before serving: this node's members are listed at once
            except Unavailable:
                pass
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, store)
                nursery.start_soon(self._alive_loop, store)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._store = None

    async def leave_all(self) -> None:
        """A graceful stop (the server calls it once its connections are closed, before the
        hub stops): this node's members leave now, not ``node_ttl`` later; then its liveness
        key goes, so any member a cut-short write left behind is reaped by another node at its
        next refresh. Bounded by the caller; without it (a kill) the others reap this node."""
        store = self._running()
        for channel, members in list(self.local.items()):
            for conn in list(members):
                self.leave(channel, conn, True, 0)
        try:
            while (write := self.writes.take()) is not None:
                await self._write(store, write)

            async def forget() -> Any:
                return await store.client.delete([self.node_key(self.node)])

            await store.guard(forget)
        except Unavailable:
            pass  # then its liveness key expires: the others reap it after node_ttl

    async def _write_loop(self, store: RedisStore) -> None:
        while True:
            write = self.writes.take()
            if write is None:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            backoff = self._backoff[0]
            while True:
                try:
                    await self._write(store, write)
                    break
                except Unavailable as exc:
                    log.debug("presence write: %s; retrying", exc.reason)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff[1])

    async def _write(self, store: RedisStore, write: Write) -> None:
        keys = self._channel_keys(store, write.channel) + [f"{self.node_key(self.node)}:ch"]
        args = store._ensure_args(write.channel, None) + [
            int(store.clock() * 1000),
            write.kind,
            write.conn,
            self.node,
            user_text(write.user),
            self.max_members,
            self._history_size,
            _ms(self._history_age),
            "1" if write.last else "0",
        ]

        async def run() -> Any:
            return await self._scripts["write"](keys, args)

        await store.guard(run)

    async def _alive_loop(self, store: RedisStore) -> None:
        while True:
            await trio.sleep(self.node_ttl / 3)
            try:
                await self._refresh(store)
                await self._reap(store)
            except Unavailable as exc:
                log.debug("presence liveness: %s", exc.reason)

    async def _refresh(self, store: RedisStore) -> None:
        """Renew this node's liveness key; when it had expired, write every member again."""
        client, key = store.client, self.node_key(self.node)

        async def refresh() -> Any:
            old = await client.set(key, "1", px=_ms(self.node_ttl), get=True)
            await client.sadd(f"{store.prefix}nodes", [self.node])
            return old

        if self.refreshed(existed=await store.guard(refresh) is not None):
            log.warning("presence: this node's liveness key had expired; writing its members again")

    async def _reap(self, store: RedisStore) -> None:
        """Remove the members of nodes whose liveness key expired (one node does each)."""
        client, nodes_key = store.client, f"{store.prefix}nodes"

        async def nodes() -> Any:
            return await client.smembers(nodes_key)

        for raw in await store.guard(nodes):
            node = _text(raw)
            if node == self.node:
                continue

            async def claim(node: str = node) -> Any:
                if await client.exists([self.node_key(node)]):
                    return False
                return await client.set(
                    f"{store.prefix}reap:{node}", self.node, condition=PureToken.NX, px=_ms(self.node_ttl)
                )

            if await store.guard(claim):
                await self._reap_node(store, node)

    async def _reap_node(self, store: RedisStore, node: str) -> None:
        client, channels_key = store.client, f"{self.node_key(node)}:ch"
        cursor = 0
        while True:

            async def scan(cursor: int = cursor) -> Any:
                return await client.sscan(channels_key, cursor, count=REAP_BATCH)

            cursor, names = await store.guard(scan)
            for name in names:
                channel = _text(name)
                args = store._ensure_args(channel, None) + [
                    int(store.clock() * 1000),
                    node,
                    self._history_size,
                    _ms(self._history_age),
                ]

                keys = [*self._channel_keys(store, channel), self.node_key(node)]

                async def reap(keys: list[str] = keys, args: list[Any] = args) -> Any:
                    return await self._scripts["reap"](keys, args)

                removed = int(await store.guard(reap))
                if removed < 0:
                    log.info("presence: node %s refreshed its liveness again; not reaped", node)
                    return
                self.reaped += removed
            if not cursor:
                break

        async def forget() -> Any:
            keys = [self.node_key(node), channels_key, f"{store.prefix}nodes"]
            return await self._scripts["forget"](keys, [node])

        if await store.guard(forget):
            log.info("presence: node %s stopped refreshing its liveness; its members left", node)
