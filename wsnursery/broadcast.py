"""A broadcast channel: one sender, one receive cursor per subscriber, bounded in messages and bytes.

This is the memory channel that carries a pub/sub channel's messages to its subscribers.
It is not a queue per subscriber: the messages sit once in a ring, and each receiver is a
cursor into it (the seq of the last message it took), so a send costs the same for one
subscriber or ten thousand, and nothing is copied per subscriber. The ring doubles as the
channel's history: a subscriber that resumes (``since``) starts its cursor in the past.

Sans-I/O except for ``wait_room``: a sender under policy ``WAIT`` sleeps on a Trio event
until a receiver moves; everything else is plain, synchronous bookkeeping, which is what the
hot path needs (a writer reads ``after(cursor)`` for every subscriber on every burst).

Bounds, and what happens at each:
- ``capacity`` messages, ``max_bytes`` bytes (sizes as given by the sender; the hub passes
  the length of the payload the publisher sent, a stated estimate rather than a deep walk of
  the decoded value), ``max_age`` seconds: the oldest messages are dropped. A resume from
  before the oldest held message gets ``recovered: false``; a receiver whose next message
  was dropped has lost data, and its owner closes it (4008, see ``slow_consumer``). The
  newest message is always kept, even when it alone is over ``max_bytes``.
- each receiver's lag (its ``full`` property, set by its owner against its own limit), with
  one of two policies at the bound: ``Policy.CLOSE`` (the receiver's owner closes the
  lagging receiver; the sender never waits) or ``Policy.WAIT`` (``wait_room`` makes the
  sender wait until every receiver is under its limit; receivers call ``progressed`` when
  they move). The wait is bounded too: after ``timeout`` seconds every receiver still full
  is dropped from the broadcast and told it ``stalled`` (its owner closes it with 4008),
  so one stuck subscriber cannot hold a channel's publishers, and its other subscribers,
  forever.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Protocol

import trio

from .protocol import Position


class Policy(enum.Enum):
    """What happens when a receiver lags by its limit."""

    CLOSE = "close"  # the lagging receiver is closed (by its owner); senders never wait
    WAIT = "wait"  # senders wait until every receiver is back under its limit


class StoredMessage:
    """One published message: data only (the delivery side encodes and caches its frames).

    ``born`` (monotonic seconds) dates it for ``max_age``; ``size`` is its byte estimate for
    ``max_bytes``.
    """

    __slots__ = ("born", "channel", "data", "epoch", "seq", "size", "ts")

    def __init__(
        self, channel: str, epoch: str, seq: int, data: Any, ts: int, born: float = 0.0, size: int = 0
    ) -> None:
        self.channel = channel
        self.epoch = epoch
        self.seq = seq
        self.data = data
        self.ts = ts  # wall clock, milliseconds (the ``ts`` field of the message frame)
        self.born = born
        self.size = size

    def __repr__(self) -> str:
        return f"StoredMessage({self.channel!r}, {self.epoch!r}, {self.seq})"


class Receiver(Protocol):
    """A receive side, as the broadcast sees it (``Cursor`` is one)."""

    def notify(self) -> None:
        """A message was sent (called without blocking, inside ``send``)."""

    @property
    def full(self) -> bool:
        """This receiver lags by its limit or more (``Policy.WAIT`` makes senders wait)."""

    def stalled(self) -> None:
        """It stayed full past a sender's wait bound and was dropped from the broadcast."""


class Broadcast:
    """One channel's messages in this process: epoch, head seq, a bounded ring, receivers.

    Seqs start at 1 and grow by one per ``send``; ``head`` is the newest, ``oldest`` the
    oldest still held (``head + 1`` when none is).
    """

    def __init__(
        self,
        name: str,
        epoch: str,
        *,
        capacity: int,
        max_bytes: int,
        max_age: float,
        policy: Policy = Policy.CLOSE,
    ) -> None:
        if capacity < 1 or max_bytes < 1 or max_age <= 0:
            raise ValueError("a broadcast needs a capacity, a byte bound and an age above 0")
        self.name = name
        self.epoch = epoch
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.policy = policy
        self.head = 0
        self.oldest = 1
        self.bytes = 0  # the sizes of the messages held
        self.receivers: set[Receiver] = set()
        self._ring: list[StoredMessage | None] = [None] * capacity
        self._progress: trio.Event | None = None

    def __len__(self) -> int:
        """How many messages are held."""
        return self.head - self.oldest + 1

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.head)

    # -- send side --------------------------------------------------------------------

    def send(self, message: StoredMessage) -> None:
        """Append ``message`` (its seq must be ``head + 1``), drop what the bounds no longer
        hold, and notify every receiver. Never blocks: ``wait_room`` first under ``WAIT``."""
        seq = message.seq
        if seq != self.head + 1:
            raise ValueError(f"seq {seq} does not follow the head {self.head}")
        if seq - self.oldest >= self.capacity:
            self._drop_oldest()
        self._ring[seq % self.capacity] = message
        self.head = seq
        self.bytes += message.size
        while self.bytes > self.max_bytes and self.oldest < self.head:
            self._drop_oldest()
        for receiver in tuple(self.receivers):
            receiver.notify()

    def backfill(self, messages: list[StoredMessage]) -> int:
        """Put older messages back in front of the oldest held one (a hub that reads its store
        for a resume from before the window). ``messages`` must end at seq ``oldest - 1``,
        contiguous, oldest first; the newest of them go in first, as many as the bounds
        allow (what does not fit stays out, as if dropped). Returns how many went in.
        Receivers are not notified: nothing after their cursors changed."""
        if messages and messages[-1].seq != self.oldest - 1:
            raise ValueError(f"backfill must end at seq {self.oldest - 1}, not {messages[-1].seq}")
        first = self.oldest - len(messages)
        if first < 1 or any(message.seq != first + i for i, message in enumerate(messages)):
            raise ValueError("backfilled seqs must be contiguous, oldest first, and at least 1")
        taken = 0
        for message in reversed(messages):
            if len(self) >= self.capacity or self.bytes + message.size > self.max_bytes:
                break
            self._ring[message.seq % self.capacity] = message
            self.oldest = message.seq
            self.bytes += message.size
            taken += 1
        return taken

    def expire(self, now: float) -> None:
        """Drop messages older than ``max_age`` (by ``born``) from the front."""
        deadline = now - self.max_age
        ring, capacity = self._ring, self.capacity
        while self.oldest <= self.head:
            message = ring[self.oldest % capacity]
            if message is not None and message.born >= deadline:
                break
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        slot = self.oldest % self.capacity
        message = self._ring[slot]
        if message is not None:
            self.bytes -= message.size
            self._ring[slot] = None
        self.oldest += 1

    def any_full(self) -> bool:
        return any(receiver.full for receiver in self.receivers)

    async def wait_room(self, timeout: float = math.inf) -> None:
        """Wait until no receiver is full (``Policy.WAIT``; returns at once when none is).

        After ``timeout`` seconds, the receivers still full are dropped and told ``stalled``,
        and the sender goes on."""
        with trio.move_on_after(timeout):
            while self.any_full():
                if self._progress is None:
                    self._progress = trio.Event()
                await self._progress.wait()
            return
        for receiver in [receiver for receiver in self.receivers if receiver.full]:
            self.receivers.discard(receiver)
            receiver.stalled()
        self.progressed()  # other senders waiting on the same receivers go on too

    # -- receive side -----------------------------------------------------------------

    def holds_after(self, seq: int) -> bool:
        """True when every message after ``seq`` up to the head is still held."""
        return self.oldest - 1 <= seq <= self.head

    def after(self, seq: int, limit: int) -> list[StoredMessage] | None:
        """Up to ``limit`` messages after ``seq``, or None when some were already dropped."""
        if seq < self.oldest - 1:
            return None
        last = min(self.head, seq + limit)
        ring, capacity = self._ring, self.capacity
        return [ring[s % capacity] for s in range(seq + 1, last + 1)]  # type: ignore[misc]

    def progressed(self) -> None:
        """A receiver moved (its cursor, or its acks): wake senders waiting in ``wait_room``."""
        if self._progress is not None:
            self._progress.set()
            self._progress = None


class Cursor:
    """One receiver's place in a broadcast: ``cursor`` is the seq of the last message it took.

    The receive side of the channel, one per subscriber. ``take`` reads what comes next
    without moving; the owner moves ``cursor`` past what it actually handed on (and may move
    it back, to send again what was not acknowledged), then calls ``progressed`` on the
    broadcast so that waiting senders look again. ``lag`` counts the messages still to take;
    at ``limit`` the receiver is ``full``. ``notify`` does nothing here: a subclass wakes its
    writer, or closes itself when it lags too far (``Policy.CLOSE``).
    """

    __slots__ = ("broadcast", "cursor", "limit")

    def __init__(self, broadcast: Broadcast | None = None, *, limit: int = 1) -> None:
        self.broadcast = broadcast  # set when the receiver is attached
        self.cursor = 0 if broadcast is None else broadcast.head
        self.limit = limit

    @property
    def lag(self) -> int:
        assert self.broadcast is not None
        return self.broadcast.head - self.cursor

    @property
    def full(self) -> bool:
        return self.lag >= self.limit

    @property
    def lost(self) -> bool:
        """Some message after the cursor was dropped at a bound before it was taken."""
        assert self.broadcast is not None
        return self.cursor < self.broadcast.oldest - 1

    def take(self, limit: int) -> list[StoredMessage] | None:
        """Up to ``limit`` messages after the cursor (None when ``lost``); the cursor stays."""
        assert self.broadcast is not None
        return self.broadcast.after(self.cursor, limit)

    def notify(self) -> None:
        """A message was sent (the broadcast calls this without blocking)."""

    def stalled(self) -> None:
        """Dropped from the broadcast: it stayed full past a sender's wait bound."""
