"""The Redis side of the Redis engine: channel streams, seqs, epochs and idempotency keys.

Every process that names the same Redis shares one stream per channel. Per channel (the
``{channel}`` hash tag keeps a channel's keys together):

- ``<prefix>{<channel>}:m``: a hash holding the channel's ``epoch`` and its ``seq`` counter
  (expires after ``meta_ttl`` seconds without a publish);
- ``<prefix>{<channel>}:s``: the stream, one entry per message with the explicit id
  ``<seq>-0`` and the fields ``e`` (epoch), ``t`` (wall clock, ms) and ``d`` (the data as
  CBOR). It also holds the channel's presence events (``redis_presence``): entries with the
  id ``<head seq>-<n>`` (n >= 1) and a field ``k`` instead of ``d``; they take no seq, and
  every reader here skips them (``parse`` tells the two apart). Trimmed on every publish to
  the last ``history_size`` *messages* (``XTRIM MINID <seq - history_size + 1>-0``, so the
  presence entries between them do not count), and never past ``history_size +
  PRESENCE_ENTRIES`` entries in all (only a storm of more than ``PRESENCE_ENTRIES`` joins and
  leaves within the window trims the oldest messages early: a resume from before them gets
  ``recovered: false``); the entries older than ``history_age`` are trimmed from the front;
  the key expires ``history_age`` after the last publish, since every entry it holds is older
  by then. Bytes: each message entry is at most the server's ``max_message_size`` plus a few
  bytes, so a stream holds at most ``history_size`` times that, plus ``PRESENCE_ENTRIES``
  presence entries of about 100 bytes;
- ``<prefix>{<channel>}:dz`` / ``:dh``: the idempotency keys seen within ``dedup_age``
  (a sorted set by expiry time, and a hash of key -> seq), at most ``dedup_size`` of them
  (the oldest go first), both expiring ``dedup_age`` after the last keyed publish.

One Lua script (``PUBLISH``) does a publish atomically: it looks up the key, increments the
counter, adds the entry and trims, and returns ``(epoch, seq, duplicate)``. So ``seq`` stays
contiguous per channel whichever node publishes, and a repeated key gets the first position
on every node.

Epochs. A channel's epoch is made (a random token) when its hash is missing: the first
publish or subscribe, or after Redis lost the hash (a flush, a restart without its data, an
expiry). A caller that holds a position passes it as a *floor*: when Redis has the same
epoch but a smaller seq (it came back from an older snapshot), a new epoch is made too.
Either way the old positions can never be mistaken for the new stream's, so a resume gets
``recovered: false``: loss is reported, never silent. Every new epoch is announced on the
``<prefix>epochs`` stream (auto ids, so its ids keep growing even across a flush), which every
node's reader watches (see ``redis_fanin``).

Redis unreachable or too slow (``timeout``): calls raise ``Unavailable`` (error code
``unavailable``); nothing is confirmed that Redis did not store. A publish that raised may
still have been stored (the reply was lost): a client retries it with the same key.

This module does not support Redis Cluster: a publish touches the channel's keys and the
shared epochs stream, which live in different slots.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import cbor2
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from .protocol import Position, ProtocolError

DEFAULT_PREFIX = "wsn:"
PRESENCE_ENTRIES = 10_000  # presence entries a stream may hold besides its history_size messages


class Unavailable(ProtocolError):
    """Redis did not answer (down, unreachable, too slow): nothing was confirmed."""

    def __init__(self, reason: str) -> None:
        super().__init__("unavailable", reason)


@attrs.frozen
class Entry:
    """One message as Redis holds it."""

    seq: int
    epoch: str
    ts: int  # wall clock, milliseconds
    data: Any
    size: int = 0  # bytes of the stored data (the history_bytes estimate)


@attrs.frozen
class PresenceEntry:
    """A ``join`` (``kind`` "j") or ``leave`` ("l") as the channel's stream holds it, after message ``seq``."""

    seq: int
    sub: int  # the n of the entry id <seq>-<n>
    epoch: str
    kind: str
    conn: str
    user: str | None


@attrs.frozen
class Stored:
    """What a publish did: the message's position, and whether its key was a repeat."""

    epoch: str
    seq: int
    duplicate: bool
    ts: int


@attrs.frozen
class Snapshot:
    """A channel's state in Redis: its epoch, its head seq, and its newest entries (oldest first)."""

    epoch: str
    head: int
    entries: tuple[Entry, ...]
    new_epoch: bool  # this call made the epoch (nothing held before, or Redis lost it)
    last: tuple[int, int] = (0, 0)  # the stream's newest entry id (a presence entry's too)


# Shared by both scripts: make sure the channel has an epoch, a new one when the hash is
# missing or behind the caller's floor (same epoch, smaller seq). Returns epoch, seq, made.
_ENSURE = """
local meta, stream, dz, dh, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, candidate, floor_epoch = ARGV[1], ARGV[2], ARGV[3]
local floor_seq, meta_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local function ensure()
  local state = redis.call('HMGET', meta, 'epoch', 'seq')
  local epoch, seq = state[1], tonumber(state[2] or '0')
  if epoch and not (epoch == floor_epoch and seq < floor_seq) then
    return epoch, seq, 0
  end
  redis.call('DEL', stream, dz, dh)
  redis.call('HSET', meta, 'epoch', candidate, 'seq', 0)
  redis.call('PEXPIRE', meta, meta_ttl)
  redis.call('XADD', events, 'MAXLEN', '~', 10000, '*', 'c', channel, 'e', candidate)
  redis.call('PEXPIRE', events, meta_ttl)
  return candidate, 0, 1
end
"""

PUBLISH = (
    _ENSURE
    + f"local PRESENCE_ENTRIES = {PRESENCE_ENTRIES}\n"
    + """
local now, data, has_key, key = tonumber(ARGV[6]), ARGV[7], ARGV[8] == '1', ARGV[9]
local size, age = tonumber(ARGV[10]), tonumber(ARGV[11])
local dedup_size, dedup_age = tonumber(ARGV[12]), tonumber(ARGV[13])
local epoch, seq, made = ensure()
if has_key then
  local seen = redis.call('HGET', dh, key)
  local expiry = redis.call('ZSCORE', dz, key)
  if seen and expiry and tonumber(expiry) > now then
    return {epoch, tonumber(seen), 1, made}
  end
  local old = redis.call('ZRANGEBYSCORE', dz, '-inf', now, 'LIMIT', 0, 16)
  if #old > 0 then
    redis.call('ZREM', dz, unpack(old))
    redis.call('HDEL', dh, unpack(old))
  end
end
seq = redis.call('HINCRBY', meta, 'seq', 1)
local id = string.format('%d-0', seq)
redis.call('XADD', stream, 'MAXLEN', size + PRESENCE_ENTRIES, id, 'e', epoch, 't', string.format('%d', now), 'd', data)
if seq > size then redis.call('XTRIM', stream, 'MINID', string.format('%d-0', seq - size + 1)) end
local front = redis.call('XRANGE', stream, '-', '+', 'COUNT', 8)
local cut = nil
for _, entry in ipairs(front) do
  if tonumber(entry[2][4]) >= now - age then break end
  cut = tonumber(string.match(entry[1], '^(%d+)'))
end
if cut then redis.call('XTRIM', stream, 'MINID', string.format('%d-0', cut + 1)) end
redis.call('PEXPIRE', stream, age)
redis.call('PEXPIRE', meta, meta_ttl)
if has_key then
  redis.call('ZADD', dz, string.format('%d', now + dedup_age), key)
  redis.call('HSET', dh, key, seq)
  local over = redis.call('ZCARD', dz) - dedup_size
  if over > 0 then
    local popped = redis.call('ZPOPMIN', dz, over)
    for i = 1, #popped, 2 do redis.call('HDEL', dh, popped[i]) end
  end
  redis.call('PEXPIRE', dz, dedup_age)
  redis.call('PEXPIRE', dh, dedup_age)
end
return {epoch, seq, 0, made}
"""
)

SNAPSHOT = (
    _ENSURE
    + """
local limit = tonumber(ARGV[6])
local epoch, seq, made = ensure()
local entries = {}
if limit > 0 then
  entries = redis.call('XREVRANGE', stream, '+', string.format('%d-0', math.max(seq - limit + 1, 0)))
end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
return {epoch, seq, made, entries, last[1] and last[1][1] or '0-0'}
"""
)


class RedisStore:
    """Channel streams in one Redis (sans connection management: give it a coredis client).

    Every call is bounded by ``timeout`` seconds and raises ``Unavailable`` when Redis does
    not answer in time or cannot be reached.
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = 4096,
        history_age: float = 300.0,
        dedup_size: int = 10_000,
        dedup_age: float = 300.0,
        meta_ttl: float = 86_400.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.clock = clock  # wall clock, seconds: the messages' ts, and their age in Redis
        self.prefix = prefix
        self.history_size = history_size
        self.history_age = history_age
        self.dedup_size = dedup_size
        self.dedup_age = dedup_age
        self.meta_ttl = max(meta_ttl, history_age, dedup_age)
        self.timeout = timeout
        self.epochs_key = f"{prefix}epochs"
        self.control_key = f"{prefix}ctl"  # cluster-wide requests (``redis_presence``: disconnect)
        self._publish = client.register_script(PUBLISH)
        self._snapshot = client.register_script(SNAPSHOT)

    # -- keys ---------------------------------------------------------------------------

    def stream_key(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:s"

    def _keys(self, channel: str) -> list[str]:
        base = f"{self.prefix}{{{channel}}}"
        return [f"{base}:m", f"{base}:s", f"{base}:dz", f"{base}:dh", self.epochs_key]

    def keys_of(self, channel: str) -> list[str]:
        """Every key a channel uses (for tests and cleanup; not the shared epochs stream)."""
        return self._keys(channel)[:4]

    def _ensure_args(self, channel: str, floor: Position | None) -> list[str | int]:
        return [
            channel,
            secrets.token_hex(4),
            floor.epoch if floor is not None else "",
            floor.seq if floor is not None else 0,
            _ms(self.meta_ttl),
        ]

    # -- calls --------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: Any, key: str | None = None, *, floor: Position | None = None
    ) -> Stored:
        """Store ``data`` as the channel's next message (or find ``key``'s first position)."""
        now = int(self.clock() * 1000)
        reply = await self._call(self._publish, self._keys(channel), self._publish_args(channel, data, key, floor, now))
        return _stored(reply, now)

    async def publish_many(
        self, publishes: Sequence[tuple[str, Any, str | None, Position | None]]
    ) -> list[Stored | Unavailable]:
        """Several publishes (``(channel, data, key, floor)``) in one round trip, stored in
        that order (a pipeline: Redis runs the scripts one after another). Each gets where it
        was stored, or ``Unavailable`` with the reason; raises ``Unavailable`` when Redis
        does not answer (then none is confirmed)."""
        now = int(self.clock() * 1000)
        calls = [(self._keys(c), self._publish_args(c, data, key, floor, now)) for c, data, key, floor in publishes]
        sha = self._publish.sha

        async def run() -> list[Stored | Unavailable]:
            async with self.client.pipeline(transaction=False, raise_on_error=False) as pipe:
                # The script first, in the same round trip: a Redis that restarted or flushed
                # its scripts still runs every publish (loading a loaded script is a no-op).
                pipe.script_load(PUBLISH)
                replies = [pipe.evalsha(sha, keys, args) for keys, args in calls]
            return [await _outcome(reply, now) for reply in replies]

        outcomes: list[Stored | Unavailable] = await self.guard(run)
        return outcomes

    def _publish_args(self, channel: str, data: Any, key: str | None, floor: Position | None, now: int) -> list[Any]:
        return self._ensure_args(channel, floor) + [
            now,
            cbor2.dumps(data),
            "1" if key is not None else "0",
            key or "",
            self.history_size,
            _ms(self.history_age),
            self.dedup_size,
            _ms(self.dedup_age),
        ]

    async def snapshot(self, channel: str, limit: int, *, floor: Position | None = None) -> Snapshot:
        """The channel's epoch and head (made when missing) and its newest ``limit`` entries."""
        args = self._ensure_args(channel, floor) + [limit]
        epoch, head, made, raw, last = await self._call(self._snapshot, self._keys(channel), args)
        parsed = (parse(identifier, fields) for identifier, fields in reversed(raw))
        entries = tuple(entry for entry in parsed if isinstance(entry, Entry))[-limit:] if limit else ()
        return Snapshot(_text(epoch), int(head), entries, bool(made), entry_id(last))

    async def position(self, channel: str) -> Position | None:
        """The channel's epoch and head seq, or None when Redis holds no such channel."""

        async def read() -> Any:
            return await self.client.hmget(self._keys(channel)[0], ["epoch", "seq"])

        epoch, seq = await self.guard(read)
        return None if epoch is None else Position(_text(epoch), int(seq or 0))

    async def read_after(self, channel: str, seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` messages after ``seq`` (any epoch: check ``Entry.epoch``); fewer
        when presence entries are among the next ``limit`` entries of the stream."""

        async def read() -> Any:
            return await self.client.xrange(self.stream_key(channel), f"{seq + 1}-0", "+", count=limit)

        parsed = (parse(e.identifier, e.field_values) for e in await self.guard(read))
        return [entry for entry in parsed if isinstance(entry, Entry)]

    async def read_from(self, channel: str, after: tuple[int, int], limit: int) -> list[Entry | PresenceEntry]:
        """Up to ``limit`` entries, messages and presence events, after the entry id ``after``."""

        async def read() -> Any:
            return await self.client.xrange(self.stream_key(channel), f"({after[0]}-{after[1]}", "+", count=limit)

        return [parse(e.identifier, e.field_values) for e in await self.guard(read)]

    async def _call(self, script: Any, keys: list[str], args: Sequence[Any]) -> Any:
        async def run() -> Any:
            return await script(keys, args)

        return await self.guard(run)

    async def guard(self, call: Any, timeout: float | None = None) -> Any:
        """Await ``call()`` within ``timeout`` (default: the store's); Redis errors become ``Unavailable``."""
        limit = self.timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                return await call()
        except trio.TooSlowError:
            raise Unavailable(f"redis did not answer within {limit}s") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise Unavailable(f"redis unavailable: {_one_line(exc)}") from None


@asynccontextmanager
async def connect(url: str, **settings: Any) -> AsyncIterator[RedisStore]:
    """A ``RedisStore`` on a coredis client for ``url``, for the lifetime of the block.

    Connecting is lazy: Redis may be down when this starts (calls raise ``Unavailable``
    until it is back). The client does not retry on its own: callers decide.
    """
    timeout = settings.get("timeout", 5.0)
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url, connect_timeout=timeout, retry_policy=NoRetryPolicy())
    async with client:
        yield RedisStore(client, **settings)


def parse(identifier: Any, fields: Any) -> Entry | PresenceEntry:
    """A stream entry: a message, or a presence event (it has ``k`` where a message has ``d``)."""
    if isinstance(fields, (list, tuple)):  # from a script: a flat field/value list
        fields = dict(zip(fields[::2], fields[1::2]))
    seq, sub = entry_id(identifier)
    kind = fields.get(b"k")
    if kind is not None:
        return PresenceEntry(seq, sub, _text(fields[b"e"]), _text(kind), _text(fields[b"c"]), user_of(fields[b"u"]))
    raw = fields[b"d"]
    return Entry(seq, _text(fields[b"e"]), int(fields[b"t"]), cbor2.loads(raw), len(raw))


async def _outcome(reply: Any, now: int) -> Stored | Unavailable:
    """One publish of a pipeline: where it was stored, or why not (Redis refused that one)."""
    try:
        value = await reply
    except coredis.exceptions.RedisError as exc:
        value = exc
    if isinstance(value, BaseException):  # raise_on_error=False may hand the error back
        return Unavailable(f"redis refused the publish: {_one_line(value)}")
    return _stored(value, now)


def _stored(reply: Any, now: int) -> Stored:
    epoch, seq, duplicate, _made = reply
    return Stored(_text(epoch), int(seq), bool(duplicate), now)


def entry_id(identifier: Any) -> tuple[int, int]:
    seq, _, sub = _text(identifier).partition("-")
    return int(seq), int(sub or 0)


def user_text(user: str | None) -> str:
    """A member's user as Redis holds it: ``""`` for none, ``"=" + user`` for one."""
    return "" if user is None else "=" + user


def user_of(raw: Any) -> str | None:
    text = _text(raw)
    return text[1:] if text.startswith("=") else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
