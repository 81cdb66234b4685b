"""permessage-deflate on vs off, against our server only, in one run (ratios, not absolutes).

Three measurements, each against a fresh ``python -m wsnursery serve`` process started with
``--compression on`` and then ``--compression off`` (the clients offer permessage-deflate in
both runs; with ``off`` the server declines it):

- fan-out: 1 publisher -> ``--subs`` subscribers on one channel, ``--messages`` messages of
  about 1 KiB of JSON data each (seeded, order-book-like records), published in batches of 20
  and at most 2 batches ahead of the slowest subscriber. Deliveries/s, bytes on the wire per
  delivery (all bytes the subscribers received during the run / deliveries), and the server's
  CPU time per delivery. Subscribers count frames without inflating them (the client's cost
  stays the same on and off); one subscriber inflates and checks every message.
- echo: ``--echo-conns`` connections on /echo, one 1 KiB JSON message in flight each, for
  ``--duration`` seconds: round trips/s and server CPU per round trip.
- idle memory: ``--idle`` connections on / (each got its welcome) and the server's RSS
  growth per connection; with compression, also after every connection sent one compressed
  message while keeping its deflate context (this server runs with
  ``--compression-client-context on``, so it then holds an inflater per connection: a
  32 KiB window plus zlib's state; by default clients are told not to keep context).

    PYTHONPATH=$PWD python benches/compression.py [--subs 1000 --messages 400 --idle 1000]

Everything talks to 127.0.0.1 only and every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import zlib
from pathlib import Path

import psutil

from harness import rawws
from harness.machine import describe, header_lines
from harness.servers import HOST, ServerProcess, raise_nofile_limit, wsnursery_argv

CHANNEL = "bench.zip"
BATCH = 20
WINDOW = 2


def kib_of_json(seed: int) -> dict:
    """About 1 KiB of JSON: a small order-book update, values drawn from a seeded generator."""
    rng = random.Random(seed)
    levels = [
        {"price": round(100 + rng.random() * 5, 2), "size": rng.randint(1, 5000), "orders": rng.randint(1, 40)}
        for _ in range(20)
    ]
    return {
        "symbol": rng.choice(["ACME", "GLOBX", "INITECH", "UMBRL"]),
        "venue": "XNYS",
        "seq": seed,
        "bids": levels[:10],
        "asks": levels[10:],
        "status": "open",
        "halted": False,
    }


def frame_masked(first: int, payload: bytes) -> bytes:
    key = random.getrandbits(32).to_bytes(4, "little")
    n = len(payload)
    head = bytes((first, 0x80 | n)) if n < 126 else bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + key + rawws._mask(payload, key)


class Server:
    def __init__(self, compression: str, *extra: str) -> None:
        argv = wsnursery_argv(
            "--compression", compression, *extra, "--max-connections", "20000", "--heartbeat-interval", "300"
        )
        self.process = ServerProcess("wsnursery", argv).start()
        self.port = self.process.port
        self.ps = psutil.Process(self.process.pid)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        self.process.stop()


async def open_many(count: int, factory, concurrency: int = 100) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            return await factory()

    return await asyncio.gather(*(one() for _ in range(count)))


async def fanout(server: Server, subs: int, messages: int) -> dict:
    state = {"delivered": 0, "target": 0, "checked": 0}
    reached = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Sub:
        def __init__(self, checker: bool) -> None:
            self.checker = checker
            self.subscribed = loop.create_future()
            self.count = 0
            self.ws: rawws.RawWS | None = None

        def on_message(self, payload: bytes, opcode: int) -> None:
            if not self.subscribed.done():
                if b'"subscribed"' in payload:
                    self.subscribed.set_result(None)
                return
            self.count += 1
            if self.checker:
                message = json.loads(payload)
                assert message["type"] == "message" and message["data"]["seq"] == self.count, message
                state["checked"] += 1
            state["delivered"] += 1
            if state["delivered"] >= state["target"]:
                reached.set()

    async def open_sub(index: int) -> Sub:
        sub = Sub(checker=index == 0)
        sub.ws = await rawws.connect(HOST, server.port, "/", sub.on_message, compression=True, inflate=sub.checker)
        sub.ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": CHANNEL}).encode())
        await asyncio.wait_for(sub.subscribed, 30)
        return sub

    gate = asyncio.Semaphore(100)

    async def guarded(index: int) -> Sub:
        async with gate:
            return await open_sub(index)

    all_subs = await asyncio.gather(*(guarded(i) for i in range(subs)))
    publisher = await rawws.connect(HOST, server.port, "/", lambda payload, opcode: None, compression=True)
    bodies = [
        json.dumps({"type": "publish", "id": i, "channel": CHANNEL, "data": kib_of_json(i)}).encode()
        for i in range(1, messages + 1)
    ]
    compressed = all_subs[0].ws.compressed
    bytes_before = sum(sub.ws.bytes_in for sub in all_subs)
    cpu_before, started = server.cpu(), time.perf_counter()
    sent = 0
    while sent < messages:
        batch = bodies[sent : sent + BATCH]
        publisher.send_many(batch)
        sent += len(batch)
        state["target"] = subs * max(0, sent - WINDOW * BATCH) if sent < messages else subs * messages
        if state["delivered"] < state["target"]:
            reached.clear()
            await asyncio.wait_for(reached.wait(), 60)
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu_before
    wire = sum(sub.ws.bytes_in for sub in all_subs) - bytes_before
    deliveries = state["delivered"]
    assert deliveries == subs * messages and state["checked"] == messages, (deliveries, state["checked"])
    for ws in [publisher] + [sub.ws for sub in all_subs]:
        ws.abort()
    return {
        "negotiated": compressed,
        "deliveries": deliveries,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(deliveries / elapsed),
        "wire_bytes_per_delivery": round(wire / deliveries, 1),
        "server_cpu_us_per_delivery": round(cpu / deliveries * 1e6, 2),
        "plain_payload_bytes": len(json.dumps(kib_of_json(1)).encode()),
    }


async def echo(server: Server, conns: int, duration: float) -> dict:
    body = json.dumps({"type": "echo", "data": kib_of_json(7)}).encode()
    clients = await open_many(conns, lambda: rawws.connect(HOST, server.port, "/echo", compression=True))
    negotiated = clients[0].compressed
    deadline = time.perf_counter() + duration
    counts = [0] * conns

    async def run(index: int, ws: rawws.RawWS) -> None:
        loop = asyncio.get_running_loop()
        while time.perf_counter() < deadline:
            ws.waiter = loop.create_future()
            ws.send(body)
            got = await asyncio.wait_for(ws.waiter, 30)
            assert got == body
            counts[index] += 1

    cpu_before, started = server.cpu(), time.perf_counter()
    await asyncio.gather(*(run(i, ws) for i, ws in enumerate(clients)))
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu_before
    for ws in clients:
        ws.abort()
    total = sum(counts)
    return {
        "negotiated": negotiated,
        "round_trips_per_s": round(total / elapsed),
        "server_cpu_us_per_round_trip": round(cpu / total * 1e6, 1),
        "message_bytes": len(body),
    }


async def idle(server: Server, count: int, offer: bool) -> dict:
    warm = await open_many(20, lambda: rawws.connect(HOST, server.port, "/", lambda p, o: None, compression=offer))
    await asyncio.sleep(1.0)  # settle: a measurement pause, not synchronisation
    base = server.rss()
    clients = await open_many(
        count, lambda: rawws.connect(HOST, server.port, "/", lambda p, o: None, compression=offer)
    )
    await asyncio.sleep(1.0)
    result = {"negotiated": clients[0].compressed, "bytes_per_idle_connection": round((server.rss() - base) / count)}
    if clients[0].compressed:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        request = json.dumps({"type": "unsubscribe", "id": 1, "channel": "none"}).encode()
        data = (compressor.compress(request) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        for ws in clients:
            ws.transport.write(frame_masked(0xC1, data))  # FIN, RSV1, text; the client keeps its context
        await asyncio.sleep(2.0)
        result["bytes_per_connection_with_context"] = round((server.rss() - base) / count)
    for ws in warm + clients:
        ws.abort()
    return result


async def measure(args: argparse.Namespace, compression: str) -> dict:
    results = {}
    for name, run, extra in (
        ("fanout", lambda s: fanout(s, args.subs, args.messages), ()),
        ("echo", lambda s: echo(s, args.echo_conns, args.duration), ()),
        ("idle", lambda s: idle(s, args.idle, True), ("--compression-client-context", "on")),
    ):
        server = Server(compression, *extra)
        try:
            results[name] = await asyncio.wait_for(run(server), 300)
        finally:
            server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--echo-conns", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    raise_nofile_limit()
    print("\n".join(header_lines(describe())))
    results = {mode: asyncio.run(measure(args, mode)) for mode in ("on", "off")}
    on, off = results["on"], results["off"]
    print(
        f"\n1 KiB JSON data ({on['fanout']['plain_payload_bytes']} B), fan-out 1 -> {args.subs}, "
        f"{args.messages} messages; echo {args.echo_conns} conns x {args.duration:g} s; idle {args.idle} conns\n"
    )
    print("| measure | compression on | off | on / off |\n|---|---|---|---|")
    rows = [
        ("fan-out deliveries/s", "fanout", "deliveries_per_s"),
        ("fan-out wire bytes per delivery", "fanout", "wire_bytes_per_delivery"),
        ("fan-out server CPU us per delivery", "fanout", "server_cpu_us_per_delivery"),
        ("echo round trips/s", "echo", "round_trips_per_s"),
        ("echo server CPU us per round trip", "echo", "server_cpu_us_per_round_trip"),
        ("server RSS per idle connection (B)", "idle", "bytes_per_idle_connection"),
    ]
    for label, scenario, key in rows:
        a, b = on[scenario][key], off[scenario][key]
        print(f"| {label} | {a} | {b} | {a / b if b else float('nan'):.2f} |")
    context = on["idle"].get("bytes_per_connection_with_context")
    print(f"| RSS per connection after a compressed message, client keeps its context (B) | {context} | - | - |")
    print(f"\nnegotiated: on {[on[s]['negotiated'] for s in on]}, off {[off[s]['negotiated'] for s in off]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
