"""Sans-I/O publishing side of the client: idempotency keys, retries with backoff, confirmation.

No I/O, no clock (time comes in as ``now``), randomness from an injected ``random.Random``:
the client session drives :class:`PublishTracker` and the tests drive it alike.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import attrs

__all__ = ["PendingPublish", "PublishTracker", "PublishWindowFull"]

_positive = attrs.validators.gt(0)
_positive_seconds = attrs.validators.gt(0.0)


class PublishWindowFull(Exception):
    """``max_pending`` publishes await confirmation; wait for one before publishing more."""


@attrs.define
class PendingPublish:
    """A publish awaiting its ``published`` reply. Resent with the same key and id."""

    channel: str
    data: Any
    key: str
    request_id: int
    due_at: float
    sends: int = 0
    epoch: str | None = None  # set once confirmed
    seq: int | None = None


@attrs.define
class PublishTracker:
    """Client-side publisher: idempotency keys, retries, confirmation.

    Keys are ``f"{client_prefix}-{n}"`` with a random prefix from ``rng``. :meth:`due` hands
    out what to send now (first sends and retries); after the send numbered ``k`` (0 first),
    the next retry waits ``rng.uniform(0, min(cap, base * 2**k))`` (full jitter).
    :meth:`on_reconnect` makes every unconfirmed publish due at once, same key.

    Bound: at most ``max_pending`` unconfirmed publishes; :meth:`new_publish` past that raises
    :class:`PublishWindowFull` (the SDK makes the caller wait).
    """

    rng: random.Random = attrs.field(factory=random.Random)
    base: float = attrs.field(default=0.1, validator=_positive_seconds)
    cap: float = attrs.field(default=5.0, validator=_positive_seconds)
    max_pending: int = attrs.field(default=1024, validator=_positive)
    ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))
    client_prefix: str = attrs.field(
        default=attrs.Factory(lambda self: f"{self.rng.getrandbits(64):016x}", takes_self=True)
    )
    retries: int = attrs.field(default=0, init=False)
    _counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _pending: dict[str, PendingPublish] = attrs.field(factory=dict, init=False)
    _key_by_id: dict[int, str] = attrs.field(factory=dict, init=False)

    def __len__(self) -> int:
        return len(self._pending)

    def new_publish(self, channel: str, data: Any, now: float) -> PendingPublish:
        """Register a publish, due at once. Raises :class:`PublishWindowFull` at the bound."""
        if len(self._pending) >= self.max_pending:
            raise PublishWindowFull(f"{self.max_pending} publishes await confirmation; wait for one to complete")
        key = f"{self.client_prefix}-{next(self._counter)}"
        publish = PendingPublish(channel, data, key, next(self.ids), due_at=now)
        self._pending[key] = publish
        self._key_by_id[publish.request_id] = key
        return publish

    def due(self, now: float) -> list[PendingPublish]:
        """Publishes to send now, oldest first; each counts as sent and gets a next retry time."""
        out = [p for p in self._pending.values() if p.due_at <= now]
        for publish in out:
            if publish.sends:
                self.retries += 1
            ceiling = min(self.cap, self.base * 2 ** min(publish.sends, 64))
            publish.due_at = now + self.rng.uniform(0, ceiling)
            publish.sends += 1
        return out

    def on_published(self, ref: str | int, epoch: str, seq: int) -> PendingPublish | None:
        """Confirm by key or request id; returns the publish, or None if already confirmed."""
        publish = self._pop(ref)
        if publish is not None:
            publish.epoch, publish.seq = epoch, seq
        return publish

    def cancel(self, ref: str | int) -> PendingPublish | None:
        """Give up on a publish (the server rejected it with an error); frees its slot."""
        return self._pop(ref)

    def on_reconnect(self, now: float) -> None:
        """A new connection: every unconfirmed publish is due at ``now`` (same key, same id)."""
        for publish in self._pending.values():
            publish.due_at = now

    def next_deadline(self) -> float | None:
        return min((p.due_at for p in self._pending.values()), default=None)

    def _pop(self, ref: str | int) -> PendingPublish | None:
        key = self._key_by_id.get(ref) if isinstance(ref, int) else ref
        publish = self._pending.pop(key, None) if key is not None else None
        if publish is not None:
            del self._key_by_id[publish.request_id]
        return publish
