"""Issue 12: property tests with hostile inputs for the frame reader and both codecs.

Work and size are counted, never timed:
- the frame reader: bytes it unmasks and bytes it hands the UTF-8 decoder (counted by
  wrapping the two), what it holds (its own ``held``) and what it hands out, each at most
  the bytes fed, so nothing is processed twice and nothing is amplified;
- the codecs: the decoded frame's size counted with multiplicity (a shared value counts
  each time it is reached, as the encoders and ``check_value`` would walk it), at most one
  node per byte received, and the JSON frame a subscriber would get at most 16 bytes per
  byte received.
"""

from __future__ import annotations

import functools
import json
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsnursery import codec, frame_reader
from wsnursery.codec import DecodeError, Encoding
from wsnursery.frame_reader import Control, FrameError, FrameReader
from wsnursery.wire import CloseCode

from .wsclient import masked_frame

MAX_SIZE = 4096
MAX_FRAGMENTS = 64
CLOSE_CODES = {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD, CloseCode.TOO_BIG}


class Counted:
    """Wraps the reader's ``unmask`` and UTF-8 decoder to count the bytes they are given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.unmasked = 0
        self.decoded = 0
        unmask, make_decoder = frame_reader.unmask, frame_reader._utf8_decoder

        def counting_unmask(payload: Any, mask: Any) -> bytes:
            self.unmasked += len(payload)
            return unmask(payload, mask)

        counter = self

        class CountingDecoder:
            def __init__(self) -> None:
                self._decoder = make_decoder()

            def decode(self, data: bytes, final: bool = False) -> str:
                counter.decoded += len(data)
                return self._decoder.decode(data, final)

        monkeypatch.setattr(frame_reader, "unmask", counting_unmask)
        monkeypatch.setattr(frame_reader, "_utf8_decoder", CountingDecoder)


def event_size(event: Any) -> int:
    if isinstance(event, Control):
        return len(event.payload)
    return len(event.encode("utf-8")) if isinstance(event, str) else len(event)


# -- frame reader -------------------------------------------------------------------------

masks = st.binary(min_size=4, max_size=4)
payloads = st.binary(max_size=300) | st.text(max_size=100).map(lambda t: t.encode("utf-8"))


@st.composite
def storms(draw: st.DrawFn) -> bytes:
    """Frames a hostile client might send: messages in many (often empty) fragments, control
    frames between them, and now and then a frame that breaks a rule."""
    wire = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["message", "storm", "control", "broken"]))
        mask = draw(masks)
        if kind == "control":
            opcode = draw(st.sampled_from([0x9, 0xA, 0x8]))
            body = draw(st.binary(max_size=20)) if opcode != 0x8 else struct.pack("!H", 1000)
            wire += masked_frame(opcode, body, mask=mask)
        elif kind == "broken":
            first = draw(st.integers(0, 255))
            wire += bytes([first, draw(st.integers(0, 255))]) + draw(st.binary(max_size=12))
        else:
            opcode = draw(st.sampled_from([0x1, 0x2]))
            count = (
                draw(st.integers(1, 8))
                if kind == "message"
                else draw(st.integers(MAX_FRAGMENTS - 2, MAX_FRAGMENTS + 3))
            )
            for index in range(count):
                body = draw(payloads) if kind == "message" or draw(st.integers(0, 9)) == 0 else b""
                wire += masked_frame(opcode if index == 0 else 0x0, body, fin=index == count - 1, mask=mask)
    return bytes(wire)


@settings(max_examples=300, deadline=None)
@given(wire=storms(), cut=st.integers(1, 97))
def test_the_frame_reader_works_and_holds_at_most_what_it_was_fed(wire, cut):
    with pytest.MonkeyPatch.context() as patch:
        counted = Counted(patch)
        reader = FrameReader(MAX_SIZE, max_fragments=MAX_FRAGMENTS)
        fed = out = 0
        error = None
        for start in range(0, len(wire), cut):
            piece = wire[start : start + cut]
            reader.feed(piece)
            fed += len(piece)
            try:
                while (event := reader.next_event()) is not None:
                    out += event_size(event)
            except FrameError as exc:
                error = exc
                break
            assert reader.held <= fed
            assert reader.held <= MAX_SIZE + reader.buffered
        # Every byte unmasked and decoded at most once; nothing handed out that was not received.
        assert counted.unmasked <= fed
        assert counted.decoded <= fed
        assert out <= fed
        if error is not None:
            assert error.code in CLOSE_CODES
            with pytest.raises(FrameError):
                reader.next_event()  # stays failed


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=60), data=st.data())
def test_invalid_utf8_at_any_position_fails_with_the_fragment_that_holds_it(text, data):
    raw = text.encode("utf-8")
    position = data.draw(st.integers(0, len(raw)), label="position")
    bad = raw[:position] + b"\xff" + raw[position:]
    cuts = sorted(
        set(data.draw(st.lists(st.integers(1, len(bad) - 1), max_size=8), label="cuts")) if len(bad) > 1 else []
    )
    pieces = [bad[a:b] for a, b in zip([0, *cuts], [*cuts, len(bad)])]
    reader = FrameReader(MAX_SIZE)
    offset = 0
    for index, piece in enumerate(pieces):
        reader.feed(masked_frame(0x1 if index == 0 else 0x0, piece, fin=index == len(pieces) - 1, mask=b"mask"))
        holds_it = offset <= position < offset + len(piece)
        offset += len(piece)
        if holds_it:
            with pytest.raises(FrameError) as error:
                reader.next_event()
            assert error.value.code == CloseCode.INVALID_PAYLOAD
            return
        assert reader.next_event() is None  # a valid prefix so far: no verdict yet
    raise AssertionError("the invalid byte was never reached")


# -- codecs -------------------------------------------------------------------------------


def head(major: int, argument: int) -> bytes:
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes([major << 5 | info]) + argument.to_bytes(size, "big")
    raise ValueError(argument)


TAGS = [2, 3, 0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 256, 258, 55799, 99, 2**40]
scalars = (
    st.integers(-(2**70), 2**70).map(cbor2.dumps)
    | st.text(max_size=20).map(cbor2.dumps)
    | st.binary(max_size=20).map(cbor2.dumps)
    | st.floats(width=16).map(lambda f: cbor2.dumps(f, canonical=True))
    | st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf0", b"\xf8\x20", b"\xff", b"\x1c"])
    | st.integers(0, 30).map(lambda index: b"\xd8\x1d" + cbor2.dumps(index))  # a shared reference
    | st.integers(0, 30).map(lambda index: b"\xd8\x19" + cbor2.dumps(index))  # a string reference
)


def containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    items = st.lists(children, max_size=5)
    return (
        items.map(lambda xs: head(4, len(xs)) + b"".join(xs))
        | items.map(lambda xs: b"\x9f" + b"".join(xs) + b"\xff")
        | st.lists(st.tuples(st.text(max_size=5).map(cbor2.dumps) | children, children), max_size=4).map(
            lambda kvs: head(5, len(kvs)) + b"".join(k + v for k, v in kvs)
        )
        | st.tuples(st.sampled_from(TAGS), children).map(lambda tv: head(6, tv[0]) + tv[1])
        | st.integers(1, 80).map(lambda depth: b"\x81" * depth + b"\x00")  # nesting around the limit
    )


cbor_items = st.recursive(scalars, containers, max_leaves=40)


def publish_with(data: bytes) -> bytes:
    prefix = cbor2.dumps({"type": "publish", "id": 1, "channel": "a"})
    return bytes([prefix[0] + 1]) + prefix[1:] + cbor2.dumps("data") + data


def tree_size(value: Any, budget: int) -> int:
    """Nodes of ``value`` counted with multiplicity; fails as soon as it passes ``budget``."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        assert count <= budget, f"decoded to more than {budget} nodes"
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return count


def check_linear(payload: bytes | str, encoding: Encoding) -> None:
    received = len(payload.encode("utf-8") if isinstance(payload, str) else payload)
    try:
        frame = codec.decode(payload, encoding)
    except DecodeError:
        return
    tree_size(frame, budget=received)
    try:
        codec.check_value(frame.get("data"))
    except codec.ValueNotCarried:
        return
    data = frame.get("data")
    if encoding is Encoding.JSON:
        data = codec.bytes_from_json(data)
    message = {"type": "message", "channel": "a", "epoch": "e", "seq": 1, "data": data, "ts": 0}
    for out in Encoding:
        assert len(codec.encode(message, out)) <= 16 * received + 128


@settings(max_examples=400, deadline=None)
@given(cbor_items)
@example(b"\xd8\x1c" + cbor2.dumps("s" * 50) + b"\xd8\x1d\x00")
@example(b"\x82" + b"\xd8\x1c\x82" * 20 + b"\x00\x00" + b"\xd8\x1d\x00" * 20)
@example(b"\x81" * (codec.MAX_DEPTH + 1) + b"\x00")
@example(b"\x81" * (codec.MAX_DEPTH + 2) + b"\x00")
def test_cbor_decodes_to_at_most_one_node_per_byte(item):
    check_linear(publish_with(item), Encoding.CBOR)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_cbor_garbage_is_a_decode_error_or_linear(payload):
    check_linear(payload, Encoding.CBOR)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(
    value=json_values, depth=st.integers(0, 80), surrogate=st.sampled_from(["", "\\ud800", "\\udfff", "\\ud83d\\ude00"])
)
def test_json_nesting_and_escapes_decode_linearly(value, depth, surrogate):
    data = "[" * depth + json.dumps(value) + "]" * depth
    text = f'{{"type": "publish", "id": 1, "channel": "a{surrogate}", "data": {data}}}'
    if surrogate in ("\\ud800", "\\udfff"):
        with pytest.raises(DecodeError):
            codec.decode(text, Encoding.JSON)
    check_linear(text, Encoding.JSON)


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("depth, accepted", [(codec.MAX_DEPTH, True), (codec.MAX_DEPTH + 1, False)])
def test_nesting_at_the_limit_is_judged_the_same_in_both_encodings(encoding, depth, accepted):
    data: Any = 0
    for _ in range(depth):
        data = [data]
    frame = codec.decode(codec.encode({"type": "publish", "data": data}, encoding), encoding)
    check = functools.partial(codec.check_value, frame["data"])
    if accepted:
        check()
    else:
        with pytest.raises(codec.ValueNotCarried):
            check()
