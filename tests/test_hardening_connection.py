"""Issue 12, connection-level items: what is owed before a close goes out first."""

from __future__ import annotations

import struct

import pytest

from .test_server_support import raw_welcome, server_errors  # noqa: F401
from .wsclient import RawClient, masked_frame

pytestmark = pytest.mark.usefixtures("server_errors")


async def frames_until_close(client: RawClient) -> list[tuple[int, bytes]]:
    frames = []
    while (frame := await client.read_frame()) is not None:
        frames.append(frame)
        if frame[0] == 0x8:
            break
    return frames


async def test_a_ping_then_a_close_in_one_read_gets_its_pong_before_the_close(server):
    """Item 11 (RFC 6455 5.5.2): the ping came first, so its pong is owed."""
    client = await RawClient.connect(server.port)
    await raw_welcome(client)
    await client.stream.send_all(masked_frame(0x9, b"owed") + masked_frame(0x8, struct.pack("!H", 1000)))
    frames = await frames_until_close(client)
    await client.aclose()
    assert [opcode for opcode, _ in frames] == [0xA, 0x8], frames
    assert frames[0][1] == b"owed"
    assert frames[1][1][:2] == struct.pack("!H", 1000)


async def test_an_echo_just_before_a_bad_frame_in_one_read_is_not_lost(server):
    """Item 11: the message was whole and valid; the bad frame after it closes 1002 after it."""
    client = await RawClient.connect(server.port, path="/echo")
    await client.stream.send_all(masked_frame(0x1, b"kept") + masked_frame(0x1, b"x", rsv=0x40))
    frames = await frames_until_close(client)
    await client.aclose()
    assert frames[0] == (0x1, b"kept"), frames
    assert frames[-1][0] == 0x8 and frames[-1][1][:2] == struct.pack("!H", 1002), frames


async def test_pongs_and_replies_before_a_protocol_error_are_sent_first(server):
    client = await RawClient.connect(server.port)
    await raw_welcome(client)
    subscribe = masked_frame(0x1, b'{"type": "subscribe", "id": 1, "channel": "a"}')
    await client.stream.send_all(subscribe + masked_frame(0x9, b"p") + masked_frame(0x3, b"reserved opcode"))
    frames = await frames_until_close(client)
    await client.aclose()
    assert [opcode for opcode, _ in frames] == [0x1, 0xA, 0x8], frames
    assert b'"subscribed"' in frames[0][1]
    assert frames[-1][1][:2] == struct.pack("!H", 1002)
