"""The frame splitter reproduces wsproto's frame boundaries and bytes exactly."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.frame_protocol import FrameProtocol, Opcode

from harness.wsframes import (
    MAX_HANDSHAKE_BYTES,
    Frame,
    FrameSplitError,
    FrameSplitter,
    Handshake,
)


def _handshake_heads() -> tuple[bytes, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    request = client.send(Request(host="127.0.0.1", target="/topic"))
    server.receive_data(request)
    assert isinstance(next(server.events()), Request)
    response = server.send(AcceptConnection())
    return request, response


CLIENT_HEAD, SERVER_HEAD = _handshake_heads()

LENGTH_BOUNDARIES = [0, 1, 125, 126, 127, 65535, 65536, 65537]
payload_sizes = st.sampled_from(LENGTH_BOUNDARIES) | st.integers(0, 400)


@st.composite
def frame_streams(draw):
    """(is_client, [(raw frame, opcode, fin, payload length)]) built by wsproto."""
    is_client = draw(st.booleans())
    protocol = FrameProtocol(client=is_client, extensions=[])
    frames = []

    def add_control():
        size = draw(st.integers(0, 125))
        if draw(st.booleans()):
            frames.append((protocol.ping(b"p" * size), Opcode.PING, True, size))
        else:
            frames.append((protocol.pong(b"q" * size), Opcode.PONG, True, size))

    for _ in range(draw(st.integers(0, 5))):
        text = draw(st.booleans())
        fragment_sizes = draw(st.lists(payload_sizes, min_size=1, max_size=3))
        for position, size in enumerate(fragment_sizes):
            if position and draw(st.booleans()):
                add_control()  # controls may sit between fragments
            fin = position == len(fragment_sizes) - 1
            payload = "t" * size if text else bytes(i % 251 for i in range(size))
            opcode = Opcode.CONTINUATION if position else (Opcode.TEXT if text else Opcode.BINARY)
            frames.append((bytes(protocol.send_data(payload, fin)), opcode, fin, size))
        if draw(st.booleans()):
            add_control()
    if draw(st.booleans()):
        close = bytes(protocol.close(1000, "bye"))
        frames.append((close, Opcode.CLOSE, True, 5))
    return is_client, frames


def _feed_in_pieces(splitter: FrameSplitter, stream: bytes, cuts: list[int]):
    bounds = [0, *sorted(set(cuts)), len(stream)]
    chunks = []
    for start, end in itertools.pairwise(bounds):
        chunks.extend(splitter.feed(stream[start:end]))
    return chunks


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    built=frame_streams(),
    with_handshake=st.booleans(),
    data=st.data(),
)
def test_random_chunking_reproduces_frames_exactly(built, with_handshake, data):
    is_client, frames = built
    head = (CLIENT_HEAD if is_client else SERVER_HEAD) if with_handshake else b""
    stream = head + b"".join(raw for raw, *_ in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    splitter = FrameSplitter(expect_handshake=with_handshake)

    chunks = _feed_in_pieces(splitter, stream, cuts)

    assert b"".join(chunk.raw for chunk in chunks) == stream
    if with_handshake:
        assert chunks.pop(0) == Handshake(head)
    assert all(isinstance(chunk, Frame) for chunk in chunks)
    assert [(c.raw, c.opcode, c.fin, c.payload_length) for c in chunks] == frames
    assert all(chunk.masked == is_client for chunk in chunks)
    assert splitter.buffered == 0


def test_frame_classification():
    protocol = FrameProtocol(client=False, extensions=[])
    first = protocol.send_data(b"ab", fin=False)
    middle = protocol.send_data(b"cd", fin=False)
    last = protocol.send_data(b"ef", fin=True)
    whole = protocol.send_data("whole", fin=True)
    ping = protocol.ping(b"")
    splitter = FrameSplitter(expect_handshake=False)
    chunks = splitter.feed(bytes(first + middle + last + whole + ping))
    assert [c.is_data for c in chunks] == [True, True, True, True, False]
    assert [c.is_control for c in chunks] == [False, False, False, False, True]
    assert [c.is_whole_message for c in chunks] == [False, False, False, True, False]


def test_handshake_end_split_across_feeds_is_found():
    splitter = FrameSplitter()
    cut = len(CLIENT_HEAD) - 2
    assert splitter.feed(CLIENT_HEAD[:cut]) == []
    assert splitter.feed(CLIENT_HEAD[cut:]) == [Handshake(CLIENT_HEAD)]


def test_handshake_at_the_limit_passes_and_past_it_fails():
    filler = b"GET / HTTP/1.1\r\nX: "
    exact = filler + b"a" * (MAX_HANDSHAKE_BYTES - len(filler) - 4) + b"\r\n\r\n"
    assert FrameSplitter().feed(exact) == [Handshake(exact)]

    splitter = FrameSplitter()
    with pytest.raises(FrameSplitError, match="handshake"):
        splitter.feed(exact[:-4] + b"a\r\n\r\n")
    with pytest.raises(FrameSplitError, match="handshake"):
        FrameSplitter().feed(b"a" * (MAX_HANDSHAKE_BYTES + 1))
    with pytest.raises(FrameSplitError, match="already failed"):
        splitter.feed(b"")


def test_oversized_frame_fails_as_soon_as_its_header_arrives():
    splitter = FrameSplitter(expect_handshake=False, max_frame_bytes=1000)
    header = bytes(FrameProtocol(client=True, extensions=[]).send_data(b"x" * 1000))[:8]
    with pytest.raises(FrameSplitError, match="exceeds"):
        splitter.feed(header)


def test_frame_exactly_at_the_limit_passes():
    raw = bytes(FrameProtocol(client=True, extensions=[]).send_data(b"x" * 1000))
    splitter = FrameSplitter(expect_handshake=False, max_frame_bytes=len(raw))
    (frame,) = splitter.feed(raw)
    assert frame.raw == raw and frame.payload_length == 1000


def test_64_bit_length_with_top_bit_set_is_rejected():
    header = bytes([0x82, 127]) + (1 << 63).to_bytes(8, "big")
    with pytest.raises(FrameSplitError, match="top bit"):
        FrameSplitter(expect_handshake=False).feed(header)


def test_partial_frame_is_held_back_until_complete():
    raw = bytes(FrameProtocol(client=False, extensions=[]).send_data(b"y" * 300))
    splitter = FrameSplitter(expect_handshake=False)
    assert splitter.feed(raw[:-1]) == []
    assert splitter.buffered == len(raw) - 1
    (frame,) = splitter.feed(raw[-1:])
    assert frame.raw == raw and splitter.buffered == 0
