"""``--workers 2`` against one process on the Redis engine, on a server-bound scenario (issue 14).

    python benches/cluster.py --workers-only [--redis redis://127.0.0.1:6379/15] [--json FILE]

(The code is here, in the harness package, because bench scripts import only ``harness.*``.)

Scenario ``chat``: ``--connections`` connections; connection ``i`` subscribes to channel
``i mod --channels`` and publishes 64-byte messages to that channel, one publish in flight
(the next goes when the last is confirmed), for ``--warmup`` seconds unmeasured and then
``--seconds`` measured. Every publish is delivered to the connections/channels subscribers
of its channel. It is server-bound on one process: a publish on Redis costs the server a
round trip and a script, far more CPU than the client spends sending it and reading the
replies (the report prints each process's CPU, so this is measured, not assumed).

Three servers, one after the other, each a fresh process: the memory engine (reference),
the Redis engine as one process, the Redis engine with ``--workers 2`` (SO_REUSEPORT: the
kernel spreads the connections over the two workers; each worker reads from Redis the
channels its own subscribers need).

Cores (2 on the machine this was written for): one process: the server on CPU 0, the bench
client (one asyncio process, every connection) on CPU 1. ``--workers 2``: worker 1 on CPU 0,
worker 2 on CPU 1, the supervisor (idle) on CPU 0, the client still on CPU 1, so it shares
that core with worker 2. Redis is not ours to pin: it runs wherever the system puts it. The
report gives the CPU each process used over the measured seconds (in cores), Redis's too,
and how busy each CPU was in all, so what the other jobs on the machine took shows as
"other". Keys live under a prefix of the run's own and are deleted at the end.
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
from urllib.parse import urlsplit

import psutil

from harness import rawws
from harness.machine import describe, header_lines, pin, process_cpu
from harness.servers import HOST, ServerProcess

_TYPE = re.compile(rb'"type"\s*:\s*"(\w+)"')
_LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")
SERVER_CPU, CLIENT_CPU = 0, 1
START_TIMEOUT = 30.0


def _cpu(pid: int) -> float:
    """``machine.process_cpu``, 0 for a process that is gone (a worker restarted mid-run)."""
    try:
        return process_cpu(pid)
    except psutil.Error:
        return 0.0


def redis_pid(url: str) -> int | None:
    """The pid of the redis-server serving ``url``'s port (its command line names it), if any."""
    port = urlsplit(url).port or 6379
    for process in psutil.process_iter(["name", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if (process.info["name"] or "").startswith("redis-server") and f":{port}" in command:
            return int(process.pid)
    return None


def server_argv(engine: str, workers: int) -> list[str]:
    argv = [sys.executable, "-m", "wsnursery", "serve", "--host", HOST, "--port", "0", "--engine", engine]
    argv += ["--log-level", "info", "--history-size", "8192", "--outbound-queue-size", "8192"]
    return argv + (["--workers", str(workers)] if workers > 1 else [])


def _wait_listening(server: ServerProcess, count: int) -> None:
    """Until ``count`` processes logged that they listen (the supervisor's workers start in turn)."""
    deadline = time.monotonic() + START_TIMEOUT
    while sum(bool(_LISTENING.search(line)) for line in server.tail) < count:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise RuntimeError(f"{count} workers did not listen within {START_TIMEOUT}s: {server.tail[-5:]}")
        time.sleep(0.05)  # a startup poll with a deadline, not a synchronisation


def server_pids(server: ServerProcess, workers: int) -> list[int]:
    """[the server] for one process; [worker 1, worker 2, ..., the supervisor] under --workers."""
    if workers == 1:
        return [server.pid]
    children = sorted(child.pid for child in psutil.Process(server.pid).children())
    if len(children) != workers:
        raise RuntimeError(f"expected {workers} workers under pid {server.pid}, found {children}")
    return [*children, server.pid]


class Member:
    """One connection: subscribed to its channel, publishing to it with one publish in flight."""

    def __init__(self, channel: str, payload: str, counts: dict[str, int]) -> None:
        self.channel, self.payload, self.counts = channel, payload, counts
        self.subscribed = asyncio.get_running_loop().create_future()
        self.ws: rawws.RawWS | None = None
        self.running = False
        self.sent = 0

    def publish(self) -> None:
        self.sent += 1
        frame = {"type": "publish", "id": self.sent, "channel": self.channel, "data": self.payload}
        assert self.ws is not None
        self.ws.send(json.dumps(frame, separators=(",", ":")).encode())

    def on_message(self, payload: bytes, opcode: int) -> None:
        kind = _TYPE.search(payload)
        if kind is None:
            return
        name = kind.group(1)
        if name == b"message":
            self.counts["delivered"] += 1
        elif name in (b"published", b"error"):
            self.counts["confirmed"] += 1
            self.counts["errors"] += name == b"error"
            if self.running:
                self.publish()
        elif name == b"subscribed" and not self.subscribed.done():
            self.subscribed.set_result(None)


async def chat(port: int, pids: dict[str, int], args: argparse.Namespace) -> dict:
    counts = {"delivered": 0, "confirmed": 0, "errors": 0}
    tag = secrets.token_hex(3)
    members = [
        Member(f"bench.chat.{tag}.{i % args.channels}", "x" * args.size, counts) for i in range(args.connections)
    ]
    for start in range(0, len(members), 100):
        batch = members[start : start + 100]
        sockets = await asyncio.gather(*(rawws.connect(HOST, port, "/", m.on_message) for m in batch))
        for member, ws in zip(batch, sockets):
            member.ws = ws
    for member in members:
        assert member.ws is not None
        member.ws.send(json.dumps({"type": "subscribe", "id": 0, "channel": member.channel}).encode())
    await asyncio.wait_for(asyncio.gather(*(m.subscribed for m in members)), 60)
    for member in members:
        member.running = True
        member.publish()
    await asyncio.sleep(args.warmup)  # unmeasured: connections settle, Redis reads are in place
    before = dict(counts)
    cpu0 = {name: _cpu(pid) for name, pid in pids.items()}
    everyone0 = _everyone()
    busy0, t0 = psutil.cpu_times(percpu=True), time.perf_counter()
    await asyncio.sleep(args.seconds)  # the measured seconds: a fixed time, not a synchronisation
    elapsed = time.perf_counter() - t0
    busy1, after = psutil.cpu_times(percpu=True), dict(counts)
    cpu = {name: round((_cpu(pid) - cpu0[name]) / elapsed, 3) for name, pid in pids.items()}
    others = _others(everyone0, _everyone(), set(pids.values()), elapsed)
    for member in members:
        member.running = False
        assert member.ws is not None
        member.ws.abort()
    per_cpu = [(_busy(b) - _busy(a)) / elapsed for a, b in zip(busy0, busy1)]
    ours = sum(cpu.values())
    fields = ("user", "system", "softirq", "irq", "steal")
    breakdown = {
        f: round(sum(getattr(b, f, 0.0) - getattr(a, f, 0.0) for a, b in zip(busy0, busy1)) / elapsed, 3)
        for f in fields
    }
    server = sum(v for k, v in cpu.items() if k.startswith(("server", "worker", "supervisor")))
    publishes = after["confirmed"] - before["confirmed"]
    all_us = sum(cpu.values()) * elapsed / publishes * 1e6 if publishes else None
    return {
        "server_cpu_us_per_publish": round(server * elapsed / publishes * 1e6, 1) if publishes else None,
        # server, client and Redis together: the machine's CPUs over this is what they could do alone
        "run_cpu_us_per_publish": round(all_us, 1) if all_us else None,
        "ceiling_publishes_per_s": round((os.cpu_count() or 1) / all_us * 1e6, 1) if all_us else None,
        "cpu_by_kind_cores": breakdown,
        "other_processes_cores": others,
        "publishes_per_s": round((after["confirmed"] - before["confirmed"]) / elapsed, 1),
        "deliveries_per_s": round((after["delivered"] - before["delivered"]) / elapsed, 1),
        "publish_errors": after["errors"],
        "elapsed_s": round(elapsed, 3),
        "cpu_cores": cpu,
        "cpu_busy_per_cpu": [round(x, 3) for x in per_cpu],
        "cpu_other_cores": round(max(0.0, sum(per_cpu) - ours), 3),  # busy, not this run's: other jobs, kernel
    }


def _everyone() -> dict[int, tuple[str, float]]:
    """Every visible process's name and CPU seconds so far."""
    out = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is not None:
            out[process.pid] = (process.info["name"] or "?", times.user + times.system)
    return out


def _others(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], ours: set[int], elapsed: float
) -> dict[str, float]:
    """CPU (cores) of the processes that are not this run's, by name, the busiest first (above 0.01)."""
    by_name: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        if pid in ours:
            continue
        used = seconds - before.get(pid, (name, 0.0))[1]
        by_name[name] = by_name.get(name, 0.0) + used / elapsed
    busiest = sorted(by_name.items(), key=lambda item: -item[1])
    return {"total": round(sum(by_name.values()), 3), **{n: round(c, 3) for n, c in busiest if c >= 0.01}}


def _busy(times: object) -> float:
    fields = times._asdict()  # type: ignore[attr-defined]
    return sum(v for k, v in fields.items() if k not in ("idle", "iowait", "guest", "guest_nice"))


def run(args: argparse.Namespace) -> dict[str, list[dict]]:
    pin(os.getpid(), CLIENT_CPU)
    prefix = f"wsnbench:{secrets.token_hex(4)}:"
    redis = redis_pid(args.redis)
    runs = [("memory, 1 process", "memory", 1), ("redis, 1 process", args.redis, 1)]
    runs.append((f"redis, --workers {args.workers}", args.redis, args.workers))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
    try:
        for (name, engine, workers), _ in [(config, r) for r in range(args.rounds) for config in runs]:
            url = engine if engine == "memory" else f"{engine}?prefix={prefix}"
            with ServerProcess(f"wsnursery-{workers}", server_argv(url, workers)) as server:
                _wait_listening(server, workers)
                found = server_pids(server, workers)
                pids: dict[str, int] = {}
                if workers == 1:
                    pin(found[0], SERVER_CPU)
                    pids["server"] = found[0]
                else:
                    for index, pid in enumerate(found[:-1]):
                        pin(pid, index)
                        pids[f"worker {index + 1} (CPU {index % (os.cpu_count() or 1)})"] = pid
                    pin(found[-1], SERVER_CPU)
                    pids["supervisor"] = found[-1]
                pids["client"] = os.getpid()
                if redis is not None and engine != "memory":
                    pids["redis-server"] = redis
                results[name].append(asyncio.run(chat(server.port, pids, args)))
                print(f"{name}: {json.dumps(results[name][-1])}", flush=True)
    finally:
        _cleanup(args.redis, prefix)
    return results


def _cleanup(url: str, prefix: str) -> None:
    import trio

    from harness.nodes import delete_keys

    trio.run(delete_keys, url, prefix)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=200, help="connections, each subscribing and publishing")
    parser.add_argument("--channels", type=int, default=50, help="channels the connections are spread over")
    parser.add_argument("--workers", type=int, default=2, help="workers of the --workers run (default 2)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server (default 10)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="times the three servers run, one after the other in turn (default 1; on a shared machine "
        "more rounds show how much the figures move)",
    )


def report(info: dict, args: argparse.Namespace, results: dict[str, list[dict]]) -> list[str]:
    lines = header_lines(info) + [
        (
            f"Settings: chat, {args.connections} connections over {args.channels} channels (each subscribed to "
            f"one, publishing {args.size}-byte JSON messages to it, one publish in flight), {args.warmup:g} s "
            f"warm-up, {args.seconds:g} s measured per server, {args.rounds} round(s) in turn"
        ),
        f"Cores: one process: server CPU {SERVER_CPU}, client CPU {CLIENT_CPU}; --workers {args.workers}: worker i "
        f"on CPU i-1, supervisor CPU {SERVER_CPU}, client CPU {CLIENT_CPU}; Redis unpinned ({args.redis})",
        f"Load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
    ]
    for name, rounds in results.items():
        for number, r in enumerate(rounds, 1):
            cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores"].items())
            lines.append(
                f"{name} (round {number}): {r['publishes_per_s']:,.0f} publishes/s, "
                f"{r['deliveries_per_s']:,.0f} deliveries/s; CPU per publish: server {r['server_cpu_us_per_publish']} "
                f"us, all of the run's processes {r['run_cpu_us_per_publish']} us (so at most "
                f"{r['ceiling_publishes_per_s']:,.0f}/s on {os.cpu_count()} CPUs); CPU in cores: {cores}; "
                f"other processes {r['other_processes_cores']}; busy per CPU {r['cpu_busy_per_cpu']}; "
                f"busy by kind {r['cpu_by_kind_cores']}"
            )
    names = list(results)
    if len(names) == 3:
        for number, (mem, one, many) in enumerate(zip(*(results[n] for n in names)), 1):
            lines.append(
                f"round {number}, publishes/s: {names[2]} / {names[1]} = "
                f"{many['publishes_per_s'] / one['publishes_per_s']:.2f}x; {names[1]} / {names[0]} = "
                f"{one['publishes_per_s'] / mem['publishes_per_s']:.2f}x"
            )
    return lines


def go(args: argparse.Namespace) -> int:
    info = describe()
    results = run(args)
    print("\n".join(report(info, args, results)))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "workers_only"}
        payload = {"machine": info, "settings": settings, "loadavg_at_end": list(os.getloadavg()), "results": results}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0
