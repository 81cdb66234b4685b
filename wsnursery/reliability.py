"""Sans-I/O reliability core, server side: acks with retransmits, and publish dedup.

Nothing here does I/O, reads a clock or imports an async library. Time comes in as ``now``
(float seconds, any monotonic origin) and randomness from an injected ``random.Random``, so
the I/O shells (the Trio server, the client SDK) and the tests drive these machines alike.

- :class:`AckTracker` (server, per ``"ack": true`` subscription): unacked window, go-back-N
  retransmit timer with backoff.
- :class:`DedupWindow` (server, per channel): idempotency key -> original ``(epoch, seq)``.

The client's halves (in-order delivery and gap repair, publish retries) live in
:mod:`wsnursery.client.receiver` and :mod:`wsnursery.client.publisher`.

Every buffer is bounded; each class says what happens at its bound.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import attrs

__all__ = [
    "AckResult",
    "AckTracker",
    "DedupWindow",
    "Position",
]

Position = tuple[str, int]
"""``(epoch, seq)``: the last message of stream ``epoch`` a client holds."""

_positive: Any = attrs.validators.gt(0)  # for int and float fields alike


# --------------------------------------------------------------------------- server side


@attrs.frozen
class AckResult:
    """What :meth:`AckTracker.on_ack` made of an ack.

    ``error_code``/``error_reason`` are set when the ack was invalid; the server answers with
    ``{"type": "error", "code": error_code, "reason": error_reason}`` and keeps the connection.
    """

    newly_acked: int = 0
    error_code: str | None = None
    error_reason: str | None = None


@attrs.define
class AckTracker:
    """Server-side state of one subscription that asked for acks.

    The writer sends a channel's messages in seq order and reports them with :meth:`on_sent`;
    the client acks cumulatively. When the oldest unacked message stays unacked for
    ``timeout`` seconds, :meth:`due` names the seq to go back to (go-back-N: the writer resends
    ``acked+1 .. sent`` from history, then calls :meth:`on_resent`). Each retransmit multiplies
    ``timeout`` by ``backoff`` up to ``max_timeout``; an ack that advances resets it to
    ``ack_timeout``. The writer continues from ``sent + 1``: an ack can move ``sent`` forward.

    Bound: at ``unacked >= max_unacked`` :attr:`window_full` is true. The server closes a live
    subscriber that stays full with 4008 (slow consumer); a catch-up burst (resume, replay)
    longer than the window must instead wait for acks, or every resume would end the same
    way. Send times are kept per :meth:`on_sent` call, at most ``max_unacked`` of them; past
    that, newer sends share the newest kept time (a retransmit can come earlier, never later).
    """

    ack_timeout: float = attrs.field(default=1.0, validator=_positive)
    backoff: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    max_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_unacked: int = attrs.field(default=1024, validator=_positive)
    acked: int = attrs.field(default=0, init=False)
    sent: int = attrs.field(default=0, init=False)
    highest_sent: int = attrs.field(default=0, init=False)
    retransmits: int = attrs.field(default=0, init=False)
    timeout: float = attrs.field(default=attrs.Factory(lambda self: self.ack_timeout, takes_self=True), init=False)
    # (highest seq of one send, when it went out), oldest first; only unacked sends.
    _inflight: deque[tuple[int, float]] = attrs.field(factory=deque, init=False)

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    @property
    def window_full(self) -> bool:
        return self.unacked >= self.max_unacked

    def on_sent(self, seq: int, now: float) -> None:
        """The writer has sent every message up to ``seq``. A ``seq <= sent`` changes nothing."""
        if seq <= self.sent:
            return
        self.sent = seq
        self.highest_sent = max(self.highest_sent, seq)
        if len(self._inflight) < self.max_unacked:
            self._inflight.append((seq, now))
        else:
            self._inflight[-1] = (seq, self._inflight[-1][1])

    def on_resent(self, now: float) -> None:
        """The writer resent ``acked+1 .. sent`` at ``now``; back off the timer."""
        if not self.unacked:
            return
        self._inflight = deque([(self.sent, now)])
        self.retransmits += 1
        self.timeout = min(self.timeout * self.backoff, self.max_timeout)

    def on_ack(self, seq: Any) -> AckResult:
        """A cumulative ack.

        Stale acks (``<= acked``) change nothing. An ack past ``highest_sent`` (the highest seq
        ever sent on this subscription) is an error and changes nothing. An ack past ``sent``
        but not past ``highest_sent`` is valid: the client got those messages before a
        :meth:`reset_to`, so ``sent`` moves up to it and the writer skips them.
        """
        if not isinstance(seq, int) or isinstance(seq, bool):
            return AckResult(error_code="bad_request", error_reason="ack seq must be an integer")
        if seq > self.highest_sent:
            return AckResult(
                error_code="bad_request",
                error_reason=f"ack seq {seq} is past the last sent seq {self.highest_sent}",
            )
        if seq <= self.acked:
            return AckResult()
        newly, self.acked, self.sent = seq - self.acked, seq, max(self.sent, seq)
        while self._inflight and self._inflight[0][0] <= seq:
            self._inflight.popleft()
        self.timeout = self.ack_timeout
        return AckResult(newly_acked=newly)

    def next_deadline(self) -> float | None:
        """When the oldest unacked send times out; None while nothing is unacked."""
        if not self.unacked:
            return None
        return self._inflight[0][1] + self.timeout

    def due(self, now: float) -> int | None:
        """The seq to resend from (``acked + 1``) if the retransmit timer has fired, else None."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return None
        return self.acked + 1

    def reset_to(self, seq: int) -> None:
        """The subscription was repositioned (``replay``, resubscribe): sent = acked = ``seq``."""
        self.sent = self.acked = seq
        self.highest_sent = max(self.highest_sent, seq)
        self._inflight.clear()
        self.timeout = self.ack_timeout


@attrs.define
class DedupWindow:
    """Server-side, per channel: idempotency keys seen recently -> their ``(epoch, seq)``.

    A retried publish whose key is still here gets the original seq and is not delivered
    again. Bounds: at most ``max_keys`` keys (remembering one more evicts the oldest) and
    ``max_age`` seconds (older keys are forgotten on the next lookup or remember).
    """

    max_keys: int = attrs.field(default=10_000, validator=_positive)
    max_age: float = attrs.field(default=300.0, validator=_positive)
    evicted: int = attrs.field(default=0, init=False)
    _entries: OrderedDict[str, tuple[str, int, float]] = attrs.field(factory=OrderedDict, init=False)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str, now: float) -> Position | None:
        self._expire(now)
        entry = self._entries.get(key)
        return None if entry is None else (entry[0], entry[1])

    def remember(self, key: str, epoch: str, seq: int, now: float) -> None:
        self._expire(now)
        self._entries.pop(key, None)
        self._entries[key] = (epoch, seq, now)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
            self.evicted += 1

    def _expire(self, now: float) -> None:
        while self._entries:
            _, _, remembered_at = next(iter(self._entries.values()))
            if now - remembered_at < self.max_age:
                return
            self._entries.popitem(last=False)
            self.evicted += 1
