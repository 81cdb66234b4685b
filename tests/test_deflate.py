"""permessage-deflate's sans-I/O core: negotiation (RFC 7692 §7), compression, bounded inflation."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnursery import deflate
from wsnursery.deflate import Agreement, InflateError, Inflater
from wsnursery.wire import CloseCode


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("permessage-deflate", Agreement(False, 15, 15)),
        ("permessage-deflate; client_max_window_bits", Agreement(False, 15, 15)),
        ("permessage-deflate; client_no_context_takeover", Agreement(True, 15, 15)),
        ("permessage-deflate; server_no_context_takeover", Agreement(False, 15, 15)),
        ("permessage-deflate; server_max_window_bits=8", Agreement(False, 15, 8)),
        ('permessage-deflate; server_max_window_bits="10"', Agreement(False, 15, 10)),
        ("permessage-deflate; client_max_window_bits=9", Agreement(False, 9, 15)),
        # The first acceptable offer wins; unacceptable ones are skipped.
        ("permessage-deflate; server_max_window_bits=7, permessage-deflate", Agreement(False, 15, 15)),
        ("x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover", Agreement(True, 15, 15)),
    ],
)
def test_accepts_an_offer(header: str, expected: Agreement) -> None:
    assert deflate.negotiate(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits",  # a value is required
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; unknown_parameter",
    ],
)
def test_declines_a_bad_offer(header: str) -> None:
    assert deflate.negotiate(header) is None


def test_response_header_always_carries_server_no_context_takeover() -> None:
    """The server compresses every message from a fresh context, so one payload serves all."""
    assert deflate.negotiate("permessage-deflate").header == "permessage-deflate; server_no_context_takeover"
    agreed = deflate.negotiate("permessage-deflate; client_no_context_takeover; server_max_window_bits=9")
    assert agreed is not None
    assert agreed.header == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
    )


def test_the_server_may_ask_every_client_not_to_keep_context() -> None:
    """RFC 7692 §7.1.1.2: a server may add client_no_context_takeover to any offer."""
    agreed = deflate.negotiate("permessage-deflate; client_max_window_bits", 12, client_context=False)
    assert agreed == Agreement(True, 12, 15)
    assert agreed.header == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=12"
    )


def test_client_window_is_limited_only_when_the_client_says_it_may_be() -> None:
    assert deflate.negotiate("permessage-deflate", client_window_limit=10) == Agreement(False, 15, 15)
    limited = deflate.negotiate("permessage-deflate; client_max_window_bits", client_window_limit=10)
    assert limited == Agreement(False, 10, 15)
    assert limited.header.endswith("client_max_window_bits=10")


@given(st.binary(max_size=4096), st.integers(min_value=8, max_value=15))
def test_compressed_payload_inflates_with_the_agreed_window(payload: bytes, bits: int) -> None:
    """What the server sends is valid for a receiver whose window is exactly the agreed size."""
    compressed = deflate.compress(payload, bits)
    receiver = zlib.decompressobj(-bits)
    assert receiver.decompress(compressed + b"\x00\x00\xff\xff") == payload


@given(st.lists(st.binary(max_size=512), min_size=1, max_size=8), st.booleans())
def test_inflater_reads_fragmented_messages_with_and_without_context(parts: list[bytes], takeover: bool) -> None:
    """A client keeping its context across messages (the default) is read correctly too."""
    client = zlib.compressobj(6, zlib.DEFLATED, -15)
    inflater = Inflater(15, no_context_takeover=not takeover, max_size=1 << 20)
    for _ in range(2):  # two messages: the second may reference the first
        message = b"".join(parts)
        compressed = client.compress(message) + client.flush(zlib.Z_SYNC_FLUSH)
        assert compressed.endswith(b"\x00\x00\xff\xff")
        compressed = compressed[:-4]
        middle = len(compressed) // 2
        out = inflater.feed(compressed[:middle]) + inflater.feed(compressed[middle:]) + inflater.finish()
        assert out == message
        if not takeover:
            client = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert inflater.holds_context is takeover


def test_decompression_bomb_is_refused_while_inflating() -> None:
    """1 MiB of zeros compresses to about 1 KiB; a 64 KiB limit stops it at 64 KiB + 1 of output."""
    bomb = deflate.compress(bytes(1 << 20))
    assert len(bomb) < 2048
    inflater = Inflater(15, no_context_takeover=True, max_size=65536)
    with pytest.raises(InflateError) as caught:
        inflater.feed(bomb)
        inflater.finish()
    assert caught.value.code == CloseCode.TOO_BIG


def test_limit_counts_the_whole_message_across_fragments() -> None:
    payload = bytes(range(256)) * 64  # 16 KiB
    compressed = deflate.compress(payload)
    exact = Inflater(15, no_context_takeover=True, max_size=len(payload))
    assert exact.feed(compressed[:10]) + exact.feed(compressed[10:]) + exact.finish() == payload
    short = Inflater(15, no_context_takeover=True, max_size=len(payload) - 1)
    with pytest.raises(InflateError) as caught:
        short.feed(compressed[:10])
        short.feed(compressed[10:])
        short.finish()
    assert caught.value.code == CloseCode.TOO_BIG


def test_garbage_is_an_invalid_payload() -> None:
    inflater = Inflater(15, no_context_takeover=False, max_size=1024)
    with pytest.raises(InflateError) as caught:
        inflater.feed(b"\xff\xff\xff\xff garbage")
        inflater.finish()
    assert caught.value.code == CloseCode.INVALID_PAYLOAD
    assert not inflater.holds_context
