"""Peer server: the `websockets` library on Trio (`websockets.trio`), fan-out with its `broadcast()`.

Speaks the minimal subset of wsnursery protocol v1 that the side-by-side benches use:
`/echo` echoes every message verbatim; `/` sends `welcome`, answers `subscribe` and
`publish` (JSON text frames). A publish is encoded once and handed to
`websockets.trio.connection.broadcast()` (exported as `websockets.trio.server.broadcast`).

    python benches/peers/websockets_trio.py --host 127.0.0.1 --port 0

prints `READY <port>` on stdout once listening; stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys

import trio
import websockets
from peer_protocol import HEARTBEAT, MAX_SIZE, Registry, welcome
from websockets.trio.server import ServerConnection, broadcast, serve

WELCOME = welcome(f"peer-websockets-trio/{websockets.__version__}")
registry = Registry()


async def echo(ws: ServerConnection) -> None:
    async for msg in ws:  # str stays text, bytes stay binary
        await ws.send(msg)


async def pubsub(ws: ServerConnection) -> None:
    await ws.send(WELCOME)
    try:
        async for raw in ws:
            reply, fanout = registry.handle(ws, raw)
            if fanout is not None:
                await broadcast(*fanout)
            await ws.send(reply)
    finally:
        registry.drop(ws)


async def handler(ws: ServerConnection) -> None:
    try:
        if ws.request.path == "/echo":
            await echo(ws)
        else:
            await pubsub(ws)
    except websockets.ConnectionClosed:
        pass


async def main(host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            # compression=None: the wsnursery protocol has no permessage-deflate; the bench
            # client never offers it either, so this only makes the setting explicit.
            server = await nursery.start(
                functools.partial(
                    serve,
                    handler,
                    port,
                    host=host,
                    compression=None,
                    max_size=MAX_SIZE,
                    ping_interval=HEARTBEAT,
                    ping_timeout=HEARTBEAT,
                )
            )
            print(f"READY {server.listeners[0].socket.getsockname()[1]}", flush=True)
            async for _ in signals:
                break
            with trio.move_on_after(10):
                await server.aclose()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    trio.run(main, args.host, args.port)
    sys.exit(0)
