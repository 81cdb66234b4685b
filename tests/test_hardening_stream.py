"""The server stream counts exactly what a cancelled send wrote, so no frame is left half
written behind a close frame, and a close frame can overtake queued whole frames (issue 12,
item 12's mechanics; the slow-consumer test drives it end to end)."""

from __future__ import annotations

import trio
import trio.testing

from wsnursery.stream import ServerStream, close_frame

FRAME = 1000


async def pair() -> tuple[ServerStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return ServerStream(trio.SocketStream(a)), trio.SocketStream(b)


async def read_all(peer: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < size:
            data += await peer.receive_some(1 << 20)
    return bytes(data)


async def send_until_blocked(stream: ServerStream, parts: list[bytes]) -> None:
    """Start ``send_all`` and cancel it once it waits on the full socket."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"".join(parts), parts)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def frames(count: int) -> tuple[bytes, list[bytes]]:
    parts = [bytes([index % 251]) * FRAME for index in range(count)]
    return b"".join(parts), parts


async def test_a_cancelled_send_keeps_exactly_its_unsent_rest():
    stream, peer = await pair()
    data, parts = frames(8192)  # 8 MB: far more than the socket buffers take
    await send_until_blocked(stream, parts)
    assert stream.backlog is not None and 0 < len(stream.backlog) < len(data)
    assert stream.bytes_out + len(stream.backlog) == len(data)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"tail")
        received = await read_all(peer, len(data) + 4)
    assert received == data + b"tail"  # every byte once, in order, nothing half written


async def test_a_close_frame_overtakes_whole_frames_but_never_cuts_one():
    stream, peer = await pair()
    data, parts = frames(8192)
    await send_until_blocked(stream, parts)
    written = stream.bytes_out
    dropped = stream.cut_backlog()
    assert dropped > 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_close_frame, 4008, "slow consumer")
        closing = close_frame(4008, "slow consumer")
        kept = len(data) - dropped
        received = await read_all(peer, kept + len(closing))
    assert kept % FRAME == 0 and kept >= written  # the frame under way was finished
    assert received == data[:kept] + closing
