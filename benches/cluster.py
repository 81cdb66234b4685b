"""The Redis engine against the memory engine, in one run, as ratios (issue 14).

    python benches/cluster.py [--quick] [--redis redis://127.0.0.1:6379/15] [--json FILE]
    python benches/cluster.py --workers-only [--connections 200 --channels 50 --seconds 10] [--json FILE]

Scenarios, each against a fresh server process per engine:
- ``fanout``: 1 publisher -> N subscribers on one channel of one node; the publisher keeps a
  window of publishes in flight. Deliveries/s (N x messages / time from the first publish to
  the last delivery) and the server's CPU per delivery (its user+system time over the run).
  Run with 1 and 32 publishes in flight on one connection, and with many publishing
  connections, one publish in flight each.
- ``publish``: publishes/s through one node with no subscribers (a window in flight).
- ``crossnode`` (Redis only; memory for reference on one node): a subscriber on node B, a
  publisher on node A, one message at a time; latency from publish sent to message received
  on B, p50/p99.

Cores: the bench process (all clients) is pinned to CPU 1, every server process to CPU 0;
Redis runs wherever the system put it (it is not ours to pin), so on this 2-core machine it
shares both. The report prints the machine, the settings and the loads. Keys live under a
prefix of their own (``?prefix=``) and are deleted at the end.

``--workers-only`` runs instead ``--workers 2`` against one process (Redis engine, and the
memory engine for reference) on a server-bound chat scenario: see ``harness/workers_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path

from hdrh.histogram import HdrHistogram

from harness import rawws, workers_bench
from harness.machine import describe, header_lines, pin, process_cpu
from harness.servers import HOST, ServerProcess

_TYPE = re.compile(rb'"type"\s*:\s*"(\w+)"')
_ID = re.compile(rb'"id"\s*:\s*(\d+)')
_T = re.compile(rb'"t"\s*:\s*(\d+)')
SERVER_CPU, CLIENT_CPU = 0, 1


class BenchError(RuntimeError):
    """A run that did not finish (the message says how far it got)."""


def _server(engine: str, prefix: str) -> ServerProcess:
    url = engine if engine == "memory" else f"{engine}?prefix={prefix}"
    argv = [
        sys.executable,
        "-m",
        "wsnursery",
        "serve",
        "--host",
        HOST,
        "--port",
        "0",
        "--engine",
        url,
        "--log-level",
        "info",
        "--history-size",
        "8192",
        "--outbound-queue-size",
        "8192",
        "--max-unacked",
        "8192",
    ]
    return ServerProcess(f"wsnursery-{engine.split(':')[0]}", argv)


def _started(server: ServerProcess) -> ServerProcess:
    pin(server.pid, SERVER_CPU)
    return server


class Subscriber:
    def __init__(self, expected: int, done: asyncio.Event, counter: list[int], latency: HdrHistogram | None = None):
        self.expected, self.done, self.counter, self.latency = expected, done, counter, latency
        self.received = 0
        self.subscribed = asyncio.get_running_loop().create_future()

    def on_message(self, payload: bytes, opcode: int) -> None:
        kind = _TYPE.search(payload)
        if kind is None:
            return
        if kind.group(1) == b"message":
            self.received += 1
            if self.latency is not None and (t := _T.search(payload)):
                self.latency.record_value(max(1, (time.monotonic_ns() - int(t.group(1))) // 1000))
            if self.received == self.expected:
                self.counter[0] += 1
                if self.counter[0] == self.counter[1]:
                    self.done.set()
        elif kind.group(1) == b"subscribed" and not self.subscribed.done():
            self.subscribed.set_result(None)


class Publisher:
    """Publishes with a window of requests in flight; counts ``published`` replies."""

    def __init__(self, port: int, channel: str, total: int, window: int, size: int, stamp: bool = False):
        self.port, self.channel, self.total, self.window, self.stamp = port, channel, total, window, stamp
        self.filler = "x" * size
        self.sent = self.confirmed = self.errors = 0
        self.finished = asyncio.Event()
        self.ws: rawws.RawWS | None = None

    async def start(self) -> None:
        self.ws = await rawws.connect(HOST, self.port, "/", self.on_message)

    def _publish(self) -> None:
        self.sent += 1
        data = {"t": time.monotonic_ns(), "f": self.filler} if self.stamp else self.filler
        frame = {"type": "publish", "id": self.sent, "channel": self.channel, "data": data}
        assert self.ws is not None
        self.ws.send(json.dumps(frame, separators=(",", ":")).encode())

    def go(self) -> None:
        while self.sent < min(self.total, self.window):
            self._publish()

    def on_message(self, payload: bytes, opcode: int) -> None:
        kind = _TYPE.search(payload)
        if kind is None or kind.group(1) not in (b"published", b"error"):
            return
        self.confirmed += 1
        self.errors += kind.group(1) == b"error"
        if self.sent < self.total:
            self._publish()
        elif self.confirmed == self.total:
            self.finished.set()


async def _subscribers(port: int, channel: str, count: int, expected: int, latency=None):
    done = asyncio.Event()
    counter = [0, count]
    subs = [Subscriber(expected, done, counter, latency) for _ in range(count)]
    conns = []
    for i in range(0, count, 100):
        batch = subs[i : i + 100]
        conns += await asyncio.gather(*(rawws.connect(HOST, port, "/", s.on_message) for s in batch))
    frame = json.dumps({"type": "subscribe", "id": 1, "channel": channel}).encode()
    for conn in conns:
        conn.send(frame)
    await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in subs)), 60)
    return subs, conns, done


async def fanout(
    port: int, pid: int, subscribers: int, messages: int, window: int, size: int, publishers: int = 1
) -> dict:
    """``publishers`` connections publish ``messages`` in all, each with ``window`` in flight."""
    channel = f"bench.fan.{secrets.token_hex(3)}"
    subs, conns, done = await _subscribers(port, channel, subscribers, messages)
    shares = [messages // publishers + (i < messages % publishers) for i in range(publishers)]
    senders = [Publisher(port, channel, share, window, size) for share in shares]
    for sender in senders:
        await sender.start()
    cpu0, t0 = process_cpu(pid), time.perf_counter()
    for sender in senders:
        sender.go()
    try:
        await asyncio.wait_for(done.wait(), 300)
    except TimeoutError:
        received = sorted(sub.received for sub in subs)
        closes = sorted({conn.close_code for conn in conns if conn.close_code is not None})
        raise BenchError(
            f"fan-out timed out: subscribers received {received[0]}..{received[-1]} of {messages}, "
            f"close codes {closes}, {sum(s.confirmed for s in senders)} publishes confirmed"
        ) from None
    elapsed, cpu = time.perf_counter() - t0, process_cpu(pid) - cpu0
    deliveries = subscribers * messages
    for conn in [*conns, *(sender.ws for sender in senders)]:
        conn.abort()
    return {
        "deliveries_per_s": deliveries / elapsed,
        "server_cpu_us_per_delivery": cpu / deliveries * 1e6,
        "elapsed_s": elapsed,
        "publish_errors": sum(sender.errors for sender in senders),
    }


async def publish_rate(port: int, pid: int, messages: int, window: int, size: int) -> dict:
    publisher = Publisher(port, f"bench.pub.{secrets.token_hex(3)}", messages, window, size)
    await publisher.start()
    cpu0, t0 = process_cpu(pid), time.perf_counter()
    publisher.go()
    await asyncio.wait_for(publisher.finished.wait(), 300)
    elapsed, cpu = time.perf_counter() - t0, process_cpu(pid) - cpu0
    publisher.ws.abort()
    return {
        "publishes_per_s": messages / elapsed,
        "server_cpu_us_per_publish": cpu / messages * 1e6,
        "errors": publisher.errors,
    }


async def latency(pub_port: int, sub_port: int, messages: int, size: int) -> dict:
    histogram = HdrHistogram(1, 60_000_000, 3)
    channel = f"bench.lat.{secrets.token_hex(3)}"
    _, conns, done = await _subscribers(sub_port, channel, 1, messages, histogram)
    publisher = Publisher(pub_port, channel, messages, 1, size, stamp=True)
    await publisher.start()
    publisher.go()
    await asyncio.wait_for(done.wait(), 300)
    for conn in [*conns, publisher.ws]:
        conn.abort()
    return {
        "p50_ms": histogram.get_value_at_percentile(50) / 1000,
        "p99_ms": histogram.get_value_at_percentile(99) / 1000,
        "max_ms": histogram.get_max_value() / 1000,
    }


def run(args: argparse.Namespace) -> dict:
    pin(os.getpid(), CLIENT_CPU)
    prefix = f"wsnbench:{secrets.token_hex(4)}:"
    results: dict[str, dict] = {}
    try:
        for engine in ("memory", args.redis):
            name = "memory" if engine == "memory" else "redis"
            with _server(engine, prefix) as server:
                _started(server)
                for window in args.windows:
                    results[f"fanout/window{window}/{name}"] = asyncio.run(
                        fanout(server.port, server.pid, args.subscribers, args.messages, window, args.size)
                    )
                results[f"fanout/{args.publishers}publishers/{name}"] = asyncio.run(
                    fanout(server.port, server.pid, args.subscribers, args.messages, 1, args.size, args.publishers)
                )
                results[f"publish/{name}"] = asyncio.run(
                    publish_rate(server.port, server.pid, args.publishes, args.window, args.size)
                )
                if engine == "memory":
                    results["latency/memory-one-node"] = asyncio.run(
                        latency(server.port, server.port, args.latency_messages, args.size)
                    )
        with _server(args.redis, prefix) as a, _server(args.redis, prefix) as b:
            _started(a), _started(b)
            results["latency/redis-one-node"] = asyncio.run(latency(a.port, a.port, args.latency_messages, args.size))
            results["latency/redis-cross-node"] = asyncio.run(latency(a.port, b.port, args.latency_messages, args.size))
    finally:
        _cleanup(args.redis, prefix)
    return results


def _cleanup(url: str, prefix: str) -> None:
    import trio

    from harness.nodes import delete_keys

    trio.run(delete_keys, url, prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200, help="messages published in the fan-out run")
    parser.add_argument("--publishes", type=int, default=5000, help="publishes in the publish-rate run")
    parser.add_argument("--latency-messages", type=int, default=1000)
    parser.add_argument("--window", type=int, default=32, help="publishes in flight in the publish-rate run")
    parser.add_argument(
        "--windows",
        type=lambda text: [int(w) for w in text.split(",")],
        default=[1, 32],
        help="publishes in flight in the fan-out runs, comma-separated (default 1,32)",
    )
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument(
        "--publishers",
        type=int,
        default=32,
        help="publishing connections in the many-publishers fan-out run (default 32)",
    )
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--workers-only",
        action="store_true",
        help="only --workers 2 against one process on the chat scenario (harness/workers_bench.py)",
    )
    workers_bench.add_arguments(parser)
    args = parser.parse_args()
    if args.workers_only:
        return workers_bench.go(args)
    if args.quick:
        args.subscribers, args.messages, args.publishes, args.latency_messages = 100, 20, 500, 100
    info = describe()
    results = run(args)
    lines = header_lines(info) + [
        (
            f"Settings: {args.subscribers} subscribers, {args.messages} messages fan-out (windows {args.windows}), "
            f"{args.publishes} publishes (window {args.window}), {args.latency_messages} latency messages (window 1), "
            f"{args.size}-byte payloads, JSON"
        ),
        f"Cores: servers on CPU {SERVER_CPU}, bench client on CPU {CLIENT_CPU}, Redis unpinned ({args.redis})",
        f"Load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
    ]
    for name, figures in results.items():
        lines.append(
            f"{name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        )
    lines.append("")
    for window in args.windows:
        fan = (
            results[f"fanout/window{window}/redis"]["deliveries_per_s"]
            / results[f"fanout/window{window}/memory"]["deliveries_per_s"]
        )
        lines.append(
            f"fan-out deliveries/s with {window} publishes in flight, redis / memory: {fan:.2f}x (target >= 0.7x)"
        )
    fan = (
        results[f"fanout/{args.publishers}publishers/redis"]["deliveries_per_s"]
        / results[f"fanout/{args.publishers}publishers/memory"]["deliveries_per_s"]
    )
    lines.append(
        f"fan-out deliveries/s with {args.publishers} publishing connections (1 in flight each), "
        f"redis / memory: {fan:.2f}x"
    )
    pub = results["publish/redis"]["publishes_per_s"] / results["publish/memory"]["publishes_per_s"]
    lines.append(f"publishes/s, redis / memory: {pub:.2f}x")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "settings": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
