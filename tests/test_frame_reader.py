"""The sans-I/O frame reader: every message whole and in order, every violation its close code."""

from __future__ import annotations

import functools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from wsnursery.frame_reader import Control, FrameError, FrameReader, unmask
from wsnursery.wire import CloseCode

from .wsclient import masked_frame

MAX = 4096


# One client frame, built by hand; a fixed mask unless a test picks one.
masked = functools.partial(masked_frame, mask=b"\x01\x02\x03\x04")


def drain(reader: FrameReader) -> list:
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def read_all(data: bytes, cuts: list[int], max_size: int = MAX) -> list:
    """Feed ``data`` in pieces cut at ``cuts`` and pull after every piece."""
    reader = FrameReader(max_size)
    events: list = []
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        reader.feed(data[start:cut])
        start = cut
        events += drain(reader)
    assert reader.buffered == 0
    return events


def simple(event):
    return (event.opcode, event.payload) if isinstance(event, Control) else event


messages = st.one_of(st.text(max_size=300), st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.tuples(messages, st.integers(1, 4), st.binary(min_size=4, max_size=4), st.booleans()), max_size=8
    ),
    data=st.data(),
)
def test_messages_survive_any_fragmentation_and_any_read_boundaries(items, data):
    """Each message split into 1-4 fragments (text split mid-character too), a ping after
    the first fragment when asked, random masks, and the byte stream cut anywhere."""
    wire = b""
    expected: list = []
    for message, pieces, mask, ping in items:
        raw = message.encode("utf-8") if isinstance(message, str) else message
        opcode = 0x1 if isinstance(message, str) else 0x2
        bounds = sorted(data.draw(st.lists(st.integers(0, len(raw)), min_size=pieces - 1, max_size=pieces - 1)))
        parts = [raw[a:b] for a, b in zip([0, *bounds], [*bounds, len(raw)])]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            wire += masked(opcode if index == 0 else 0x0, part, fin=last, mask=mask)
            if last:
                expected.append(message)
            if ping and index == 0:
                wire += masked(0x9, b"ping", mask=mask)
                expected.append((0x9, b"ping"))
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    assert [simple(e) for e in read_all(wire, cuts)] == expected


@settings(max_examples=100, deadline=None)
@given(items=st.lists(st.tuples(messages, st.integers(1, 50)), max_size=6), cut=st.integers(1, 64))
def test_agrees_with_wsproto_as_the_encoder(items, cut):
    encoder = FrameProtocol(client=True, extensions=[])
    wire = bytearray()
    for message, fragment in items:
        chunks = [message[i : i + fragment] for i in range(0, len(message), fragment)] or [message]
        for index, chunk in enumerate(chunks):
            wire += encoder.send_data(chunk, fin=index == len(chunks) - 1)
    wire += encoder.close(1000, "bye")
    events = read_all(bytes(wire), list(range(cut, len(wire), cut)))
    assert events[:-1] == [message for message, _ in items]
    assert (events[-1].code, events[-1].reason) == (1000, "bye")


def test_large_lengths_use_the_16_and_64_bit_forms():
    medium, large = b"m" * 300, b"L" * 70_000
    assert read_all(masked(0x2, medium) + masked(0x2, large), [1, 3, 9], max_size=100_000) == [medium, large]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 1000])
def test_unmask_is_its_own_inverse(size):
    payload = bytes(range(256)) * 4
    once = unmask(payload[:size], b"\xde\xad\xbe\xef")
    assert unmask(once, b"\xde\xad\xbe\xef") == payload[:size]
    assert len(once) == size


def test_close_frames():
    assert (read_all(masked(0x8, b""), [])[0].code) == CloseCode.NO_STATUS
    event = read_all(masked(0x8, struct.pack("!H", 4008) + b"lent"), [])[0]
    assert (event.code, event.reason) == (4008, "lent")


def test_pong_is_reported():
    assert [simple(e) for e in read_all(masked(0xA, b"7"), [])] == [(0xA, b"7")]


VIOLATIONS = [
    pytest.param(b"\x81\x05hello", 1002, id="unmasked"),
    pytest.param(masked(0x1, b"x", rsv=0x40), 1002, id="rsv1"),
    pytest.param(masked(0x1, b"x", rsv=0x10), 1002, id="rsv3"),
    pytest.param(masked(0x3, b"x"), 1002, id="reserved-data-opcode"),
    pytest.param(masked(0xB, b"x"), 1002, id="reserved-control-opcode"),
    pytest.param(masked(0x9, b"p", fin=False), 1002, id="fragmented-ping"),
    pytest.param(masked(0x9, b"p" * 126), 1002, id="long-ping"),
    pytest.param(masked(0x0, b"x"), 1002, id="continuation-without-start"),
    pytest.param(masked(0x1, b"a", fin=False) + masked(0x1, b"b"), 1002, id="new-message-inside-fragmented"),
    pytest.param(masked(0x8, b"\x03"), 1002, id="one-byte-close"),
    pytest.param(masked(0x8, struct.pack("!H", 1005)), 1002, id="close-1005"),
    pytest.param(masked(0x8, struct.pack("!H", 999)), 1002, id="close-999"),
    pytest.param(masked(0x8, struct.pack("!H", 2000)), 1002, id="close-2000"),
    pytest.param(masked(0x8, struct.pack("!H", 5000)), 1002, id="close-5000"),
    pytest.param(masked(0x8, struct.pack("!H", 1000) + b"\xff"), 1007, id="close-reason-not-utf8"),
    pytest.param(masked(0x1, b"\xff\xfe"), 1007, id="text-not-utf8"),
    pytest.param(masked(0x1, "é".encode()[:1], fin=False) + masked(0x0, b"x"), 1007, id="fragments-not-utf8"),
    pytest.param(masked(0x2, b"x" * (MAX + 1)), 1009, id="frame-over-max"),
    pytest.param(masked(0x2, b"x" * MAX, fin=False) + masked(0x0, b"x"), 1009, id="fragments-over-max"),
]


@pytest.mark.parametrize("wire,code", VIOLATIONS)
def test_violations_raise_their_close_code_and_stay_raised(wire, code):
    reader = FrameReader(MAX)
    reader.feed(wire)
    with pytest.raises(FrameError) as first:
        drain(reader)
    assert first.value.code == code
    reader.feed(masked(0x1, b"fine"))
    with pytest.raises(FrameError) as again:
        reader.next_event()
    assert again.value is first.value


@pytest.mark.parametrize(
    "length, code",
    [
        pytest.param(2**40, 1009, id="oversize-refused-from-the-header-before-the-payload-arrives"),
        pytest.param(2**63, 1002, id="top-bit-of-a-64-bit-length-is-a-protocol-error"),
    ],
)
def test_a_64_bit_length_is_judged_from_the_header_alone(length, code):
    reader = FrameReader(MAX)
    reader.feed(struct.pack("!BBQ", 0x82, 0x80 | 127, length))
    with pytest.raises(FrameError) as error:
        reader.next_event()
    assert error.value.code == code


def test_an_unfinished_frame_waits_and_stays_buffered():
    frame = masked(0x1, b"hello")
    reader = FrameReader(MAX)
    reader.feed(frame[:-1])
    assert reader.next_event() is None
    assert reader.buffered == len(frame) - 1
    reader.feed(frame[-1:])
    assert reader.next_event() == "hello"
