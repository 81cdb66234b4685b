"""The end-to-end verdict of a reliability run, sans-I/O.

Publishers record what the hub confirmed: channel, ``seq`` and the payload's identity.
Subscribers record what their application saw, in order: messages and gap reports. The
``Ledger`` compares the two per subscriber and channel:

- **lost**: confirmed after the subscriber's start, neither delivered nor inside a reported gap;
- **duplicated**: a payload identity delivered more than once;
- **reordered**: a delivery whose ``seq`` is not above the previous one on that channel;
- **corrupted**: a delivered payload that differs from the one published at that seq;
- **gaps**: losses the client reported explicitly (history exceeded, epoch changed).

Payloads are kept as 16-byte fingerprints (BLAKE2b of their canonical CBOR), not as values,
so a 100,000-message run judges in tens of megabytes: equal values give equal fingerprints,
and a changed value gives a different one (short of a 2**-64 collision).
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

import attrs
import cbor2


@attrs.define
class Verdict:
    published: int = 0
    delivered: int = 0
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    gaps: int = 0
    gap_messages: int = 0
    unconfirmed: int = 0
    examples: list[str] = attrs.field(factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.corrupted or self.unconfirmed)

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


@attrs.define
class SubscriberLog:
    """What one subscriber's application saw, in order.

    Deliveries are kept in flat arrays (channel number, seq, identity, 16-byte fingerprint),
    not as a tuple each: a 100,000-message run has 400,000 of them, and as objects they made
    Python's full garbage collections long enough (hundreds of ms on a loaded machine) to
    stall every connection's heartbeat in the same process.
    """

    name: str
    starts: dict[str, int] = attrs.field(factory=dict)  # channel -> head seq when subscribed
    gaps: list[tuple[str, int, int]] = attrs.field(factory=list)  # (channel, first missing, resumed at)
    _channels: list[str] = attrs.field(factory=list)
    _channel_numbers: dict[str, int] = attrs.field(factory=dict)
    _channel: array[int] = attrs.field(factory=lambda: array("l"))
    _seq: array[int] = attrs.field(factory=lambda: array("q"))
    _identity: array[int] = attrs.field(factory=lambda: array("q"))  # publisher << 40 | counter, or -k
    _digests: bytearray = attrs.field(factory=bytearray)
    _other: list[str] = attrs.field(factory=list)  # identities of payloads without a (p, n) stamp

    def subscribed(self, channel: str, seq: int) -> None:
        self.starts.setdefault(channel, seq)

    def message(self, channel: str, seq: int, payload: Any) -> None:
        number = self._channel_numbers.get(channel)
        if number is None:
            number = self._channel_numbers[channel] = len(self._channels)
            self._channels.append(channel)
        self._channel.append(number)
        self._seq.append(seq)
        self._identity.append(self._identity_of(payload))
        self._digests += fingerprint(payload)

    def gap(self, channel: str, first_missing: int, resumed_at: int) -> None:
        self.gaps.append((channel, first_missing, resumed_at))

    @property
    def count(self) -> int:
        """Deliveries so far."""
        return len(self._seq)

    @property
    def seen(self) -> list[tuple[str, int, Any, bytes]]:
        """(channel, seq, identity, fingerprint) of each delivery, in order (made on demand)."""
        return [self._entry(i) for i in range(self.count)]

    def _entry(self, i: int) -> tuple[str, int, Any, bytes]:
        identity: Any = self._identity[i]
        identity = self._other[-identity - 1] if identity < 0 else (identity >> 40, identity & (2**40 - 1))
        return self._channels[self._channel[i]], self._seq[i], identity, bytes(self._digests[16 * i : 16 * i + 16])

    def _identity_of(self, payload: Any) -> int:
        stamp = _identity(payload)
        if isinstance(stamp, tuple) and all(type(x) is int and 0 <= x < 2**40 for x in stamp) and stamp[0] < 2**22:
            return stamp[0] << 40 | stamp[1]
        self._other.append(repr(stamp))
        return -len(self._other)


class Ledger:
    def __init__(self) -> None:
        self.confirmed: dict[str, dict[int, bytes]] = {}  # channel -> seq -> payload fingerprint
        self.attempted = 0
        self.subscribers: list[SubscriberLog] = []

    def published(self, channel: str, seq: int, payload: Any) -> None:
        self.confirmed.setdefault(channel, {})[seq] = fingerprint(payload)

    def subscriber(self, name: str) -> SubscriberLog:
        log = SubscriberLog(name)
        self.subscribers.append(log)
        return log

    def verdict(self) -> Verdict:
        verdict = Verdict()
        verdict.published = sum(len(seqs) for seqs in self.confirmed.values())
        verdict.unconfirmed = self.attempted - verdict.published
        for log in self.subscribers:
            self._judge(log, verdict)
        return verdict

    def _judge(self, log: SubscriberLog, verdict: Verdict) -> None:
        last: dict[str, int] = {}
        delivered: dict[str, set[int]] = {}
        identities: set[Any] = set()
        for i in range(log.count):
            channel, seq, _, digest = log._entry(i)
            identity = log._identity[i]  # an int: the set holds no tuples
            verdict.delivered += 1
            if identity in identities:
                verdict.duplicated += 1
                verdict.note(f"{log.name}: {channel} seq {seq} delivered twice")
                continue
            identities.add(identity)
            if seq <= last.get(channel, -1):
                verdict.reordered += 1
                verdict.note(f"{log.name}: {channel} seq {seq} after seq {last[channel]}")
            last[channel] = max(seq, last.get(channel, -1))
            delivered.setdefault(channel, set()).add(seq)
            expected = self.confirmed.get(channel, {}).get(seq, _MISSING)
            if expected is not _MISSING and expected != digest:
                verdict.corrupted += 1
                verdict.note(f"{log.name}: {channel} seq {seq} payload differs from the one published")
        covered: dict[str, set[int]] = {}
        for channel, first, resumed in log.gaps:
            verdict.gaps += 1
            covered.setdefault(channel, set()).update(range(first, resumed))
            verdict.gap_messages += max(0, resumed - first)
        for channel, start in log.starts.items():
            for seq in self.confirmed.get(channel, {}):
                if seq <= start:
                    continue
                verdict.expected += 1
                if seq not in delivered.get(channel, ()) and seq not in covered.get(channel, ()):
                    verdict.lost += 1
                    verdict.note(f"{log.name}: {channel} seq {seq} never delivered")


_MISSING = object()


def fingerprint(payload: Any) -> bytes:
    """16 bytes that stand for ``payload``: equal values, equal fingerprints."""
    try:
        encoded = cbor2.dumps(payload, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        encoded = repr(payload).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(encoded, digest_size=16).digest()


def _identity(payload: Any) -> Any:
    """A payload's (publisher, counter) stamp; the harness wraps every value in one."""
    if isinstance(payload, dict) and "p" in payload and "n" in payload:
        return (payload["p"], payload["n"])
    return repr(payload)
