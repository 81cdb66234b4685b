"""Issue 12, item 3: history amplification. Sixteen 1 MiB publishes of ``[{},{},...]`` to a
channel nobody reads held 26 bytes of RSS per byte sent, because history counted the bytes
sent while a decoded ``{}`` takes 72. History now counts what the decoded value holds."""

from __future__ import annotations

import sys
import tracemalloc
from typing import Any

import pytest

from .wsclient import connect

pytestmark = pytest.mark.usefixtures("server_errors")

BOUND = 4 * 2**20


def deep_size(value: Any) -> int:
    """Memory held by ``value``, counted as CPython reports it (each reachable object)."""
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        if item is None or type(item) is bool:
            continue
        size += sys.getsizeof(item)
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return size


async def test_history_of_small_containers_is_bounded_by_their_memory(start_server):
    running = await start_server(history_bytes=BOUND, history_size=1024)
    items = 64 * 1024 // 3  # "{}," each: a 64 KiB payload, 1.5 MiB decoded
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with connect(running.url) as client:
            for _ in range(12):  # 768 KiB sent: far under the bound as bytes sent, 18 MiB decoded
                await client.publish("h", [{} for _ in range(items)])
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    broadcast = running.server.hub.broadcast("h")
    assert broadcast is not None and broadcast.bytes <= BOUND  # its own accounting
    held = [broadcast.after(seq - 1, 1)[0] for seq in range(broadcast.oldest, broadcast.head + 1)]
    real = sum(deep_size(message.data) for message in held)
    newest = deep_size(held[-1].data)
    assert real <= BOUND + newest, f"history holds {real} bytes of objects for a {BOUND}-byte bound"
    assert broadcast.head == 12 and len(held) < 12
    assert growth <= 3 * BOUND, f"traced memory grew {growth} bytes for a {BOUND}-byte history"
