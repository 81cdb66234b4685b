"""The delivery side's frame cache: once per encoding, shared, bounded in frames and bytes."""

from __future__ import annotations

from wsnursery import codec
from wsnursery.broadcast import StoredMessage
from wsnursery.codec import Encoding
from wsnursery.delivery import FrameCache


def message(seq: int, data: object = "x") -> StoredMessage:
    return StoredMessage("ch", "ep", seq, data, 1000 + seq)


def test_a_message_is_encoded_once_per_encoding_and_shared():
    cache = FrameCache()
    m = message(1, b"\x00\x01")
    json_frame, cbor_frame = cache.frame(m, Encoding.JSON), cache.frame(m, Encoding.CBOR)
    assert cache.frame(m, Encoding.JSON) is json_frame and cache.table(Encoding.CBOR)[m] is cbor_frame
    assert json_frame[0] == 0x81 and cbor_frame[0] == 0x82  # FIN + text, FIN + binary
    decoded = codec.decode(cbor_frame[2:], Encoding.CBOR)
    assert decoded == {"type": "message", "channel": "ch", "epoch": "ep", "seq": 1, "data": b"\x00\x01", "ts": 1001}
    assert len(cache) == 2


def test_the_oldest_frames_go_first_at_the_count_bound():
    cache = FrameCache(max_frames=3)
    messages = [message(seq) for seq in range(1, 6)]
    for m in messages:
        cache.frame(m, Encoding.JSON)
    assert list(cache.table(Encoding.JSON)) == messages[2:]
    assert cache.table(Encoding.CBOR) == {}


def test_the_byte_bound_keeps_the_newest_frame_even_when_it_alone_is_over():
    cache = FrameCache(max_bytes=200)
    small = [message(seq) for seq in range(1, 4)]
    for m in small:
        cache.frame(m, Encoding.JSON)
    assert cache.bytes(Encoding.JSON) == sum(len(f) for f in cache.table(Encoding.JSON).values()) <= 200
    big = message(4, "y" * 1000)
    frame = cache.frame(big, Encoding.JSON)
    assert list(cache.table(Encoding.JSON)) == [big]
    assert cache.bytes(Encoding.JSON) == len(frame)
    again = cache.encode(big, Encoding.JSON)  # re-encoding replaces, it does not count twice
    assert again == frame and cache.bytes(Encoding.JSON) == len(frame)
