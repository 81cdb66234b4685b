"""The fault schedule is seeded, pure and honours its rate, kinds and directions."""

import math
import random

import pytest

from harness.faults import (
    ALL_KINDS,
    Direction,
    Fault,
    FaultKind,
    FaultSchedule,
    FaultStats,
)

KEYS = [
    (conn, direction, frame) for conn in range(4) for direction in ("upstream", "downstream") for frame in range(200)
]


def _decisions(schedule, keys=KEYS):
    return {key: schedule.decide(*key) for key in keys}


def test_same_seed_gives_the_same_schedule_in_any_query_order():
    first = _decisions(FaultSchedule(seed=42, failure_rate=0.3))
    shuffled = KEYS[:]
    random.Random(1).shuffle(shuffled)
    again = _decisions(FaultSchedule(seed=42, failure_rate=0.3), shuffled)
    assert first == again
    assert any(first.values())


def test_different_seeds_give_different_schedules():
    assert _decisions(FaultSchedule(seed=1, failure_rate=0.3)) != _decisions(FaultSchedule(seed=2, failure_rate=0.3))


def test_rate_zero_never_faults_and_rate_one_always_does():
    assert not any(_decisions(FaultSchedule(seed=3, failure_rate=0.0)).values())
    assert all(_decisions(FaultSchedule(seed=3, failure_rate=1.0)).values())


def test_failure_rate_is_met_within_tolerance():
    rate, frames = 0.1, 20_000
    schedule = FaultSchedule(seed=9, failure_rate=rate)
    faults = sum(schedule.decide(frame % 10, "downstream", frame) is not None for frame in range(frames))
    sigma = math.sqrt(frames * rate * (1 - rate))
    assert abs(faults - frames * rate) < 5 * sigma


def test_every_kind_appears_by_default():
    decided = _decisions(FaultSchedule(seed=5, failure_rate=0.5))
    kinds = {fault.kind for fault in decided.values() if fault}
    assert kinds == ALL_KINDS


def test_only_selected_kinds_and_directions_appear():
    schedule = FaultSchedule(seed=4, failure_rate=0.5, kinds={"drop", "slice"}, directions={"upstream"})
    decided = _decisions(schedule)
    faults = [(key, fault) for key, fault in decided.items() if fault]
    assert {fault.kind for _, fault in faults} == {FaultKind.DROP, FaultKind.SLICE}
    assert {key[1] for key, _ in faults} == {Direction.UPSTREAM}


def test_fragments_are_never_dropped_or_duplicated():
    schedule = FaultSchedule(seed=6, failure_rate=1.0)
    kinds = {schedule.decide(0, "upstream", frame, whole_message=False).kind for frame in range(500)}
    assert kinds == ALL_KINDS - {FaultKind.DROP, FaultKind.DUPLICATE}
    only_message_kinds = FaultSchedule(seed=6, failure_rate=1.0, kinds={"drop"})
    assert only_message_kinds.decide(0, "upstream", 0, whole_message=False) is None


def test_forced_schedule_injects_exactly_the_given_faults():
    schedule = FaultSchedule.forced(
        {(0, "downstream", 3): "drop", (1, Direction.UPSTREAM, 0): "delay"},
        delay_spike=0.5,
    )
    decided = {key: fault for key, fault in _decisions(schedule).items() if fault}
    assert decided == {
        (0, "downstream", 3): Fault(FaultKind.DROP),
        (1, "upstream", 0): Fault(FaultKind.DELAY, delay=0.5),
    }
    assert schedule.decide(0, "downstream", 3, whole_message=False) is None


def test_forced_fault_object_is_returned_as_is():
    fault = Fault("slice", slice_sizes=(1, 2))
    schedule = FaultSchedule.forced({(2, "upstream", 7): fault})
    assert schedule.decide(2, "upstream", 7) is fault


def test_delay_carries_the_spike_and_slice_cuts_into_tiny_writes():
    schedule = FaultSchedule(seed=8, failure_rate=1.0, kinds={"delay", "slice"}, delay_spike=0.05)
    faults = [schedule.decide(0, "downstream", frame) for frame in range(50)]
    assert {f.delay for f in faults if f.kind is FaultKind.DELAY} == {0.05}
    raw = bytes(range(256)) * 4
    for fault in (f for f in faults if f.kind is FaultKind.SLICE):
        pieces = fault.pieces(raw)
        assert b"".join(pieces) == raw
        assert all(1 <= len(piece) <= 7 for piece in pieces[:-1])
        assert len(pieces) <= schedule.max_slice_pieces + 1
        assert b"".join(fault.pieces(b"abc")) == b"abc"


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError):
        FaultSchedule(seed=0, failure_rate=1.5)
    with pytest.raises(ValueError):
        FaultSchedule(seed=0, failure_rate=0.1, kinds={"explode"})
    with pytest.raises(ValueError):
        FaultSchedule(seed=0, failure_rate=0.1, directions={"sideways"})
    with pytest.raises(ValueError):
        FaultSchedule(seed=0, failure_rate=0.1, delay_spike=-1)


def test_stats_count_by_kind_and_direction():
    stats = FaultStats()
    stats.record("drop", "upstream")
    stats.record(FaultKind.DROP, Direction.UPSTREAM)
    stats.record("reset", "downstream")
    assert stats.count("drop") == 2
    assert stats.count(direction="downstream") == 1
    assert stats.count("drop", "downstream") == 0
    assert stats.total == 3
    as_dict = stats.as_dict()
    assert as_dict["upstream"]["drop"] == 2
    assert as_dict["downstream"]["reset"] == 1
    assert set(as_dict) == {"upstream", "downstream"}
    every_kind = {str(kind) for kind in FaultKind}
    assert all(set(counts) == every_kind for counts in as_dict.values())
    assert sum(sum(counts.values()) for counts in as_dict.values()) == 3
