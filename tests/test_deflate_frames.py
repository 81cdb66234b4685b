"""permessage-deflate in the frame reader (RSV1, inflating as fragments arrive, bounds) and in
the frames the server writes (RSV1 per message, compressed once per window size)."""

from __future__ import annotations

import functools
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnursery import deflate, wsframe
from wsnursery.broadcast import StoredMessage
from wsnursery.codec import Encoding
from wsnursery.deflate import Inflater
from wsnursery.delivery import FrameCache
from wsnursery.frame_reader import Control, FrameError, FrameReader
from wsnursery.wire import CloseCode, Opcode

from .wsclient import masked_frame

masked = functools.partial(masked_frame, mask=b"\x01\x02\x03\x04")
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
MAX = 65536


def reader(max_size: int = MAX, *, takeover: bool = True, max_fragments: int = 1024) -> FrameReader:
    return FrameReader(max_size, max_fragments, Inflater(15, not takeover, max_size))


def client_compress(data: bytes, compressor: zlib._Compress | None = None) -> bytes:
    """What a client sends: raw deflate, sync-flushed, the 4-byte tail stripped."""
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def pull(frames: FrameReader, data: bytes) -> list[object]:
    frames.feed(data)
    events = []
    while (event := frames.next_event()) is not None:
        events.append(event)
    return events


def test_a_compressed_text_message_is_inflated() -> None:
    text = "héllo " * 100
    assert pull(reader(), masked(Opcode.TEXT, client_compress(text.encode()), rsv=RSV1)) == [text]


def test_compressed_and_plain_messages_mix_and_context_carries_over() -> None:
    frames = reader(takeover=True)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = client_compress(b"abcdefgh" * 50, compressor)
    second = client_compress(b"abcdefgh" * 50, compressor)  # refers back to the first message
    assert len(second) < len(first)
    data = (
        masked(Opcode.BINARY, first, rsv=RSV1) + masked(Opcode.TEXT, b"plain") + masked(Opcode.BINARY, second, rsv=RSV1)
    )
    assert pull(frames, data) == [b"abcdefgh" * 50, "plain", b"abcdefgh" * 50]


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=6), st.sampled_from([1, 7, 5000]))
def test_fragmented_compressed_message_any_cuts(payload: bytes, cuts: list[int], feed_size: int) -> None:
    """Fragments cut anywhere in the compressed stream, fed in any pieces, give the message back."""
    compressed = client_compress(payload)
    points = sorted({min(cut, len(compressed)) for cut in cuts})
    pieces = [compressed[a:b] for a, b in zip([0, *points], [*points, len(compressed)], strict=True)]
    wire = b"".join(
        masked(
            Opcode.BINARY if index == 0 else Opcode.CONTINUATION,
            piece,
            fin=index == len(pieces) - 1,
            rsv=RSV1 if index == 0 else 0,
        )
        for index, piece in enumerate(pieces)
    )
    frames = reader()
    events: list[object] = []
    for start in range(0, len(wire), feed_size):
        events += pull(frames, wire[start : start + feed_size])
    assert events == [payload]


def test_a_final_block_ends_the_stream_and_the_next_message_starts_a_new_one() -> None:
    """RFC 7692 §7.2.3.5: a client may flush with BFINAL=1 instead of an empty stored block."""
    frames = reader(takeover=True)
    data = b""
    for text in (b"first message", b"second message"):
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        data += masked(Opcode.BINARY, compressor.compress(text) + compressor.flush(zlib.Z_FINISH), rsv=RSV1)
    assert pull(frames, data) == [b"first message", b"second message"]


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([masked(Opcode.TEXT, b"x", rsv=RSV2)], "RSV2"),
        ([masked(Opcode.TEXT, b"x", rsv=RSV3)], "RSV3"),
        ([masked(Opcode.PING, b"x", rsv=RSV1)], "RSV1 on a control frame"),
        (
            [
                masked(Opcode.TEXT, client_compress(b"ab")[:1], fin=False, rsv=RSV1),
                masked(Opcode.CONTINUATION, client_compress(b"ab")[1:], rsv=RSV1),
            ],
            "RSV1 on a continuation",
        ),
        (
            [masked(Opcode.TEXT, b"ab", fin=False), masked(Opcode.CONTINUATION, b"cd", rsv=RSV1)],
            "RSV1 on a continuation of a plain message",
        ),
    ],
)
def test_misplaced_reserved_bits_are_protocol_errors(frames: list[bytes], why: str) -> None:
    with pytest.raises(FrameError) as caught:
        pull(reader(), b"".join(frames))
    assert caught.value.code == CloseCode.PROTOCOL_ERROR, why


def test_rsv1_without_the_extension_is_a_protocol_error() -> None:
    with pytest.raises(FrameError) as caught:
        pull(FrameReader(MAX), masked(Opcode.TEXT, client_compress(b"hello"), rsv=RSV1))
    assert caught.value.code == CloseCode.PROTOCOL_ERROR


def test_a_decompression_bomb_gets_1009_before_it_is_inflated() -> None:
    """64 MiB of zeros is ~64 KiB compressed: well under the wire limit, refused by its output."""
    bomb = client_compress(bytes(64 * 2**20))
    assert len(bomb) < MAX
    frames = reader(MAX)
    with pytest.raises(FrameError) as caught:
        pull(frames, masked(Opcode.BINARY, bomb, rsv=RSV1))
    assert caught.value.code == CloseCode.TOO_BIG
    assert frames.held < 2 * MAX  # nothing near 64 MiB was ever held


def test_a_fragmented_bomb_is_refused_at_the_fragment_that_crosses_the_limit() -> None:
    bomb = client_compress(bytes(4 * MAX))
    quarter = len(bomb) // 4
    frames = reader(MAX)
    assert pull(frames, masked(Opcode.BINARY, bomb[:quarter], fin=False, rsv=RSV1)) == []
    with pytest.raises(FrameError) as caught:
        pull(frames, masked(Opcode.CONTINUATION, bomb[quarter:], fin=True))
    assert caught.value.code == CloseCode.TOO_BIG


def test_a_compressed_message_of_exactly_the_limit_is_delivered() -> None:
    payload = bytes(range(256)) * (MAX // 256)
    assert pull(reader(MAX), masked(Opcode.BINARY, client_compress(payload), rsv=RSV1)) == [payload]


def test_compressed_bytes_beyond_the_wire_bound_are_refused_from_the_header() -> None:
    frames = reader(1024)
    header_only = masked(Opcode.BINARY, bytes(deflate.wire_bound(1024) + 1), rsv=RSV1)[:14]
    with pytest.raises(FrameError) as caught:
        pull(frames, header_only)
    assert caught.value.code == CloseCode.TOO_BIG


def test_invalid_utf8_inside_compressed_text_is_1007() -> None:
    with pytest.raises(FrameError) as caught:
        pull(reader(), masked(Opcode.TEXT, client_compress(b"ok \xff\xfe not utf-8"), rsv=RSV1))
    assert caught.value.code == CloseCode.INVALID_PAYLOAD


def test_invalid_utf8_in_a_compressed_fragment_fails_before_the_message_ends() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = compressor.compress(b"\xff bad") + compressor.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(FrameError) as caught:
        pull(reader(), masked(Opcode.TEXT, first, fin=False, rsv=RSV1))
    assert caught.value.code == CloseCode.INVALID_PAYLOAD


def test_garbage_compressed_data_is_1007_and_control_frames_still_pass_between_fragments() -> None:
    frames = reader()
    compressed = client_compress(b"x" * 500)
    data = (
        masked(Opcode.TEXT, compressed[:3], fin=False, rsv=RSV1)
        + masked(Opcode.PING, b"p")
        + masked(Opcode.CONTINUATION, compressed[3:])
    )
    events = pull(frames, data)
    assert isinstance(events[0], Control) and events[0].opcode == Opcode.PING
    assert events[1:] == ["x" * 500]
    with pytest.raises(FrameError) as caught:
        pull(frames, masked(Opcode.BINARY, b"\xff\xff\xff\xff junk", rsv=RSV1))
    assert caught.value.code == CloseCode.INVALID_PAYLOAD


def test_without_context_takeover_the_inflater_is_dropped_after_each_message() -> None:
    inflater = Inflater(15, True, MAX)
    frames = FrameReader(MAX, 1024, inflater)
    assert pull(frames, masked(Opcode.BINARY, client_compress(b"abc"), rsv=RSV1)) == [b"abc"]
    assert not inflater.holds_context
    kept = Inflater(15, False, MAX)
    assert not kept.holds_context  # nothing allocated before the first compressed message
    assert pull(FrameReader(MAX, 1024, kept), masked(Opcode.BINARY, client_compress(b"abc"), rsv=RSV1)) == [b"abc"]
    assert kept.holds_context


# -- what the server writes --------------------------------------------------------------


def inflate(frame: bytes, bits: int = 15) -> bytes:
    assert frame[0] & 0x40, "RSV1 must be set on a compressed frame"
    length = frame[1] & 0x7F
    start = {126: 4, 127: 10}.get(length, 2)
    return zlib.decompressobj(-bits).decompress(frame[start:] + b"\x00\x00\xff\xff")


def test_message_frame_compresses_over_the_threshold_only() -> None:
    big, small = b"a" * 300, b"a" * 10
    assert wsframe.message_frame(big, binary=False, window_bits=None, threshold=0)[0] == 0x81
    assert wsframe.message_frame(small, binary=False, window_bits=15, threshold=256)[0] == 0x81
    frame = wsframe.message_frame(big, binary=True, window_bits=15, threshold=256)
    assert frame[0] == 0xC2 and inflate(frame) == big


def test_the_frame_cache_compresses_once_per_window_and_shares_the_bytes() -> None:
    cache = FrameCache(threshold=64)
    message = StoredMessage("ch", "ep", 1, {"text": "lorem ipsum " * 100}, 1000)
    plain = cache.frame(message, Encoding.JSON)
    compressed = cache.frame(message, Encoding.JSON, 15)
    assert cache.frame(message, Encoding.JSON, 15) is compressed  # computed once, then shared
    assert cache.table(Encoding.JSON, 15)[message] is compressed
    assert plain[0] == 0x81 and compressed[0] == 0xC1
    assert inflate(compressed) == plain[4:]  # the same JSON as the plain frame (126-length header)
    assert len(compressed) < len(plain) // 4
    narrow = cache.frame(message, Encoding.JSON, 9)
    assert narrow is not compressed and inflate(narrow, 9) == plain[4:]
    assert cache.bytes(Encoding.JSON, 15) == len(compressed)


def test_the_frame_cache_sends_small_messages_plain_to_compressing_connections() -> None:
    cache = FrameCache(threshold=4096)
    message = StoredMessage("ch", "ep", 1, "small", 1000)
    assert cache.frame(message, Encoding.CBOR, 15) == cache.frame(message, Encoding.CBOR)
