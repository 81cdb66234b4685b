"""Seeded, sans-I/O fault schedule for the WebSocket fault proxy.

Each data frame of each direction of each connection gets one decision:
no fault, or exactly one `Fault`. A decision is a pure function of
``(seed, connection index, direction, data frame index, whole_message)``:
it uses its own ``random.Random(f"{seed}:{conn}:{direction}:{frame}")``, so
neither query order nor concurrency changes the schedule. The handshake and
control frames (close/ping/pong) are never faulted and are not counted in
the data frame index.

Fragmented messages: ``drop`` and ``duplicate`` apply only to whole,
unfragmented messages (FIN set, not a continuation). For a fragment they are
simply not eligible, so removing or repeating a frame never corrupts the
message stream; every other kind keeps the bytes intact and may hit any
data frame. Dropping or duplicating a whole masked client frame is valid too:
each frame carries its own mask key.
"""

from __future__ import annotations

import collections
import enum
import random
import types
from collections.abc import Iterable, Mapping

import attrs

SLICE_PIECE_BYTES = (1, 7)
MAX_SLICE_PIECES = 64


class FaultKind(enum.StrEnum):
    RESET = "reset"  # abort the connection with RST
    DROP = "drop"  # swallow one whole data message, keep going
    DUPLICATE = "duplicate"  # deliver one whole data message twice
    DELAY = "delay"  # hold the frame back; later frames wait behind it
    STALL = "stall"  # stop forwarding both ways until a side closes
    SLICE = "slice"  # write the frame in tiny pieces


class Direction(enum.StrEnum):
    UPSTREAM = "upstream"  # client -> server
    DOWNSTREAM = "downstream"  # server -> client


ALL_KINDS = frozenset(FaultKind)
BOTH_DIRECTIONS = frozenset(Direction)
MESSAGE_ONLY_KINDS = frozenset({FaultKind.DROP, FaultKind.DUPLICATE})

FrameKey = tuple[int, Direction, int]  # (connection, direction, data frame)


@attrs.frozen
class Fault:
    """One fault to apply to one data frame."""

    kind: FaultKind = attrs.field(converter=FaultKind)
    delay: float = 0.0  # seconds a DELAY holds the frame back
    slice_sizes: tuple[int, ...] = ()  # write sizes of a SLICE's first pieces

    def pieces(self, raw: bytes) -> list[bytes]:
        """Cut ``raw`` into the writes of a SLICE: the tiny pieces first,
        then whatever is left in one final write (bounds the write count)."""
        pieces, offset = [], 0
        for size in self.slice_sizes:
            if offset >= len(raw):
                break
            pieces.append(raw[offset : offset + size])
            offset += size
        if offset < len(raw):
            pieces.append(raw[offset:])
        return pieces


def _to_kinds(kinds: Iterable[str]) -> frozenset[FaultKind]:
    return frozenset(FaultKind(kind) for kind in kinds)


def _to_directions(directions: Iterable[str]) -> frozenset[Direction]:
    return frozenset(Direction(direction) for direction in directions)


def _to_forced(
    forced: Mapping[tuple[int, str, int], str | Fault],
) -> Mapping[FrameKey, FaultKind | Fault]:
    normalised = {
        (conn, Direction(direction), frame): (fault if isinstance(fault, Fault) else FaultKind(fault))
        for (conn, direction, frame), fault in forced.items()
    }
    return types.MappingProxyType(normalised)


def _check_rate(_instance: object, _attribute: object, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"failure_rate must be within [0, 1], got {rate}")


@attrs.frozen
class FaultSchedule:
    """Which fault, if any, hits each data frame.

    ``forced_faults`` maps ``(connection, direction, data frame index)`` to a
    kind or a ready `Fault`; a forced entry wins over the random draw and over
    the ``kinds``/``directions`` filters (but never drops or duplicates a
    fragment).
    """

    seed: int | str
    failure_rate: float = attrs.field(validator=_check_rate)
    kinds: frozenset[FaultKind] = attrs.field(default=ALL_KINDS, converter=_to_kinds)
    directions: frozenset[Direction] = attrs.field(default=BOTH_DIRECTIONS, converter=_to_directions)
    delay_spike: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))
    max_slice_pieces: int = attrs.field(default=MAX_SLICE_PIECES, validator=attrs.validators.ge(1))
    forced_faults: Mapping[FrameKey, FaultKind | Fault] = attrs.field(factory=dict, converter=_to_forced)

    @classmethod
    def forced(cls, faults: Mapping[tuple[int, str, int], str | Fault], **options) -> FaultSchedule:
        """A schedule that injects exactly ``faults`` and nothing else."""
        return cls(seed=0, failure_rate=0.0, forced_faults=faults, **options)

    def decide(
        self,
        connection: int,
        direction: str,
        frame_index: int,
        *,
        whole_message: bool = True,
    ) -> Fault | None:
        """The fault for data frame ``frame_index`` of ``direction`` of
        ``connection`` (all counted from 0), or None."""
        direction = Direction(direction)
        rng = random.Random(f"{self.seed}:{connection}:{direction}:{frame_index}")
        forced = self.forced_faults.get((connection, direction, frame_index))
        if forced is not None:
            kind = forced.kind if isinstance(forced, Fault) else forced
            if kind in MESSAGE_ONLY_KINDS and not whole_message:
                return None
            return forced if isinstance(forced, Fault) else self._make(kind, rng)
        if direction not in self.directions or rng.random() >= self.failure_rate:
            return None
        eligible = [
            kind
            for kind in FaultKind  # definition order: stable across processes
            if kind in self.kinds and (whole_message or kind not in MESSAGE_ONLY_KINDS)
        ]
        if not eligible:
            return None
        return self._make(rng.choice(eligible), rng)

    def _make(self, kind: FaultKind, rng: random.Random) -> Fault:
        if kind is FaultKind.DELAY:
            return Fault(kind, delay=self.delay_spike)
        if kind is FaultKind.SLICE:
            sizes = tuple(rng.randint(*SLICE_PIECE_BYTES) for _ in range(self.max_slice_pieces))
            return Fault(kind, slice_sizes=sizes)
        return Fault(kind)


@attrs.define
class FaultStats:
    """Counts of faults injected, by direction and kind."""

    counts: collections.Counter[tuple[Direction, FaultKind]] = attrs.field(factory=collections.Counter)

    def record(self, kind: str, direction: str) -> None:
        self.counts[Direction(direction), FaultKind(kind)] += 1

    def count(self, kind: str | None = None, direction: str | None = None) -> int:
        """Faults of ``kind`` in ``direction``; None means any."""
        return sum(
            n
            for (counted_direction, counted_kind), n in self.counts.items()
            if (kind is None or counted_kind == kind) and (direction is None or counted_direction == direction)
        )

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{direction: {kind: count}}`` with every direction and kind."""
        return {
            str(direction): {str(kind): self.counts[direction, kind] for kind in FaultKind} for direction in Direction
        }
