"""Group commit for the Redis engine: the publishes that arrive while one round trip is under
way go to Redis together, in the next one.

A command costs the Redis client a few hundred microseconds of CPU under Trio whatever it
carries (measured in-process with coredis 6.9: ~300 µs per ``PING``, ~350 µs per script
call one at a time, ~50 µs per script call in pipelines of 32). A node that sent every
publish on its own would spend most of a core on that. So publishes are queued, and one task
(``run``, in the hub's nursery) sends everything queued as one pipeline, then the next batch.
Nothing waits on a timer: a lone publish goes at once, and a batch forms only from what
arrived during the previous round trip.

Order: ``submit`` queues synchronously, and a pipeline runs its scripts one after another in
Redis, so publishes are stored in the order they were submitted: a connection's publishes
keep their order on a channel even when it has several in flight.

Bounds: at most ``max_batch`` publishes per pipeline; every round trip is bounded by the
store's timeout, after which the whole batch fails with ``unavailable`` (nothing confirmed
that Redis did not answer for). The queue holds what publishers are waiting on: each
connection bounds its publishes in flight, and the server its connections.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import trio

from . import logs
from .hub import PublishResult
from .protocol import Position
from .redis_store import RedisStore, Stored, Unavailable

MAX_BATCH = 256

log = logs.get("redis")


@attrs.define(eq=False)
class PendingPublish:
    """One queued publish (a ``hub.PublishTicket``): ``await wait()`` for where Redis stored it."""

    channel: str
    data: Any
    key: str | None
    floor: Position | None
    done: trio.Event = attrs.field(factory=trio.Event)
    result: PublishResult | None = None
    error: Unavailable | None = None

    async def wait(self) -> PublishResult:
        await self.done.wait()
        if self.error is not None:
            raise Unavailable(self.error.reason)  # a fresh one: every waiter gets its own traceback
        assert self.result is not None
        return self.result

    def resolve(self, outcome: Stored | Unavailable) -> None:
        if isinstance(outcome, Unavailable):
            self.error = outcome
        else:
            self.result = PublishResult(Position(outcome.epoch, outcome.seq), outcome.duplicate)
        self.done.set()


class PublishBatcher:
    def __init__(self, store: RedisStore, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: deque[PendingPublish] = deque()
        self._wake = trio.Event()
        self.batches = 0  # round trips made (for tests and benches)

    def submit(self, channel: str, data: Any, key: str | None, floor: Position | None) -> PendingPublish:
        """Queue a publish (in call order); it goes in the next round trip."""
        pending = PendingPublish(channel, data, key, floor)
        self._queue.append(pending)
        self._wake.set()
        return pending

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        queue = self._queue
        batch: list[PendingPublish] = []
        try:
            while True:
                if not queue:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
                calls = [(p.channel, p.data, p.key, p.floor) for p in batch]
                try:
                    outcomes = await self.store.publish_many(calls)
                except Unavailable as exc:
                    outcomes = [exc] * len(batch)
                except Exception:  # a bug must not stop every later publish of this node
                    log.exception("storing a batch of %d publishes failed", len(batch))
                    outcomes = [Unavailable("the publish could not be stored")] * len(batch)
                self.batches += 1
                for pending, outcome in zip(batch, outcomes, strict=True):
                    pending.resolve(outcome)
                batch = []
        finally:  # stopping: whoever still waits is told, not left hanging
            stopped = Unavailable("the redis engine stopped")
            for pending in (*batch, *queue):
                if not pending.done.is_set():
                    pending.resolve(stopped)
            queue.clear()
