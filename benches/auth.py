"""Issue 13 benchmarks: what tokens, permissions and the server API cost, as ratios in one run.

    python benches/auth.py            # about 1-2 minutes on 2 cores; --quick for a smoke run
    (with the package installed, or PYTHONPATH=$PWD from the repository root)

Every figure compares wsnursery with itself, in the same run, on the same machine: a server
without tokens against one with ``--jwt-secret`` (HS256), each a fresh process on 127.0.0.1.
Scenarios:
- connect: connections opened (upgrade, welcome, close handshake) per second without a token,
  with a valid HS256 token, a different one for every connection (target >= 0.85x), with one
  token presented again and again (a reconnect storm: the server remembers verified tokens),
  and upgrades refused with an invalid token (the rejection rate); server CPU per connection;
- subscribe/unsubscribe pairs per second on one connection, without tokens and with a token
  of 100 patterns whose match is the last one (a regex match, the slowest kind);
- permission checks per second in process, 10 and 100 patterns per token;
- fan-out deliveries per second, 1 publisher to N subscribers, without tokens and with
  tokens of 100 patterns (target >= 0.95x), and server CPU per delivery;
- server API: publishes per second over HTTP (a connection per call, as the API clients
  do), and the latency from the API call to a WebSocket subscriber (p50 / p99).
The load client is one asyncio process speaking raw WebSocket frames; where it, not the
server, sets the pace, the server CPU figures say so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import psutil

from harness import machine
from harness.servers import HOST, ServerProcess, wsnursery_argv
from wsnursery.permissions import Matcher

SECRET = "bench-secret-of-at-least-thirty-two-bytes"
API_KEY = "bench-api-key-0123456789"
RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def mint(patterns: list[str], ttl: int = 3600, sub: str = "bench") -> str:
    claims = {"sub": sub, "exp": int(time.time()) + ttl, "channels": {"subscribe": patterns, "publish": patterns}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def patterns(count: int) -> list[str]:
    """``count`` patterns of every kind; the bench channels ``room.*.live`` match only the last."""
    kinds = [
        f"team{i}.general" if i % 3 == 0 else f"team{i}.*" if i % 3 == 1 else f"t{i}.*.x" for i in range(count - 1)
    ]
    return [*kinds, "room.*.live"]


# -- a raw WebSocket client ------------------------------------------------------------------


def frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(message: dict[str, Any]) -> bytes:
    return frame(json.dumps(message, separators=(",", ":")).encode())


class Refused(Exception):
    pass


async def ws_open(port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        await reader.read()
        writer.close()
        raise Refused(head.split(b"\r\n", 1)[0].decode())
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(n)


async def read_json(reader: asyncio.StreamReader) -> dict[str, Any]:
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == 1:
            return json.loads(payload)  # type: ignore[no-any-return]
        if opcode == 8:
            raise ConnectionError("closed")


async def ws_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(frame(struct.pack("!H", 1000), opcode=8))
    try:
        while (await read_frame(reader))[0] != 8:
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


class ServerCpu:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)


# -- scenarios -----------------------------------------------------------------------------


async def connect_rate(
    port: int, targets: list[str], count: int, concurrency: int, cpu: ServerCpu, refused: bool
) -> dict[str, float]:
    remaining = count
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                reader, writer = await ws_open(port, targets[remaining % len(targets)])
            except Refused:
                failures += 0 if refused else 1
                continue
            failures += 1 if refused else 0
            await read_json(reader)  # welcome
            await ws_close(reader, writer)

    cpu0, t0 = cpu.seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, used = time.perf_counter() - t0, cpu.seconds() - cpu0
    return {"per_second": count / elapsed, "server_us_each": used / count * 1e6, "unexpected": failures}


async def subscribe_rate(port: int, target: str, pairs: int) -> dict[str, float]:
    reader, writer = await ws_open(port, target)
    await read_json(reader)
    batch = 100
    t0 = time.perf_counter()
    for start in range(0, pairs, batch):
        for i in range(start, min(pairs, start + batch)):
            channel = f"room.{i}.live"
            writer.write(text({"type": "subscribe", "id": 2 * i, "channel": channel}))
            writer.write(text({"type": "unsubscribe", "id": 2 * i + 1, "channel": channel}))
        for _ in range(2 * (min(pairs, start + batch) - start)):
            reply = await read_json(reader)
            assert reply["type"] in ("subscribed", "unsubscribed"), reply
    elapsed = time.perf_counter() - t0
    await ws_close(reader, writer)
    return {"pairs_per_second": pairs / elapsed}


async def fanout(port: int, target: str, subscribers: int, messages: int, cpu: ServerCpu) -> dict[str, float]:
    channel = "room.1.live"
    subs = []
    for _ in range(subscribers):
        reader, writer = await ws_open(port, target)
        await read_json(reader)
        writer.write(text({"type": "subscribe", "id": 1, "channel": channel}))
        assert (await read_json(reader))["type"] == "subscribed"
        subs.append((reader, writer))
    publisher = await ws_open(port, target)
    await read_json(publisher[0])

    async def drain(reader: asyncio.StreamReader) -> None:
        got = 0
        while got < messages:
            opcode, payload = await read_frame(reader)
            if opcode == 1 and payload.startswith(b'{"type":"message"'):
                got += 1

    payload = "x" * 64
    cpu0, t0 = cpu.seconds(), time.perf_counter()
    readers = [asyncio.ensure_future(drain(r)) for r, _ in subs]
    for start in range(0, messages, 50):  # flow control: a batch, then its replies
        end = min(messages, start + 50)
        for i in range(start, end):
            publisher[1].write(text({"type": "publish", "id": i, "channel": channel, "data": payload}))
        for _ in range(start, end):
            assert (await read_json(publisher[0]))["type"] == "published"
    await asyncio.gather(*readers)
    elapsed, used = time.perf_counter() - t0, cpu.seconds() - cpu0
    for _reader, writer in [*subs, publisher]:
        writer.close()
    deliveries = subscribers * messages
    return {
        "deliveries_per_second": deliveries / elapsed,
        "server_us_each": used / deliveries * 1e6,
        "server_cores": used / elapsed,
    }


async def http_publish(port: int, body: dict[str, Any]) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    data = json.dumps(body).encode()
    writer.write(
        f"POST /api/publish HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: apikey {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


async def api_publishes(port: int, count: int, concurrency: int) -> dict[str, float]:
    reader, writer = await ws_open(port, "/")
    await read_json(reader)
    writer.write(text({"type": "subscribe", "id": 1, "channel": "api.bench"}))
    assert (await read_json(reader))["type"] == "subscribed"
    latencies: list[float] = []

    async def receive() -> None:
        while len(latencies) < count:
            message = await read_json(reader)
            if message["type"] == "message":
                latencies.append(time.perf_counter() - message["data"]["t"])

    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await http_publish(port, {"channel": "api.bench", "data": {"t": time.perf_counter()}})
            assert status == 200, status

    receiving = asyncio.ensure_future(receive())
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await receiving
    writer.close()
    latencies.sort()
    return {
        "per_second": count / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    }


def permission_checks(count: int) -> dict[str, float]:
    out = {}
    for size in (10, 100):
        matcher = Matcher(patterns(size))
        names = ["room.7.live", "team1.x", "team3.general", "nothing.here"]  # regex, prefix, exact, miss
        t0 = time.perf_counter()
        for _ in range(count // len(names)):
            for name in names:
                matcher(name)
        out[f"{size}_patterns_per_second"] = count / (time.perf_counter() - t0)
    return out


# -- the run ---------------------------------------------------------------------------------


def serve(*extra: str) -> ServerProcess:
    return ServerProcess("wsnursery", wsnursery_argv(*extra), cwd=REPO)


async def one_server(name: str, args: argparse.Namespace, tokens: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every scenario against a fresh server process of kind ``name`` ("no_auth" or "hs256")."""
    extra = ["--jwt-secret", SECRET, "--api-key", API_KEY] if name == "hs256" else []
    target = f"/?token={tokens['valid']}" if name == "hs256" else "/"
    out: dict[str, dict[str, float]] = {}
    with serve(*extra) as server:
        assert server.port is not None
        cpu = ServerCpu(server.pid)
        connect_targets = tokens["fresh"] if name == "hs256" else [target]
        out[f"connect_{name}"] = await connect_rate(server.port, connect_targets, args.connections, 8, cpu, False)
        if name == "hs256":
            out["connect_hs256_cached"] = await connect_rate(
                server.port, [f"/?token={tokens['small']}"], args.connections, 8, cpu, False
            )
            out["connect_hs256_100"] = await connect_rate(
                server.port, tokens["fresh_100"], args.connections, 8, cpu, False
            )
            out["connect_invalid"] = await connect_rate(
                server.port, [f"/?token={tokens['bad']}"], args.connections, 8, cpu, True
            )
        out[f"subscribe_{name}"] = await subscribe_rate(server.port, target, args.pairs)
        out[f"fanout_{name}"] = await fanout(server.port, target, args.subscribers, args.messages, cpu)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tokens = {
        "small": mint(["chat.*", "user.bench.*", "room.*.live"]),
        "valid": mint(patterns(100)),
        "bad": mint(["chat.*"], ttl=-10),
        # Every connection its own token (each verified in full), as when every user connects once.
        "fresh": [
            f"/?token={mint(['chat.*', f'user.u{i}.*', 'room.*.live'], sub=f'u{i}')}" for i in range(args.connections)
        ],
        "fresh_100": [f"/?token={mint(patterns(100), sub=f'u{i}')}" for i in range(args.connections)],
    }
    rounds: dict[str, list[dict[str, float]]] = {}
    for number in range(args.rounds):  # the two servers alternate who goes first
        order = ("no_auth", "hs256") if number % 2 == 0 else ("hs256", "no_auth")
        for name in order:
            for key, value in (await one_server(name, args, tokens)).items():
                rounds.setdefault(key, []).append(value)
    results: dict[str, Any] = {
        key: {field: statistics.median(run[field] for run in runs) for field in runs[0]} for key, runs in rounds.items()
    }
    results["rounds"] = rounds
    with serve("--api-key", API_KEY) as server:
        assert server.port is not None
        results["api"] = await api_publishes(server.port, args.api_calls, 8)
    results["permission_checks"] = permission_checks(args.checks)
    return results


def ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}x" if old > 0 else "n/a (too short to measure)"


def report(results: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> str:
    c0, c1, cc, c100, ci = (
        results[k]
        for k in ("connect_no_auth", "connect_hs256", "connect_hs256_cached", "connect_hs256_100", "connect_invalid")
    )
    s0, s1 = results["subscribe_no_auth"], results["subscribe_hs256"]
    f0, f1 = results["fanout_no_auth"], results["fanout_hs256"]
    api, checks = results["api"], results["permission_checks"]
    rows = [
        (
            "connections opened / s, 8 at a time, a new token each (3 patterns)",
            f"{c0['per_second']:,.0f}",
            f"{c1['per_second']:,.0f}",
            f"{ratio(c1['per_second'], c0['per_second'])} (target >= 0.85x)",
        ),
        (
            "server CPU per connection, a new token each",
            f"{c0['server_us_each']:,.0f} µs",
            f"{c1['server_us_each']:,.0f} µs",
            ratio(c1["server_us_each"], c0["server_us_each"]),
        ),
        (
            "connections opened / s, one token again and again (a reconnect storm)",
            f"{c0['per_second']:,.0f}",
            f"{cc['per_second']:,.0f}",
            ratio(cc["per_second"], c0["per_second"]),
        ),
        (
            "server CPU per connection, one token again and again",
            f"{c0['server_us_each']:,.0f} µs",
            f"{cc['server_us_each']:,.0f} µs",
            ratio(cc["server_us_each"], c0["server_us_each"]),
        ),
        (
            "connections opened / s, a new token of 100 patterns (3.5 KB) each",
            f"{c0['per_second']:,.0f}",
            f"{c100['per_second']:,.0f}",
            ratio(c100["per_second"], c0["per_second"]),
        ),
        ("invalid (expired) token: upgrades refused with 401 / s", "", f"{ci['per_second']:,.0f}", ""),
        (
            "subscribe + unsubscribe pairs / s, one connection (100 patterns)",
            f"{s0['pairs_per_second']:,.0f}",
            f"{s1['pairs_per_second']:,.0f}",
            ratio(s1["pairs_per_second"], s0["pairs_per_second"]),
        ),
        (
            f"fan-out 1 → {args.subscribers}, deliveries / s (100 patterns)",
            f"{f0['deliveries_per_second']:,.0f}",
            f"{f1['deliveries_per_second']:,.0f}",
            f"{ratio(f1['deliveries_per_second'], f0['deliveries_per_second'])} (target >= 0.95x)",
        ),
        (
            "server CPU per delivery (server cores busy)",
            f"{f0['server_us_each']:.2f} µs ({f0['server_cores']:.2f})",
            f"{f1['server_us_each']:.2f} µs ({f1['server_cores']:.2f})",
            ratio(f1["server_us_each"], f0["server_us_each"]),
        ),
    ]
    lines = [
        "# wsnursery: identity, permissions and server API benchmarks",
        "",
        *machine.header_lines(info),
        "",
        f"Settings: {vars(args)}; medians of {args.rounds} rounds, a fresh server process per round and kind",
        "",
        "| scenario | without tokens | with HS256 tokens | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += [
        "",
        "| server API and permission checks | figure |",
        "|---|---|",
        f"| POST /api/publish, 8 at a time, a connection per call | {api['per_second']:,.0f} / s |",
        f"| API call → WebSocket subscriber latency | p50 {api['p50_ms']:.2f} ms, p99 {api['p99_ms']:.2f} ms |",
        f"| permission checks, 10 patterns per token | {checks['10_patterns_per_second']:,.0f} / s |",
        f"| permission checks, 100 patterns per token | {checks['100_patterns_per_second']:,.0f} / s |",
        "",
    ]
    keys = ("connect_no_auth", "connect_hs256", "connect_hs256_cached", "connect_hs256_100", "connect_invalid")
    lines.append(
        f"Unexpected answers (a refused valid token, an accepted invalid one): {sum(results[k]['unexpected'] for k in keys)}"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (servers alternate)")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--api-calls", type=int, default=2000)
    parser.add_argument("--checks", type=int, default=400_000)
    parser.add_argument("--output", type=Path, default=None, help="markdown report path (default: benches/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.pairs, args.subscribers, args.messages, args.api_calls, args.checks = (
            100,
            200,
            10,
            50,
            100,
            20_000,
        )
        args.rounds = 1
    info = machine.describe()
    results = asyncio.run(run(args))
    text_report = report(results, info, args)
    print(text_report)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS / f"auth-{stamp}{'-quick' if args.quick else ''}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text_report)
    output.with_suffix(".json").write_text(
        json.dumps(
            {"machine": info, "settings": vars(args) | {"output": str(output)}, "results": results},
            indent=2,
            default=str,
        )
    )
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
