"""A node's fan-in reader: one blocking XREAD over every channel stream its subscribers need.

A node does not read Redis once per subscriber. It keeps one set of watched channels (a
channel is watched while the node has a local broadcast for it) and one task that loops on

    XREAD COUNT <count> BLOCK <block ms> STREAMS <every watched stream> <epochs> <wake> ...

handing what arrives to its sink (the hub, which appends it to the channel's local
broadcast, so a message is decoded once per node and written once per subscriber per burst).

Changing the set: ``watch``/``unwatch`` are synchronous. A new channel (or a new position
for one) must reach the blocked XREAD, so the reader adds an entry to its node's own *wake*
stream (``<prefix>wake:<node>``, one entry, expiring after a minute), which is part of every
XREAD: the read returns at once and is issued again with the new set. No connection is
dropped and no timer is waited out.

Cross-node delay: an XREAD returns as soon as any watched stream gets an entry, so a message
published on node A reaches node B's broadcast after one Redis round trip plus B's handling of
the batch it arrived in (at most ``count`` entries per stream). ``block`` only bounds how
long a read waits when nothing happens; it does not delay messages.

Epochs: the reader also watches the ``<prefix>epochs`` stream. An announcement for a watched
channel, or an entry of another epoch than the one the reader holds, makes it ask Redis for the
channel's current epoch; when it changed, the sink hears ``reset(channel, epoch)`` and the
reader reads the new stream from its start.

Presence entries (``<seq>-<n>`` in a channel's stream, see ``redis_presence``) are read with
the messages, in order, and handed to ``presence_entries`` after the batch's messages; the
reader keeps the whole last id per channel, so it never reads an event twice. The reader also
watches ``<prefix>ctl``, the cluster's control stream (disconnects): each entry goes to
``control``, and when it carries a reply stream the node's count is added there.

Redis unreachable: the read raises, the reader logs it once, waits (``backoff_min`` doubling
to ``backoff_max``) and tries again from the last seq it delivered per channel. After an
outage it first checks every watched channel's epoch, passing its own position as the floor,
so a Redis that came back without its data (or from an older snapshot) shows up as a new
epoch, never as silent loss.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

import attrs
import coredis.exceptions
import trio
from coredis.tokens import PureToken

from . import logs
from .protocol import Position
from .redis_store import Entry, PresenceEntry, RedisStore, Unavailable, _text, parse

log = logs.get("redis")

WAKE_TTL_MS = 60_000
REPLY_TTL_MS = 60_000


class FanInSink(Protocol):
    """What the reader feeds: the hub's local broadcasts."""

    def entries(self, channel: str, entries: list[Entry]) -> None:
        """New entries of a watched channel, in order, all in the epoch the reader holds."""

    def reset(self, channel: str, epoch: str) -> None:
        """The channel's stream has a new epoch; its entries follow from the oldest held."""

    def presence_entries(self, channel: str, entries: list[PresenceEntry]) -> None:
        """Joins and leaves of a watched channel, in order, each after the entries handed before."""

    def control(self, fields: dict[bytes, bytes]) -> int | None:
        """An entry of the cluster's control stream (``<prefix>ctl``: disconnects): what it
        did here (a count), or None (this node's own request, or one it does not know)."""


@attrs.define
class _Watch:
    epoch: str
    after: int  # the last seq handed to the sink
    sub: int = 0  # and the n of the last presence entry <after>-<n> read after it


class FanIn:
    def __init__(
        self,
        store: RedisStore,
        sink: FanInSink,
        *,
        block: float = 5.0,
        count: int = 256,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        node: str | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.block = block
        self.count = count
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.node = node or secrets.token_hex(6)
        self.wake_key = f"{store.prefix}wake:{self.node}"
        self.reads = 0  # XREAD calls issued (tests check the reader is not per subscriber)
        self.available = True
        self._watched: dict[str, _Watch] = {}
        self._by_key: dict[bytes, str] = {}
        self._generation = 0  # bumped when the watched set or a position changes
        self._reading: int | None = None  # the generation of the XREAD in flight
        self._wake = trio.Event()
        self._events_last: str | None = None
        self._control_last: str | None = None

    # -- the watched set (synchronous) ---------------------------------------------------

    def watch(self, channel: str, epoch: str, after: int, sub: int = 0) -> None:
        """Read ``channel`` from after the entry ``<after>-<sub>`` of ``epoch`` (replacing any position)."""
        self._watched[channel] = _Watch(epoch, after, sub)
        self._by_key[self.store.stream_key(channel).encode()] = channel
        self._changed()

    def unwatch(self, channel: str) -> None:
        if self._watched.pop(channel, None) is not None:
            del self._by_key[self.store.stream_key(channel).encode()]

    def watching(self, channel: str) -> Position | None:
        watch = self._watched.get(channel)
        return None if watch is None else Position(watch.epoch, watch.after)

    def last_id(self, channel: str) -> tuple[str, int, int] | None:
        """The epoch and the id ``<seq>-<n>`` of the last entry handed over for ``channel``."""
        watch = self._watched.get(channel)
        return None if watch is None else (watch.epoch, watch.after, watch.sub)

    def advance(self, channel: str, seq: int, sub: int) -> None:
        """Someone else handed the entries up to ``<seq>-<sub>`` over (the hub's catch-up):
        go on after them (an XREAD in flight returns them again; they are skipped)."""
        watch = self._watched.get(channel)
        if watch is not None and (seq, sub) > (watch.after, watch.sub):
            watch.after, watch.sub = seq, sub

    def _changed(self) -> None:
        self._generation += 1
        if self._reading is not None:
            self._wake.set()

    # -- the reader ----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._waker)
            task_status.started()
            await self._read_loop()

    async def _read_loop(self) -> None:
        backoff = self.backoff_min
        recheck = False
        while True:
            try:
                if self._events_last is None:
                    self._events_last = await self._last_event_id(self.store.epochs_key)
                if self._control_last is None:
                    self._control_last = await self._last_event_id(self.store.control_key)
                if recheck:
                    await self._check_all()
                    recheck = False
                    self._up()
                await self._read_once()
            except Unavailable as exc:
                if self.available:
                    log.warning("redis reader: %s; retrying with backoff", exc.reason)
                    self.available = False
                else:
                    log.debug("redis reader: still %s", exc.reason)
                recheck = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            self._up()
            backoff = self.backoff_min

    def _up(self) -> None:
        if not self.available:
            log.info("redis reader: redis answers again; reading on from the last seqs")
            self.available = True

    async def _read_once(self) -> None:
        streams: dict[str | bytes, str] = {
            key: f"{self._watched[channel].after}-{self._watched[channel].sub}" for key, channel in self._by_key.items()
        }
        streams[self.store.epochs_key] = self._events_last or "0-0"
        streams[self.store.control_key] = self._control_last or "0-0"
        streams[self.wake_key] = "$"
        generation = self._generation
        block_ms = max(1, int(self.block * 1000))

        async def read() -> Any:
            self._reading = generation
            try:
                return await self.store.client.xread(streams, count=self.count, block=block_ms)
            finally:
                self._reading = None

        self.reads += 1
        # The read may take ``block`` when nothing happens; longer is a hung Redis.
        reply = await self.store.guard(read, self.block + self.store.timeout)
        if reply:
            await self._handle(reply)

    async def _handle(self, reply: dict[Any, Any]) -> None:
        suspects: set[str] = set()
        events = reply.get(self.store.epochs_key.encode(), ())
        for entry in events:
            self._events_last = _text(entry.identifier)
            channel = _text(entry.field_values[b"c"])
            watch = self._watched.get(channel)
            if watch is not None and watch.epoch != _text(entry.field_values[b"e"]):
                suspects.add(channel)
        for entry in reply.get(self.store.control_key.encode(), ()):
            self._control_last = _text(entry.identifier)
            fields = dict(entry.field_values)
            count = self.sink.control(fields)
            if count is not None and b"r" in fields:
                await self._answer(fields[b"r"], count)
        for key, raw in reply.items():
            name = self._by_key.get(key)
            if name is None or name in suspects:
                continue
            channel, watch = name, self._watched[name]
            batch: list[Entry] = []
            joins: list[PresenceEntry] = []
            for item in raw:
                entry = parse(item.identifier, item.field_values)
                if entry.epoch != watch.epoch:
                    suspects.add(channel)
                    break
                if isinstance(entry, Entry):
                    if entry.seq > watch.after:
                        batch.append(entry)
                        watch.after, watch.sub = entry.seq, 0
                elif (entry.seq, entry.sub) > (watch.after, watch.sub):
                    joins.append(entry)
                    watch.after, watch.sub = entry.seq, entry.sub
            # Messages first, then the events: each event goes after the message it names
            # (``PresenceEvent.after``), so handing them in two lists keeps the channel's order.
            if batch:
                self.sink.entries(channel, batch)
            if joins:
                self.sink.presence_entries(channel, joins)
        for channel in suspects:
            await self._check(channel)

    async def _check(self, channel: str) -> None:
        """Ask Redis for the channel's epoch (our position as the floor); reset when it moved."""
        watch = self._watched.get(channel)
        if watch is None:
            return
        snapshot = await self.store.snapshot(channel, 0, floor=Position(watch.epoch, watch.after))
        current = self._watched.get(channel)
        if current is watch and snapshot.epoch != watch.epoch:
            log.warning(
                "channel %s: redis holds a new epoch %s (was %s at seq %d); reading it from the start",
                channel,
                snapshot.epoch,
                watch.epoch,
                watch.after,
            )
            watch.epoch, watch.after, watch.sub = snapshot.epoch, 0, 0
            self.sink.reset(channel, snapshot.epoch)

    async def _check_all(self) -> None:
        for channel in list(self._watched):
            await self._check(channel)

    async def _answer(self, key: bytes, count: int) -> None:
        """Tell the node that asked (on its reply stream) what this node did."""

        async def add() -> Any:
            await self.store.client.xadd(key, {"n": self.node, "c": str(count)})
            await self.store.client.pexpire(key, REPLY_TTL_MS)

        await self.store.guard(add)

    async def _last_event_id(self, key: str) -> str:
        async def last() -> Any:
            return await self.store.client.xrevrange(key, count=1)

        found = await self.store.guard(last)
        return _text(found[0].identifier) if found else "0-0"

    async def _waker(self) -> None:
        """Make a blocked XREAD return when the watched set changed under it."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._reading is None or self._reading == self._generation:
                continue

            async def poke() -> Any:
                client = self.store.client
                await client.xadd(self.wake_key, {"w": "1"}, trim_strategy=PureToken.MAXLEN, threshold=1)
                await client.pexpire(self.wake_key, WAKE_TTL_MS)

            try:
                await self.store.guard(poke)
            except (Unavailable, coredis.exceptions.RedisError):
                pass  # the reader is failing too and re-reads the set when it retries
