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
import json
import signal
import sys
import time

import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve

HEARTBEAT = 20.0
MAX_SIZE = 2**20
EPOCH = "p"
WELCOME = json.dumps(
    {
        "type": "welcome",
        "protocol": 1,
        "server": f"peer-websockets-asyncio/{websockets.__version__}",
        "heartbeat": HEARTBEAT,
        "max_message_size": MAX_SIZE,
    }
)
dumps = json.JSONEncoder(separators=(",", ":")).encode

subscribers: dict[str, set[ServerConnection]] = {}
seqs: dict[str, int] = {}


async def echo(ws: ServerConnection) -> None:
    async for msg in ws:  # str stays text, bytes stay binary
        await ws.send(msg)


async def pubsub(ws: ServerConnection) -> None:
    await ws.send(WELCOME)
    mine: set[str] = set()
    try:
        async for raw in ws:
            try:
                req = json.loads(raw)
                kind, rid = req.get("type"), req.get("id")
            except (ValueError, AttributeError):
                await ws.send(dumps({"type": "error", "code": "bad_request", "reason": "not a JSON object"}))
                continue
            if kind == "publish":
                ch = req["channel"]
                seq = seqs[ch] = seqs.get(ch, 0) + 1
                frame = dumps(
                    {"type": "message", "channel": ch, "epoch": EPOCH, "seq": seq,
                     "data": req.get("data"), "ts": int(time.time() * 1000)}
                )
                broadcast(subscribers.get(ch, ()), frame)
                await ws.send(dumps({"type": "published", "id": rid, "channel": ch, "epoch": EPOCH, "seq": seq}))
            elif kind == "subscribe":
                ch = req["channel"]
                subscribers.setdefault(ch, set()).add(ws)
                mine.add(ch)
                await ws.send(dumps({"type": "subscribed", "id": rid, "channel": ch, "epoch": EPOCH,
                                     "seq": seqs.get(ch, 0)}))
            elif kind == "unsubscribe":
                ch = req["channel"]
                subscribers.get(ch, set()).discard(ws)
                mine.discard(ch)
                await ws.send(dumps({"type": "unsubscribed", "id": rid, "channel": ch}))
            else:
                await ws.send(dumps({"type": "error", "id": rid, "code": "unknown_type", "reason": str(kind)}))
    finally:
        for ch in mine:
            subscribers[ch].discard(ws)


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
    async with serve(handler, host, port, compression=None, max_size=MAX_SIZE,
                     ping_interval=HEARTBEAT, ping_timeout=HEARTBEAT) as server:
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
