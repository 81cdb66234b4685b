"""Message streams for reliability runs: message ``i`` of seed ``s`` is a pure function of (s, i).

Each message draws from its own ``random.Random(f"{seed}:{index}")`` (seeded through
SHA-512, so the same on every run and every process), which makes a stream of any length
cost time linear in its length and memory only for what is kept, lets a publisher make
its messages one at a time while it sends them (a soak never holds its stream), and lets a
shrunk run keep the first ``n`` messages of the failing stream exactly.

Why not hypothesis: drawing the same shapes with ``@given``/``@seed`` per block of messages
measured ~1,200 messages/s here (100,000 messages in ~80 s; one list for the whole stream
was 10 s for 300), far from the 100,000-in-seconds a long run needs; ``strategy.example()``
is not reproducible. The property tests still use hypothesis to check what these
generators promise (``tests/harness/test_streams.py``).

Shapes (the stated distribution, per message):

- 70 % **tree**: a value of up to 12 leaves in lists and maps of up to 4 members; leaves are
  null, booleans, integers from -2**63 to 2**64 (edges included), finite floats (edges
  included: -0.0, 5e-324, 1.7976931348623157e308), text of up to 40 code points (any UTF-8
  code point, astral and zero-width ones favoured) and bytes of up to 64;
- 10 % **deep**: nesting 1 to 40 levels of alternating maps and lists;
- 20 % **blob**: bytes or text (half each) whose CBOR size is log-uniform between 1 and
  ``max_payload`` bytes, with one blob in ten at an edge size (0, 1 or ``max_payload``).

No value's CBOR encoding is larger than ``max_payload`` bytes (a tree or a deep value that
would be is replaced by a blob that fits). With the default 64 KiB the mean value is about
1.6 KB of CBOR and the median 47 bytes (100,000 messages, seed 1). Pacing: 90 % of messages follow the previous one at once
(bursts), 7 % wait 1 ms and 3 % 5 ms.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import attrs
import cbor2

MAX_PAYLOAD = 64 * 1024  # default bound on one value's CBOR size, bytes
MIN_PAYLOAD = 64  # smaller bounds cannot carry the shapes a stream promises
MAX_PAYLOAD_LIMIT = 1024 * 1024  # the harness server takes 4 MiB messages; JSON may triple text
# A bound on any one run, soaks included: the verdict keeps ~150 bytes per delivery, so
# 1,000,000 messages to 4 subscribers hold ~600 MB (a stream itself is never held).
MAX_MESSAGES = 1_000_000
_TRICKY = "\u200b\u200c\u200d\ufeff\U0001f600\U00010348\u0301\x00\u202e"
_INT_EDGES = (0, 1, -1, 2**63 - 1, -(2**63), 2**64, 2**32, -(2**31), 255, 256, 65535)
_FLOAT_EDGES = (0.0, -0.0, 5e-324, 1.7976931348623157e308, -1.7976931348623157e308, 0.1, 1.0, 1e16)
_PAUSES = (0.0,) * 90 + (0.001,) * 7 + (0.005,) * 3
# No tree or deep value is larger than this in CBOR (12 leaves of at most 40 code points,
# keys of at most 12, 40 levels of nesting): a bound at or above it needs no size check.
_TREE_BOUND = 8 * 1024


class PlanError(ValueError):
    """A stream that cannot be planned (the message says which bound it breaks)."""


@attrs.frozen
class PlannedMessage:
    publisher: int
    channel: str
    value: Any
    pause: float  # seconds to wait before publishing it (bursty pacing)


@attrs.frozen
class Plan:
    channels: tuple[str, ...]
    messages: tuple[PlannedMessage, ...]


@attrs.frozen
class Stream:
    """The recipe of a stream: any message of it, made on demand."""

    seed: int
    publishers: int
    channels: tuple[str, ...]
    max_payload: int = MAX_PAYLOAD

    def message(self, index: int) -> PlannedMessage:
        """Message ``index`` (from 0): a pure function of the seed and the index.

        Publishers take turns (message ``i`` is publisher ``i % publishers``'s), so each
        publisher can make its own messages without making anyone else's.
        """
        rng = random.Random(f"{self.seed}:{index}")
        channel = self.channels[rng.randrange(len(self.channels))]
        value = _value(rng, self.max_payload)
        return PlannedMessage(index % self.publishers, channel, value, rng.choice(_PAUSES))

    def of_publisher(self, publisher: int, count: int | None) -> Iterator[tuple[int, PlannedMessage]]:
        """(index, message) of ``publisher``'s messages among the first ``count`` (None: no end)."""
        index = publisher
        while count is None or index < count:
            yield index, self.message(index)
            index += self.publishers


def channel_names(channels: int) -> tuple[str, ...]:
    return tuple(f"reliability.c{index}" for index in range(channels))


def stream(seed_value: int, *, publishers: int, channels: int, max_payload: int = MAX_PAYLOAD) -> Stream:
    """The stream of ``seed_value``; raises `PlanError` for a stream that cannot be planned."""
    check(messages=None, publishers=publishers, channels=channels, max_payload=max_payload)
    return Stream(seed_value, publishers, channel_names(channels), max_payload)


def check(*, messages: int | None, publishers: int, channels: int, max_payload: int) -> None:
    """Raise `PlanError` unless a stream with these settings can be planned."""
    if messages is not None and not 1 <= messages <= MAX_MESSAGES:
        raise PlanError(f"messages must be between 1 and {MAX_MESSAGES:,}, not {messages}")
    if publishers < 1 or channels < 1:
        raise PlanError("a stream needs at least one publisher and one channel")
    if messages is not None and publishers > messages:
        raise PlanError(f"{publishers} publishers cannot share {messages} messages (each needs one)")
    if not MIN_PAYLOAD <= max_payload <= MAX_PAYLOAD_LIMIT:
        raise PlanError(f"max payload must be between {MIN_PAYLOAD} and {MAX_PAYLOAD_LIMIT} bytes, not {max_payload}")


def plan(seed_value: int, *, messages: int, publishers: int, channels: int, max_payload: int = MAX_PAYLOAD) -> Plan:
    """A deterministic plan of ``messages`` publishes spread over publishers and channels.

    Holds every value: meant for tests and small runs; a run makes its messages on demand
    from `stream` instead.
    """
    check(messages=messages, publishers=publishers, channels=channels, max_payload=max_payload)
    recipe = stream(seed_value, publishers=publishers, channels=channels, max_payload=max_payload)
    return Plan(recipe.channels, tuple(recipe.message(index) for index in range(messages)))


# -- value shapes --------------------------------------------------------------------------


def _value(rng: random.Random, max_payload: int) -> Any:
    shape = rng.random()
    if shape < 0.7:
        value = _tree(rng, [12])
    elif shape < 0.8:
        value = _deep(rng.randint(1, 40))
    else:
        return _blob(rng, max_payload)
    if max_payload < _TREE_BOUND and len(cbor2.dumps(value)) > max_payload:
        return _blob(rng, max_payload)
    return value


def _tree(rng: random.Random, leaves: list[int]) -> Any:
    """A value of at most ``leaves[0]`` leaves (the budget is shared down the tree)."""
    if leaves[0] <= 1 or rng.random() < 0.45:
        leaves[0] -= 1
        return _leaf(rng)
    size = int(rng.random() * 5)
    if rng.random() < 0.5:
        items = []
        for _ in range(size):
            if leaves[0] <= 0:
                break
            items.append(_tree(rng, leaves))
        return items
    mapping = {}
    for _ in range(size):
        if leaves[0] <= 0:
            break
        mapping[_text(rng, 12)] = _tree(rng, leaves)
    return mapping


def _leaf(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        if rng.random() < 0.3:
            return rng.choice(_INT_EDGES)
        return rng.randint(-(2**63), 2**64) if rng.random() < 0.5 else rng.randint(-1000, 1000)
    if kind == 2:
        if rng.random() < 0.3:
            return rng.choice(_FLOAT_EDGES)
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else math.ldexp(rng.random(), rng.randint(-1000, 1000))
    if kind == 3:
        return rng.randbytes(rng.randint(0, 64))
    return _text(rng, 40)


def _text(rng: random.Random, max_size: int) -> str:
    """Up to ``max_size`` code points: 20 % tricky ones, 40 % printable ASCII, 40 % any (no
    surrogates). One draw per character picks both the kind and the character (this is the
    hot loop of planning a stream)."""
    draw = rng.random
    out = []
    for _ in range(int(draw() * (max_size + 1))):
        pick = draw()
        if pick < 0.2:
            out.append(_TRICKY[int(pick * 5 * len(_TRICKY))])
        elif pick < 0.6:
            out.append(chr(0x20 + int((pick - 0.2) * 2.5 * 95)))
        else:
            code = int((pick - 0.6) * 2.5 * 0x110000)
            out.append(chr(code if not 0xD800 <= code <= 0xDFFF else code - 0x800))
    return "".join(out)


def _deep(depth: int) -> Any:
    value: Any = "bottom\u200b"
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


def _blob(rng: random.Random, max_payload: int) -> bytes | str:
    """Bytes or text whose CBOR size is log-uniform in [1, max_payload] (edges 1 in 10)."""
    if rng.random() < 0.1:
        size = rng.choice((1, 1, max_payload))  # size 1 is the empty value's header byte
    else:
        size = int(math.exp(rng.uniform(0.0, math.log(max_payload))))
    body = _body_bytes(size)
    if rng.random() < 0.5:
        return rng.randbytes(body)
    chunk = _text(rng, 8) or "\u00e9"
    encoded = chunk.encode("utf-8")
    repeats, rest = divmod(body, len(encoded))
    return chunk * repeats + "a" * rest


def _body_bytes(size: int) -> int:
    """The longest string body whose CBOR encoding (head included) fits in ``size`` bytes."""
    for head in (1, 2, 3, 5, 9):
        body = size - head
        if body < 0:
            return 0
        if _head(body) <= head:
            return body
    return 0


def _head(body: int) -> int:
    return 1 if body < 24 else 2 if body < 256 else 3 if body < 65536 else 5 if body < 2**32 else 9
