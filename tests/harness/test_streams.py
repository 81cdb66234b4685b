"""Streams: message i is a pure function of (seed, i), bounded in size, every shape present."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import streams
from harness.streams import PlanError, plan, stream


def test_same_seed_same_stream_and_a_longer_plan_extends_a_shorter_one():
    short = plan(7, messages=50, publishers=2, channels=3)
    long = plan(7, messages=400, publishers=2, channels=3)
    assert long.messages[:50] == short.messages
    assert plan(8, messages=50, publishers=2, channels=3) != short


def test_a_message_can_be_made_alone_and_publishers_take_turns():
    recipe = stream(5, publishers=3, channels=2)
    whole = plan(5, messages=30, publishers=3, channels=2)
    assert [recipe.message(i) for i in range(30)] == list(whole.messages)
    mine = list(recipe.of_publisher(1, 30))
    assert [index for index, _ in mine] == list(range(1, 30, 3))
    assert all(message == whole.messages[index] and message.publisher == 1 for index, message in mine)
    endless = recipe.of_publisher(0, None)
    assert [next(endless)[0] for _ in range(4)] == [0, 3, 6, 9]


def test_a_long_stream_mixes_every_shape_the_encodings_carry():
    values = [m.value for m in plan(3, messages=2000, publishers=1, channels=1).messages]
    kinds = {type(v).__name__ for v in values}
    assert kinds >= {"dict", "list", "str", "bytes", "int", "float", "bool", "NoneType"}, kinds

    def leaves(value):
        if isinstance(value, dict):
            yield from value.keys()
            for item in value.values():
                yield from leaves(item)
        elif isinstance(value, list):
            for item in value:
                yield from leaves(item)
        else:
            yield value

    every = [leaf for value in values for leaf in leaves(value)]
    assert any(isinstance(x, int) and not isinstance(x, bool) and x > 2**63 for x in every)  # beyond int64
    assert any(isinstance(x, str) and any(ord(c) > 0xFFFF for c in x) for x in every)  # astral text
    assert any(isinstance(x, str) and "\u200b" in x for x in every)  # zero-width
    assert any(isinstance(x, float) and x == 0 and str(x) == "-0.0" for x in every)
    depth = max(_depth(v) for v in values)
    assert depth >= 30
    sizes = [len(cbor2.dumps(v)) for v in values]
    assert max(sizes) == streams.MAX_PAYLOAD  # the edge size is drawn
    assert sum(sizes) / len(sizes) < 8 * 1024  # the stated distribution: mostly small values
    assert {m.pause for m in plan(3, messages=2000, publishers=1, channels=1).messages} == {0.0, 0.001, 0.005}


def _depth(value):
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(), max_payload=st.integers(streams.MIN_PAYLOAD, 4096))
def test_no_value_is_larger_than_max_payload(seed, max_payload):
    recipe = stream(seed, publishers=2, channels=3, max_payload=max_payload)
    for index in range(60):
        message = recipe.message(index)
        assert len(cbor2.dumps(message.value)) <= max_payload
        assert message == recipe.message(index)  # and made again, it is the same


def test_trees_stay_under_the_bound_that_skips_their_size_check():
    values = [m.value for m in plan(11, messages=5000, publishers=1, channels=1).messages]
    trees = [v for v in values if isinstance(v, (list, dict))]
    assert max(len(cbor2.dumps(v)) for v in trees) < streams._TREE_BOUND // 2


@pytest.mark.parametrize(
    "settings_, why",
    [
        ({"messages": 0, "publishers": 1, "channels": 1}, "messages must be"),
        ({"messages": 3, "publishers": 5, "channels": 1}, "cannot share"),
        ({"messages": 10, "publishers": 1, "channels": 0}, "at least one"),
        ({"messages": 10, "publishers": 1, "channels": 1, "max_payload": 10}, "max payload"),
        ({"messages": 10, "publishers": 1, "channels": 1, "max_payload": streams.MAX_PAYLOAD_LIMIT + 1}, "max payload"),
    ],
)
def test_a_stream_that_cannot_be_planned_says_why(settings_, why):
    with pytest.raises(PlanError, match=why):
        plan(1, **settings_)
