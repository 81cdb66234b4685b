"""Which client receives many small frames fastest? (`python -m harness.bench compare`)

A "blaster" process (raw asyncio, pre-built frames, no per-frame work) streams N unmasked text
frames shaped like our `message` frame to one connection, then a close frame. Each client
implementation receives them in this process; we time from connect to the moment the last
frame has been handed to the application and report frames/s and the client's CPU per frame. The blaster runs in its own process so
it is never the limit of a client that is slower than memcpy.

Clients compared (all on asyncio, one connection):
  rawws                   harness/rawws.py (what the load clients use)
  websockets              websockets.asyncio.client, `async for message in ws` (decoded str)
  websockets-bytes        same, `await ws.recv(decode=False)` (no UTF-8 decode)
  wsproto                 wsproto.WSConnection on an asyncio.Protocol
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import multiprocessing as mp
import statistics
import time

import psutil

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- blaster ---------------------------------------------------------------------------------
def _frame(payload: bytes, opcode: int = 1) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x80 | opcode, n]) + payload
    if n < 65536:
        return bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big") + payload


def message_frame(size: int) -> bytes:
    data = "x" * size
    return (
        b'{"type":"message","channel":"bench.fanout","epoch":"p","seq":123456,"data":"%s","ts":1700000000000}'
        % data.encode()
    )


async def _blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frames: int, size: int) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    key = b""
    for line in head.split(b"\r\n"):
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"sec-websocket-key":
            key = v.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    chunk_n = 1000
    chunk = _frame(message_frame(size)) * chunk_n
    sent = 0
    while sent < frames:
        k = min(chunk_n, frames - sent)
        writer.write(chunk if k == chunk_n else _frame(message_frame(size)) * k)
        sent += k
        await writer.drain()
    writer.write(_frame((1000).to_bytes(2, "big"), 8))
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            await reader.read(65536)  # the client's close frame (or its FIN)
    except (TimeoutError, ConnectionError):
        pass
    writer.close()  # the server closes TCP first (RFC 6455 7.1.1)


def _blaster_proc(q, frames: int, size: int, conns: int) -> None:
    async def main():
        done = asyncio.Event()
        left = [conns]

        async def handle(r, w):
            try:
                await _blast(r, w, frames, size)
            finally:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        q.put(server.sockets[0].getsockname()[1])
        async with asyncio.timeout(600):
            await done.wait()
        server.close()

    asyncio.run(main())


# -- clients ---------------------------------------------------------------------------------
async def c_rawws(port: int) -> int:
    from harness.rawws import connect

    count = 0

    def cb(payload, op):
        nonlocal count
        count += 1

    ws = await connect("127.0.0.1", port, "/", cb)
    await ws.close_received
    t_last = time.perf_counter()
    await ws.close(timeout=2)
    return count, t_last


async def c_websockets(port: int) -> int:
    from websockets.asyncio.client import connect

    count = 0
    async with connect(f"ws://127.0.0.1:{port}/", compression=None, ping_interval=None) as ws:
        async for _ in ws:
            count += 1
        t_last = time.perf_counter()
    return count, t_last


async def c_websockets_bytes(port: int) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedOK

    count = 0
    async with connect(f"ws://127.0.0.1:{port}/", compression=None, ping_interval=None) as ws:
        try:
            while True:
                await ws.recv(decode=False)
                count += 1
        except ConnectionClosedOK:
            t_last = time.perf_counter()
    return count, t_last


async def c_wsproto(port: int) -> int:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Message, Request

    loop = asyncio.get_running_loop()
    done = loop.create_future()

    class P(asyncio.Protocol):
        def __init__(self):
            self.ws = WSConnection(ConnectionType.CLIENT)
            self.count = 0

        def connection_made(self, transport):
            self.t = transport
            transport.write(self.ws.send(Request(host=f"127.0.0.1:{port}", target="/")))

        def data_received(self, data):
            self.ws.receive_data(data)
            for ev in self.ws.events():
                if isinstance(ev, Message):
                    if ev.message_finished:
                        self.count += 1
                elif isinstance(ev, CloseConnection):
                    t_last = time.perf_counter()
                    self.t.write(self.ws.send(ev.response()))
                    self.t.close()
                    if not done.done():
                        done.set_result((self.count, t_last))
                elif isinstance(ev, AcceptConnection):
                    pass

        def connection_lost(self, exc):
            if not done.done():
                done.set_result((self.count, time.perf_counter()))

    await loop.create_connection(P, "127.0.0.1", port)
    return await done


CLIENTS = {"rawws": c_rawws, "websockets": c_websockets, "websockets-bytes": c_websockets_bytes, "wsproto": c_wsproto}


def measure(name: str, frames: int, size: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    blaster = ctx.Process(target=_blaster_proc, args=(q, frames, size, 1), daemon=True)
    blaster.start()
    try:
        port = q.get(timeout=20)
        me = psutil.Process()
        c0 = sum(me.cpu_times()[:2])
        t0 = time.perf_counter()
        got, t_last = asyncio.run(asyncio.wait_for(CLIENTS[name](port), 300))
        wall = t_last - t0
        cpu = sum(me.cpu_times()[:2]) - c0  # includes the (short) closing handshake
    finally:
        blaster.join(15)
        if blaster.is_alive():
            blaster.terminate()
    return {
        "client": name,
        "frames": got,
        "wall_s": wall,
        "frames_per_s": got / wall,
        "cpu_s": cpu,
        "us_cpu_per_frame": cpu / max(got, 1) * 1e6,
    }


def main(frames: int, size: int, repeat: int) -> list[dict]:
    from harness import machine

    info = machine.describe()
    print("\n".join(machine.header_lines(info)))
    fl = len(_frame(message_frame(size)))
    print(
        f"Settings: {frames} text frames of {fl} B on the wire (a `message` frame with {size} B data), "
        f"one connection, blaster in its own process, best and median of {repeat} runs\n"
    )
    print(f"{'client':<18} {'frames/s (best)':>16} {'frames/s (median)':>18} {'CPU us/frame':>13}")
    out = []
    for name in CLIENTS:
        runs = [measure(name, frames, size) for _ in range(repeat)]
        bad = [r for r in runs if r["frames"] != frames]
        rates = [r["frames_per_s"] for r in runs]
        best = max(runs, key=lambda r: r["frames_per_s"])
        print(
            f"{name:<18} {max(rates):>16,.0f} {statistics.median(rates):>18,.0f} {best['us_cpu_per_frame']:>13.2f}"
            + (f"   (!) {len(bad)} runs lost frames" if bad else ""),
            flush=True,
        )
        out.append({"client": name, "runs": runs})
    return out
