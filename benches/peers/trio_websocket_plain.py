"""Peer server: plain trio-websocket (`trio_websocket.serve_websocket`), `send_message` per subscriber.

Speaks the minimal subset of wsnursery protocol v1 that the side-by-side benches use:
`/echo` echoes every message verbatim; `/` sends `welcome`, answers `subscribe` and
`publish` (JSON text frames). A publish is encoded once and sent with
`await ws.send_message(frame)` to each subscriber in turn. trio-websocket has no built-in
keepalive, so each connection runs a small heartbeat task (ping every 20 s, close 4000 when
the pong does not come back within 20 s).

    python benches/peers/trio_websocket_plain.py --host 127.0.0.1 --port 0

prints `READY <port>` on stdout once listening; stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys

import trio
from peer_protocol import HEARTBEAT, MAX_SIZE, Registry, welcome
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

WELCOME = welcome("peer-trio-websocket")
registry = Registry()


async def heartbeat(ws: WebSocketConnection) -> None:
    try:
        while True:
            await trio.sleep(HEARTBEAT)
            with trio.move_on_after(HEARTBEAT) as timeout:
                await ws.ping()
            if timeout.cancelled_caught:
                await ws.aclose(4000, "heartbeat timeout")
                return
    except ConnectionClosed:
        pass


async def echo(ws: WebSocketConnection) -> None:
    while True:
        await ws.send_message(await ws.get_message())  # str stays text, bytes stay binary


async def publish(subscribers: list[WebSocketConnection], frame: str) -> None:
    for sub in subscribers:
        try:
            await sub.send_message(frame)
        except ConnectionClosed:
            pass


async def pubsub(ws: WebSocketConnection) -> None:
    await ws.send_message(WELCOME)
    try:
        while True:
            reply, fanout = registry.handle(ws, await ws.get_message())
            if fanout is not None:
                await publish(*fanout)
            await ws.send_message(reply)
    finally:
        registry.drop(ws)


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat, ws)
        try:
            await (echo(ws) if request.path == "/echo" else pubsub(ws))
        except ConnectionClosed:
            pass
        nursery.cancel_scope.cancel()


async def main(host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(serve_websocket, handler, host, port, None, max_message_size=MAX_SIZE)
            )
            print(f"READY {server.port}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    trio.run(main, args.host, args.port)
    sys.exit(0)
