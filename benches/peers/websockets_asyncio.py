"""Peer server: the `websockets` library on asyncio, fan-out with `broadcast()`.

Speaks the minimal subset of wsnursery protocol v1 that the side-by-side benches use:
`/echo` echoes every message verbatim; `/` sends `welcome`, answers `subscribe` and
`publish` (JSON text frames). A publish is encoded once and handed to
`websockets.asyncio.server.broadcast()` for every subscriber of the channel.

    python benches/peers/websockets_asyncio.py --host 127.0.0.1 --port 0

prints `READY <port>` on stdout once listening; stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import websockets
from peer_protocol import HEARTBEAT, MAX_SIZE, Registry, welcome
from websockets.asyncio.server import ServerConnection, broadcast, serve

WELCOME = welcome(f"peer-websockets-asyncio/{websockets.__version__}")
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
                broadcast(*fanout)
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
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.cancel)
    # compression=None: the wsnursery protocol has no permessage-deflate; the bench client
    # never offers it either, so this only makes the setting explicit.
    async with serve(
        handler, host, port, compression=None, max_size=MAX_SIZE, ping_interval=HEARTBEAT, ping_timeout=HEARTBEAT
    ) as server:
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        try:
            await stop
        except asyncio.CancelledError:
            pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    asyncio.run(main(args.host, args.port))
    sys.exit(0)
