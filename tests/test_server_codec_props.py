"""Property tests: every value of the shared data model survives both encodings, byte for byte.

The data model (``codec``): None, bool, int, finite float, str, bytes, list, str-keyed map.
JSON carries bytes as ``{"$bytes": base64}``, so a map of exactly that shape is the one value
JSON cannot tell apart from bytes: keys named ``$bytes`` are left out of the JSON property.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from wsnursery import codec
from wsnursery.codec import Encoding
from wsnursery.delivery import FrameCache
from wsnursery.hub import StoredMessage

TRICKY_TEXT = [
    "",
    "\u200b",
    "\u200c\u200d",
    "\ufeff",
    "\u2028\u2029",
    "a\x00b",
    "\U0001f600",
    "\U0001f469\u200d\U0001f4bb",
    "\U0010ffff",
    "e\u0301",
    "\\u0000",
    '"quoted"',
    '{"$bytes": "AA=="}',
    "\x7f\x80\x9f",
]

text = st.text(st.characters(codec="utf-8")) | st.sampled_from(TRICKY_TEXT)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.binary()
)
keys = text.filter(lambda key: key != codec.BYTES_KEY)


def values(leaves: st.SearchStrategy = scalars) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=6) | st.dictionaries(keys, children, max_size=6),
        max_leaves=25,
    )


VALUES = values()


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (True is not 1, 1.0 is not 1, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def through(value: Any, encoding: Encoding) -> Any:
    frame = {"type": "message", "channel": "c", "epoch": "e", "seq": 1, "data": value, "ts": 0}
    decoded = codec.decode(codec.encode(frame, encoding), encoding)
    data = decoded["data"]
    return codec.bytes_from_json(data) if encoding is Encoding.JSON else data


def unframe(frame: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one complete unmasked server frame, checking its length header."""
    first, second = frame[0], frame[1]
    assert first & 0x80 and not second & 0x80  # FIN, unmasked
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        assert length >= 126
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        assert length >= 65536
        offset = 10
    assert len(frame) == offset + length
    return first & 0x0F, frame[offset:]


@given(VALUES)
@example(float("-0.0"))
@example(5e-324)
@example(1e16)
@example(2**64)
@example(-(2**63) - 1)
@example({"x": b"", "y": [b"\xff"], "\U0001f600": "\u200b"})
@example({"k": [b"\x00" * 70_000]})
@example("y" * 125)
def test_round_trip_through_both_encodings_and_the_server_frames(value):
    codec.check_value(value)
    assert same(through(value, Encoding.CBOR), value)
    json_payload = codec.encode({"type": "message", "data": value}, Encoding.JSON)
    json_payload.decode("utf-8")  # always valid UTF-8 text
    assert same(through(value, Encoding.JSON), value)
    # What the hub writes to subscribers: one unmasked frame, right opcode, the value inside,
    # encoded once per encoding and then shared by every subscriber.
    message = StoredMessage("chan", "ep", 7, value, 1_700_000_000_000, 0.0)
    frames = FrameCache()
    for encoding in Encoding:
        frame = frames.frame(message, encoding)
        assert frames.frame(message, encoding) is frame
        opcode, payload = unframe(frame)
        assert opcode == (0x2 if encoding is Encoding.CBOR else 0x1)
        decoded = codec.decode(payload if encoding is Encoding.CBOR else payload.decode("utf-8"), encoding)
        assert {k: decoded[k] for k in ("type", "channel", "epoch", "seq", "ts")} == {
            "type": "message",
            "channel": "chan",
            "epoch": "ep",
            "seq": 7,
            "ts": 1_700_000_000_000,
        }
        data = codec.bytes_from_json(decoded["data"]) if encoding is Encoding.JSON else decoded["data"]
        assert same(data, value)


@given(
    st.recursive(
        st.sampled_from([float("nan"), float("inf"), float("-inf"), {1: 2}, {b"k": 1}, (1,), {1, 2}, object()]),
        lambda children: (
            st.lists(children, min_size=1, max_size=3).map(list)
            | st.dictionaries(keys, children, min_size=1, max_size=3)
        ),
        max_leaves=5,
    )
)
def test_values_outside_the_model_are_refused(value):
    try:
        codec.check_value(value)
    except codec.ValueNotCarried:
        return
    raise AssertionError(f"{value!r} was accepted")
