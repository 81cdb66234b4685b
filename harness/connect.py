"""``python -m harness connect``: how fast connections open, how many stay up, how a storm recovers.

1. Opens ``--hold`` connections (``--concurrency`` handshakes at a time) and reports the
   establishment rate and the handshake time percentiles.
2. Holds them all for ``--hold-seconds`` while the server sends heartbeat pings every
   ``--heartbeat-interval`` seconds (the client answers each with a pong) and counts how many
   are still open at the end, and how many pings arrived.
3. With ``--churn N``: aborts N of the held connections at once (a reconnection storm) and
   reconnects them all together; reports the success rate and the reconnect times.

Bounded: at most 10,000 connections (client and server each hold one fd per connection; the
fd limit here is 20,000 per process).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hdrh.histogram import HdrHistogram

from benches.lib import rawws
from benches.lib.servers import raise_nofile_limit
from harness.load import (HIST_ARGS, CpuClock, ManagedServer, UsageError, machine, machine_line, parse_url,
                          summary, write_outputs)
from harness.report import Progress, table

MAX_CONNECTIONS = 10_000


def add_arguments(p: Any, positive_int: Any, positive_float: Any) -> None:
    p.add_argument("--hold", type=positive_int, default=1000,
                   help=f"connections opened and held at once (default 1000, at most {MAX_CONNECTIONS:,})")
    p.add_argument("--hold-seconds", type=positive_float, default=6.0,
                   help="seconds to hold them all open with heartbeats on (default 6)")
    p.add_argument("--heartbeat-interval", type=positive_float, default=5.0,
                   help="server heartbeat interval in seconds when the harness starts the server (default 5)")
    p.add_argument("--timeout", type=positive_float, default=90.0,
                   help="seconds the opening phase (and the storm) may take; unopened connections count as "
                        "failures (default 90)")
    p.add_argument("--churn", type=int, default=0, metavar="N",
                   help="reconnection storm: abort N held connections at once and reconnect them together "
                        "(default 0 = no storm)")
    p.add_argument("--concurrency", type=positive_int, default=200, help="handshakes in progress at once (default 200)")
    p.add_argument("--seed", type=int, default=1, help="seed of which connections the storm drops (default 1)")
    p.add_argument("--url", help="aim at a running server on loopback (ws://127.0.0.1:PORT/) instead of starting one")
    p.add_argument("--output", metavar="FILE", help="write the report as JSON (as CSV when FILE ends in .csv)")
    p.add_argument("--csv", metavar="FILE", help="also write one CSV row of the figures")
    p.add_argument("--quiet", action="store_true", help="no progress line")


async def _open_all(host: str, port: int, path: str, n: int, concurrency: int, hist: HdrHistogram,
                    progress: Progress | None, deadline: float) -> tuple[list, list[str]]:
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    done = 0

    async def one() -> rawws.RawWS | None:
        nonlocal done
        async with gate:
            started = time.perf_counter()
            try:
                ws = await rawws.connect(host, port, path, lambda payload, op: None, timeout=15.0)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return None
            hist.record_value(max(1, int((time.perf_counter() - started) * 1e6)))
            done += 1
            if progress:
                progress.update(done, n, f"{done:,} open")
            return ws

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        errors.append(f"{len(pending)} connections not opened within --timeout {deadline}s")
        errors.extend([""] * (len(pending) - 1))
    conns = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
    return [c for c in conns if c is not None], [e for e in errors if e] + [e for e in errors if not e]


async def run(host: str, port: int, path: str, args: Any) -> dict:
    import random

    raise_nofile_limit()
    progress = None if args.quiet else Progress(f"connect {args.hold:,}")
    cpu = CpuClock()
    open_hist = HdrHistogram(*HIST_ARGS)
    t0 = time.perf_counter()
    conns, errors = await _open_all(host, port, path, args.hold, args.concurrency, open_hist, progress,
                                        args.timeout)
    open_wall = time.perf_counter() - t0
    if progress:
        progress.done()
    await asyncio.sleep(args.hold_seconds)
    still_open = sum(1 for c in conns if c.is_open)
    pings = sum(c.pings for c in conns)
    result: dict = {
        "connections_requested": args.hold, "connections_opened": len(conns), "connect_failures": len(errors),
        "connect_errors_sample": errors[:5],
        "establishment_rate_conn_s": round(len(conns) / open_wall, 1) if open_wall > 0 else 0.0,
        "open_phase_s": round(open_wall, 3), "connect_time_ms": summary(open_hist),
        "hold_seconds": args.hold_seconds, "held_open_at_end": still_open,
        "held_success_rate": round(still_open / args.hold, 6),
        "heartbeat_pings_received": pings,
    }
    if args.churn:
        rng = random.Random(args.seed)
        victims = rng.sample([c for c in conns if c.is_open], min(args.churn, still_open))
        for c in victims:
            c.abort()
        await asyncio.sleep(0.05)
        storm_hist = HdrHistogram(*HIST_ARGS)
        t1 = time.perf_counter()
        new, storm_errors = await _open_all(host, port, path, len(victims), args.concurrency, storm_hist, None,
                                                  args.timeout)
        storm_wall = time.perf_counter() - t1
        conns = [c for c in conns if c not in set(victims)] + new
        result["churn"] = {
            "dropped": len(victims), "reconnected": len(new), "failed": len(storm_errors),
            "success_rate": round(len(new) / len(victims), 6) if victims else 1.0,
            "storm_s": round(storm_wall, 3), "reconnect_time_ms": summary(storm_hist),
            "errors_sample": storm_errors[:5],
        }
    result["client_cpu_percent"] = cpu.percent()
    await asyncio.gather(*(c.close(timeout=3.0) for c in conns), return_exceptions=True)
    return result


def command(args: Any) -> int:
    if args.hold > MAX_CONNECTIONS:
        raise UsageError(f"--hold is at most {MAX_CONNECTIONS:,} on this machine (fd limit)")
    if args.churn < 0 or args.churn > args.hold:
        raise UsageError("--churn must be between 0 and --hold")
    info = machine()
    if args.url:
        host, port, path = parse_url(args.url)
        result = asyncio.run(run(host, port, path, args))
        result.update(target=args.url, server_peak_rss_mb=None)
    else:
        extra = ["--heartbeat-interval", str(args.heartbeat_interval), "--max-connections", str(MAX_CONNECTIONS + 100)]
        with ManagedServer(extra) as server:
            result = asyncio.run(run("127.0.0.1", server.port, "/", args))
            server.sample()
            result.update(target=f"ws://127.0.0.1:{server.port}/ (started by the harness, heartbeat "
                                 f"{args.heartbeat_interval}s)", server_peak_rss_mb=round(server.peak_rss / 2**20, 1))
    c = result["connect_time_ms"]
    rows = [
        ("connections opened", f"{result['connections_opened']:,} of {result['connections_requested']:,}"),
        ("establishment rate conn/s", result["establishment_rate_conn_s"]),
        ("connect p50 / p95 / p99 ms", f"{c['p50']} / {c['p95']} / {c['p99']}"),
        (f"still open after {result['hold_seconds']}s", f"{result['held_open_at_end']:,} ({result['held_success_rate']:.2%})"),
        ("heartbeat pings received", result["heartbeat_pings_received"]),
        ("server peak RSS MB", "n/a" if result["server_peak_rss_mb"] is None else result["server_peak_rss_mb"]),
        ("client CPU % of a core", result["client_cpu_percent"]),
    ]
    if "churn" in result:
        ch = result["churn"]
        r = ch["reconnect_time_ms"]
        rows += [
            ("storm: dropped / reconnected", f"{ch['dropped']:,} / {ch['reconnected']:,}"),
            ("storm: success rate", f"{ch['success_rate']:.2%}"),
            ("storm: reconnect p50 / p99 ms", f"{r['p50']} / {r['p99']}"),
            ("storm: all back within s", ch["storm_s"]),
        ]
    print(f"wsnursery connect — {args.hold:,} connections, seed {args.seed}")
    print(machine_line(info))
    print(table(["", "connect"], rows))
    write_outputs(args, {"command": "connect", "machine": info, "result": result}, [result])
    ok = result["connect_failures"] == 0 and result["held_open_at_end"] == args.hold
    if "churn" in result:
        ok = ok and result["churn"]["failed"] == 0
    return 0 if ok else 1
