"""``python -m harness connect``: how fast connections open, how many stay up, a broadcast to all
of them, how a storm recovers.

1. Opens ``--hold`` connections (``--concurrency`` handshakes at a time) and reports the
   establishment rate and the handshake time percentiles. An attempt may take what is left of
   ``--timeout``: a slow handshake inside the cap shows in the percentiles, not as a failure.
2. Holds them all for ``--hold-seconds`` while the server sends heartbeat pings every
   ``--heartbeat-interval`` seconds (the client answers each with a pong) and counts how many
   are still open at the end, and how many pings arrived.
3. With ``--broadcast K`` (default 10): every held connection subscribes to one fresh channel,
   then one of them publishes K messages, one at a time, each once the previous one reached
   every subscriber. Reports how many connections got all K in order (no gap, no repeat), the
   publish-to-delivery time over all deliveries, and per message the time until the last
   connection had it. Bounded by ``--broadcast-timeout``; what did not arrive by then is counted.
4. With ``--churn N``: aborts N of the held connections at once (a reconnection storm) and
   reconnects them all together; reports the success rate and the reconnect times. A reconnect
   the server refuses for load (HTTP 503 with Retry-After, or the socket closed before the
   handshake answer, which is what a server at its socket limit does) is retried after about
   a second, the way a reconnecting client does, until ``--timeout``; the report counts those
   refusals and, for a wsnursery server, the server's own rejection counters.

``--url`` given several times (the nodes of one cluster on a shared engine) spreads the
connections, and a storm's reconnections, round-robin over them; rejection counters are
summed over the nodes.

Bounded: at most 10,000 connections (client and server each hold one fd per connection; the
fd limit here is 20,000 per process).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from typing import Any

from hdrh.histogram import HdrHistogram

from harness import rawws
from harness.load import (
    HIST_ARGS,
    CpuClock,
    ManagedServer,
    UsageError,
    machine,
    machine_line,
    parse_url,
    summary,
    write_outputs,
)
from harness.report import Progress, table
from harness.servers import raise_nofile_limit
from harness.timeline import curve

MAX_CONNECTIONS = 10_000
RETRY_AFTER_S = 1.0  # what wsnursery sends with its 503; rawws does not expose the header
_REJECTED_RE = re.compile(r'^wsnursery_connections_rejected_total\{reason="([^"]+)"\}\s+([0-9.e+]+)', re.MULTILINE)


def add_arguments(p: Any, positive_int: Any, positive_float: Any) -> None:
    p.add_argument(
        "--hold",
        type=positive_int,
        default=1000,
        help=f"connections opened and held at once (default 1000, at most {MAX_CONNECTIONS:,})",
    )
    p.add_argument(
        "--hold-seconds",
        type=positive_float,
        default=6.0,
        help="seconds to hold them all open with heartbeats on (default 6)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=5.0,
        help="server heartbeat interval in seconds when the harness starts the server (default 5)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=90.0,
        help="seconds the opening phase (and the storm) may take, each handshake attempt included; "
        "unopened connections count as failures (default 90)",
    )
    p.add_argument(
        "--broadcast",
        type=int,
        default=10,
        metavar="K",
        help="messages broadcast to every held connection on one channel (default 10; 0 = skip)",
    )
    p.add_argument(
        "--broadcast-timeout",
        type=positive_float,
        default=60.0,
        help="seconds the broadcast step (subscribe all, publish and deliver K) may take (default 60)",
    )
    p.add_argument(
        "--churn",
        type=int,
        default=0,
        metavar="N",
        help="reconnection storm: abort N held connections at once and reconnect them together (default 0 = no storm)",
    )
    p.add_argument("--concurrency", type=positive_int, default=200, help="handshakes in progress at once (default 200)")
    p.add_argument("--seed", type=int, default=1, help="seed of which connections the storm drops (default 1)")
    p.add_argument(
        "--url",
        action="append",
        help="aim at a running server on loopback (ws://127.0.0.1:PORT/) instead of starting one; again for "
        "each node of a cluster (one shared engine): connections are spread round-robin over the URLs",
    )
    p.add_argument("--output", metavar="FILE", help="write the report as JSON (as CSV when FILE ends in .csv)")
    p.add_argument("--csv", metavar="FILE", help="also write one CSV row of the figures")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _refused(exc: BaseException) -> str | None:
    """The server shed this attempt for load (and says to try again), or None for a real failure."""
    if isinstance(exc, rawws.HandshakeError) and " 503 " in f"{exc} ":
        return "http_503"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)) or (
        type(exc) is ConnectionError and "closed" in str(exc)
    ):
        return "closed_before_handshake"
    return None


async def _open_all(
    host: str,
    port: int,
    path: str,
    n: int,
    concurrency: int,
    hist: HdrHistogram,
    progress: Progress | None,
    deadline: float,
    retry: bool = False,
    rng: random.Random | None = None,
    more: list[tuple[str, int, str]] | None = None,
) -> tuple[list, list[str], dict]:
    """Open n connections; returns (connections, one error per connection not opened, stats).

    With ``more`` targets, connection ``i`` goes to the ``i mod n``-th of ``(host, port, path), *more``.

    With ``retry``, an attempt the server refuses for load is retried after about
    RETRY_AFTER_S (jittered) while time remains; the histogram holds each connection's time
    from the start of its first attempt to its open (backoff included, waits for the gate not).
    """
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    refusals: dict[str, int] = {}
    refusal_sample: list[str] = []
    stats = {"attempts": 0, "first_try": 0, "retried_ok": 0}
    done = 0
    end = time.perf_counter() + deadline
    rng = rng or random.Random(0)

    targets = [(host, port, path), *(more or [])]

    async def one(number: int) -> rawws.RawWS | None:
        nonlocal done
        host, port, path = targets[number % len(targets)]
        started = 0.0  # the first attempt's start: the wait for the gate is not connect time
        tries = 0
        while True:
            tries += 1
            async with gate:
                stats["attempts"] += 1
                started = started or time.perf_counter()
                # An attempt may take what is left of the phase's cap: a slow handshake that
                # still lands inside --timeout is slow, not failed (it shows in the percentiles).
                budget = max(0.001, end - time.perf_counter())
                try:
                    ws = await rawws.connect(host, port, path, lambda payload, op: None, timeout=budget)
                except TimeoutError:
                    errors.append(f"TimeoutError: no handshake answer within the {deadline:g}s cap")
                    return None
                except Exception as exc:
                    text = f"{type(exc).__name__}: {exc}"[:200]
                    kind = _refused(exc) if retry else None
                    if kind is None or time.perf_counter() + RETRY_AFTER_S > end:
                        errors.append(text)
                        return None
                    refusals[kind] = refusals.get(kind, 0) + 1
                    if len(refusal_sample) < 5:
                        refusal_sample.append(text)
                    ws = None
            if ws is not None:
                break
            await asyncio.sleep(RETRY_AFTER_S * rng.uniform(0.5, 1.5))  # outside the gate
        hist.record_value(max(1, int((time.perf_counter() - started) * 1e6)))
        stats["first_try" if tries == 1 else "retried_ok"] += 1
        done += 1
        if progress:
            progress.update(done, n, f"{done:,} open")
        return ws

    tasks = [asyncio.ensure_future(one(number)) for number in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        errors.append(f"{len(pending)} connections not opened within --timeout {deadline}s")
    conns = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
    conns = [c for c in conns if c is not None]
    failed = n - len(conns)
    stats.update(refusals=refusals, refusals_sample=refusal_sample, failed=failed)
    # one entry per failed connection: the messages first, then blanks for the timed-out ones
    return conns, (errors + [""] * failed)[:failed], stats


async def _server_rejections(host: str, port: int) -> dict[str, int] | None:
    """wsnursery's rejection counters from /metrics, or None (not wsnursery, or not answering)."""
    try:
        async with asyncio.timeout(5.0):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            body = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return None
    text = body.decode("utf-8", "replace")
    if " 200 " not in text.split("\r\n", 1)[0] + " ":
        return None
    return {reason: int(float(value)) for reason, value in _REJECTED_RE.findall(text)}


async def _all_rejections(targets: list[tuple[str, int, str]]) -> dict[str, int] | None:
    """The rejection counters summed over the servers at ``targets`` (None if one does not answer)."""
    total: dict[str, int] = {}
    for host, port, _ in dict.fromkeys(targets):
        counts = await _server_rejections(host, port)
        if counts is None:
            return None
        for reason, count in counts.items():
            total[reason] = total.get(reason, 0) + count
    return total


def _diff(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


class _Subscriber:
    """One held connection's view of the broadcast: its subscribe reply and what arrived when."""

    __slots__ = ("bad", "errors", "received", "seqs", "subscribed", "times")

    def __init__(self) -> None:
        self.subscribed = False
        self.received: list[int] = []  # message index k, in arrival order
        self.times: list[float] = []
        self.seqs: list[int] = []
        self.errors: list[str] = []
        self.bad = 0  # frames that would not parse

    def in_order(self, k: int) -> bool:
        if self.received != list(range(k)):
            return False
        return all(b == a + 1 for a, b in zip(self.seqs, self.seqs[1:]))


async def _broadcast(conns: list, k: int, timeout: float, progress: Progress | None) -> dict:
    """Every conn subscribes to one fresh channel; conns[0] publishes k messages, one at a time."""
    channel = f"harness.connect.{os.getpid()}.{time.time_ns()}"
    n = len(conns)
    subs = [_Subscriber() for _ in conns]
    published_at: list[float] = []
    acks: dict[int, float] = {}
    counts = [0] * k
    all_subscribed = asyncio.Event()
    reached_all = [asyncio.Event() for _ in range(k)]
    subscribed = 0
    loop_time = time.perf_counter

    def handler(sub: _Subscriber) -> Any:
        def on_message(payload: bytes, opcode: int) -> None:
            nonlocal subscribed
            now = loop_time()
            try:
                frame = json.loads(payload)
                kind = frame.get("type")
            except (ValueError, AttributeError):
                sub.bad += 1
                return
            if kind == "message" and frame.get("channel") == channel:
                data = frame.get("data")
                i = data.get("i") if isinstance(data, dict) else None
                if not isinstance(i, int) or not 0 <= i < k:
                    sub.bad += 1
                    return
                sub.received.append(i)
                sub.times.append(now)
                sub.seqs.append(frame.get("seq"))
                counts[i] += 1
                if counts[i] >= subscribed and all_subscribed.is_set():
                    reached_all[i].set()
            elif kind == "subscribed" and frame.get("channel") == channel and not sub.subscribed:
                sub.subscribed = True
                subscribed += 1
                if subscribed == n:
                    all_subscribed.set()
            elif kind == "published":
                acks[frame.get("id")] = now
            elif kind == "error" and len(sub.errors) < 3:
                sub.errors.append(f"{frame.get('code')}: {frame.get('reason')}"[:200])

        return on_message

    request = json.dumps({"type": "subscribe", "id": 1, "channel": channel}).encode()
    for conn, sub in zip(conns, subs):
        conn.on_message = handler(sub)
        if conn.is_open:
            conn.send(request)
    started = time.perf_counter()
    deadline = started + timeout
    try:
        await asyncio.wait_for(all_subscribed.wait(), timeout)
    except TimeoutError:
        pass
    subscribe_s = time.perf_counter() - started
    publisher = conns[0]
    if subscribed < n:
        all_subscribed.set()  # judge over those that did subscribe; the rest count as not reached
    for i in range(k if subscribed and publisher.is_open and subs[0].subscribed else 0):
        if time.perf_counter() >= deadline:
            break
        published_at.append(time.perf_counter())
        publisher.send(json.dumps({"type": "publish", "id": 100 + i, "channel": channel, "data": {"i": i}}).encode())
        if counts[i] >= subscribed:
            reached_all[i].set()
        try:
            await asyncio.wait_for(reached_all[i].wait(), max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            break
        if progress:
            progress.update(i + 1, k, f"message {i + 1} reached {counts[i]:,} of {n:,}")
    total_s = time.perf_counter() - started
    for conn in conns:
        conn.on_message = lambda payload, op: None

    hist = HdrHistogram(*HIST_ARGS)
    per_conn_last = HdrHistogram(*HIST_ARGS)  # per connection: publish of the message to its arrival, worst of k
    for sub in subs:
        worst = 0.0
        for i, t in zip(sub.received, sub.times):
            if i < len(published_at):
                lat = t - published_at[i]
                hist.record_value(max(1, int(lat * 1e6)))
                worst = max(worst, lat)
        if sub.received:
            per_conn_last.record_value(max(1, int(worst * 1e6)))
    fanout = []  # per message: publish to the last delivery
    for i, t0 in enumerate(published_at):
        last = max((t for sub in subs for j, t in zip(sub.received, sub.times) if j == i), default=None)
        fanout.append(None if last is None else round((last - t0) * 1000, 3))
    complete = sum(1 for sub in subs if sub.in_order(k))
    got_all_any_order = sum(1 for sub in subs if sorted(set(sub.received)) == list(range(k)))
    missing = sum(k - len(set(sub.received)) for sub in subs)
    duplicates = sum(len(sub.received) - len(set(sub.received)) for sub in subs)
    errors = [e for sub in subs for e in sub.errors][:5]
    done_times = [f for f in fanout if f is not None]
    return {
        "channel": channel,
        "connections": n,
        "messages": k,
        "subscribed": subscribed,
        "subscribe_s": round(subscribe_s, 3),
        "published": len(published_at),
        "publish_acks": len(acks),
        "connections_got_all_in_order": complete,
        "connections_got_all": got_all_any_order,
        "missing_deliveries": missing,
        "duplicate_deliveries": duplicates,
        "out_of_order_connections": got_all_any_order - complete,
        "unparsed_frames": sum(sub.bad for sub in subs),
        "errors_sample": errors,
        "deliveries": sum(len(sub.received) for sub in subs),
        "delivery_latency_ms": summary(hist),
        "delivery_latency_curve": curve(hist),
        "per_connection_worst_ms": summary(per_conn_last),
        "fanout_complete_ms": fanout,
        "fanout_complete_ms_max": max(done_times) if done_times else None,
        "fanout_complete_ms_median": sorted(done_times)[len(done_times) // 2] if done_times else None,
        "broadcast_s": round(total_s, 3),
        "timeout_s": timeout,
        "passed": complete == n and len(published_at) == k,
    }


async def run(host: str, port: int, path: str, args: Any, more: list[tuple[str, int, str]] | None = None) -> dict:
    """The connect run against ``host:port`` (and ``more`` servers: connections round-robin)."""
    targets = [(host, port, path), *(more or [])]
    raise_nofile_limit()
    progress = None if args.quiet else Progress(f"connect {args.hold:,}")
    cpu = CpuClock()
    open_hist = HdrHistogram(*HIST_ARGS)
    t0 = time.perf_counter()
    conns, errors, _ = await _open_all(
        host, port, path, args.hold, args.concurrency, open_hist, progress, args.timeout, more=more
    )
    open_wall = time.perf_counter() - t0
    if progress:
        progress.done()
    await asyncio.sleep(args.hold_seconds)
    still_open = sum(1 for c in conns if c.is_open)
    pings = sum(c.pings for c in conns)
    result: dict = {
        "connections_requested": args.hold,
        "connections_opened": len(conns),
        "connect_failures": len(errors),
        "connect_errors_sample": [e for e in errors if e][:5],
        "establishment_rate_conn_s": round(len(conns) / open_wall, 1) if open_wall > 0 else 0.0,
        "open_phase_s": round(open_wall, 3),
        "connect_time_ms": summary(open_hist),
        "connect_time_curve": curve(open_hist),
        "hold_seconds": args.hold_seconds,
        "held_open_at_end": still_open,
        "held_success_rate": round(still_open / args.hold, 6),
        "heartbeat_pings_received": pings,
    }
    if args.broadcast:
        live = [c for c in conns if c.is_open]
        bprogress = None if args.quiet else Progress(f"broadcast {args.broadcast} to {len(live):,}")
        if live:
            result["broadcast"] = await _broadcast(live, args.broadcast, args.broadcast_timeout, bprogress)
        else:
            result["broadcast"] = {
                "connections": 0,
                "messages": args.broadcast,
                "passed": False,
                "connections_got_all_in_order": 0,
                "published": 0,
            }
        result["broadcast"]["held_connections"] = args.hold
        if bprogress:
            bprogress.done()
    if args.churn:
        rng = random.Random(args.seed)
        victims = rng.sample([c for c in conns if c.is_open], min(args.churn, sum(1 for c in conns if c.is_open)))
        rejected_before = await _all_rejections(targets)
        for c in victims:
            c.abort()
        await asyncio.sleep(0.05)
        storm_hist = HdrHistogram(*HIST_ARGS)
        t1 = time.perf_counter()
        new, storm_errors, stats = await _open_all(
            host,
            port,
            path,
            len(victims),
            args.concurrency,
            storm_hist,
            None,
            args.timeout,
            retry=True,
            rng=rng,
            more=more,
        )
        storm_wall = time.perf_counter() - t1
        rejected_after = await _all_rejections(targets)
        dropped = set(victims)
        conns = [c for c in conns if c not in dropped] + new
        result["churn"] = {
            "dropped": len(victims),
            "reconnected": len(new),
            "failed": len(storm_errors),
            "success_rate": round(len(new) / len(victims), 6) if victims else 1.0,
            "first_try": stats["first_try"],
            "after_retry": stats["retried_ok"],
            "first_try_rate": round(stats["first_try"] / len(victims), 6) if victims else 1.0,
            "attempts": stats["attempts"],
            "refused_and_retried": stats["refusals"],
            "refusals_sample": stats["refusals_sample"],
            "server_rejections": _diff(rejected_before, rejected_after),
            "storm_s": round(storm_wall, 3),
            "reconnect_time_ms": summary(storm_hist),
            "reconnect_time_curve": curve(storm_hist),
            "errors_sample": [e for e in storm_errors if e][:5],
        }
    result["client_cpu_percent"] = cpu.percent()
    await asyncio.gather(*(c.close(timeout=3.0) for c in conns), return_exceptions=True)
    return result


def _failures(result: dict, hold: int) -> list[str]:
    """One line per thing that went wrong, with its counts; empty when the run passed."""
    out = []
    if result["connect_failures"] or result["held_open_at_end"] != hold:
        out.append(
            f"opened {result['connections_opened']:,} of {hold:,}, {result['held_open_at_end']:,} still "
            f"open after {result['hold_seconds']}s; errors: {result['connect_errors_sample']}"
        )
    b = result.get("broadcast")
    if b is not None and not b["passed"]:
        out.append(
            f"broadcast: {b['connections_got_all_in_order']:,} of {b['held_connections']:,} held connections "
            f"got all {b['messages']} messages in order; subscribed {b.get('subscribed', 0):,}, published "
            f"{b['published']} of {b['messages']}, missing deliveries {b.get('missing_deliveries', 'n/a')}, "
            f"duplicates {b.get('duplicate_deliveries', 'n/a')}, out of order "
            f"{b.get('out_of_order_connections', 'n/a')}, within {b.get('timeout_s')}s; "
            f"errors: {b.get('errors_sample', [])}"
        )
    ch = result.get("churn")
    if ch is not None and ch["failed"]:
        out.append(
            f"storm: {ch['reconnected']:,} of {ch['dropped']:,} reconnected within --timeout; "
            f"errors: {ch['errors_sample']}; refused and retried: {ch['refused_and_retried']}; "
            f"server rejections: {ch['server_rejections']}"
        )
    return out


def command(args: Any) -> int:
    if args.hold > MAX_CONNECTIONS:
        raise UsageError(f"--hold is at most {MAX_CONNECTIONS:,} on this machine (fd limit)")
    if args.churn < 0 or args.churn > args.hold:
        raise UsageError("--churn must be between 0 and --hold")
    if args.broadcast < 0 or args.broadcast > 10_000:
        raise UsageError("--broadcast must be between 0 and 10,000")
    info = machine()
    if args.url:
        (host, port, path), *more = [parse_url(url) for url in args.url]
        result = asyncio.run(run(host, port, path, args, more))
        target = args.url[0] if len(args.url) == 1 else f"{', '.join(args.url)} (connections round-robin)"
        result.update(target=target, server_peak_rss_mb=None)
    else:
        extra = ["--heartbeat-interval", str(args.heartbeat_interval), "--max-connections", str(MAX_CONNECTIONS + 100)]
        with ManagedServer(extra) as server:
            result = asyncio.run(run("127.0.0.1", server.port, "/", args))
            server.sample()
            result.update(
                target=f"ws://127.0.0.1:{server.port}/ (started by the harness, heartbeat {args.heartbeat_interval}s)",
                server_peak_rss_mb=round(server.peak_rss / 2**20, 1),
            )
    c = result["connect_time_ms"]
    rows = [
        ("connections opened", f"{result['connections_opened']:,} of {result['connections_requested']:,}"),
        ("establishment rate conn/s", result["establishment_rate_conn_s"]),
        ("connect p50 / p95 / p99 ms", f"{c['p50']} / {c['p95']} / {c['p99']}"),
        (
            f"still open after {result['hold_seconds']}s",
            f"{result['held_open_at_end']:,} ({result['held_success_rate']:.2%})",
        ),
        ("heartbeat pings received", result["heartbeat_pings_received"]),
        ("server peak RSS MB", "n/a" if result["server_peak_rss_mb"] is None else result["server_peak_rss_mb"]),
        ("client CPU % of a core", result["client_cpu_percent"]),
    ]
    if "broadcast" in result and "delivery_latency_ms" in result["broadcast"]:
        b = result["broadcast"]
        d = b["delivery_latency_ms"]
        rows += [
            (
                f"broadcast: got all {b['messages']} in order",
                f"{b['connections_got_all_in_order']:,} of {b['held_connections']:,}",
            ),
            ("broadcast: subscribed / published", f"{b['subscribed']:,} / {b['published']} of {b['messages']}"),
            ("broadcast: delivery p50 / p99 / max ms", f"{d['p50']} / {d['p99']} / {d['max']}"),
            (
                "broadcast: all had a message, median / max ms",
                f"{b['fanout_complete_ms_median']} / {b['fanout_complete_ms_max']}",
            ),
            ("broadcast: subscribe all s / whole step s", f"{b['subscribe_s']} / {b['broadcast_s']}"),
        ]
    if "churn" in result:
        ch = result["churn"]
        r = ch["reconnect_time_ms"]
        rows += [
            ("storm: dropped / reconnected", f"{ch['dropped']:,} / {ch['reconnected']:,}"),
            ("storm: success rate", f"{ch['success_rate']:.2%}"),
            ("storm: first try / after a retry", f"{ch['first_try']:,} / {ch['after_retry']:,}"),
            (
                "storm: refused by the server (retried)",
                ", ".join(f"{k} {v:,}" for k, v in ch["refused_and_retried"].items()) or "0",
            ),
            ("storm: reconnect p50 / p99 ms", f"{r['p50']} / {r['p99']}"),
            ("storm: all back within s", ch["storm_s"]),
        ]
    print(f"wsnursery connect — {args.hold:,} connections, seed {args.seed}")
    print(machine_line(info))
    print(table(["", "connect"], rows))
    write_outputs(args, {"command": "connect", "machine": info, "result": result}, [result])
    failures = _failures(result, args.hold)
    for line in failures:
        print(f"FAILED {line}")
    return 1 if failures else 0
