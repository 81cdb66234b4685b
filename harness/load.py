"""``python -m harness load``: throughput and latency over real WebSocket connections.

One asyncio process drives every client with the lean frame parser of ``harness/rawws.py``
(so the load generator stays cheaper than the server it measures). Each client keeps a window
of messages in flight:

- ``fanout`` (pub/sub round trip): the client subscribes to its own channel, publishes its
  messages there and times each one from ``publish`` sent to ``message`` received. Needs a
  wsnursery server.
- ``echo``: the client sends to ``/echo`` (or the path of ``--url``) and times each message
  until it comes back. Works against any WebSocket echo server.

``--url`` given several times (the nodes of one cluster on a shared engine) spreads the
clients round-robin over them: client ``i`` connects to URL ``i mod n``.

Latency goes into an HDR histogram (microseconds, 3 significant digits). The client's own
CPU is measured; above 90 % of one core the client, not the server, set the pace and the
report says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import random
import re
import threading
import time
import urllib.parse
from typing import Any, Self

import psutil
from hdrh.histogram import HdrHistogram

from harness import rawws
from harness.machine import describe
from harness.report import Progress
from harness.servers import ServerProcess, raise_nofile_limit, wsnursery_argv
from harness.timeline import Timeline, curve

SCENARIOS: dict[str, tuple[int, int, int]] = {  # name -> clients, messages per client, payload bytes
    "small": (10, 100, 64),
    "medium": (50, 200, 64),
    "high": (100, 500, 64),
    "stress": (200, 1000, 64),
    "latency": (20, 1000, 16),
}
HIST_ARGS = (1, 120_000_000, 3)
CLIENT_BOTTLENECK_CPU = 90.0
_FRAME_RE = re.compile(rb'"type"\s*:\s*"(\w+)"')
_DATA_RE = re.compile(rb'"data"\s*:\s*"(\d+):')


class UsageError(ValueError):
    """A bad option combination: the command prints it in one line and exits 2."""


def parse_url(url: str) -> tuple[str, int, str]:
    """``ws://127.0.0.1:PORT/path`` -> (host, port, path); only loopback addresses. A query is
    kept on the path: ``?token=JWT`` runs the clients against a server with tokens on."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or not parts.port:
        raise UsageError(f"--url must look like ws://127.0.0.1:PORT/, not {url!r}")
    host = parts.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UsageError("--url must point at a loopback address (127.0.0.1, localhost, [::1])")
    else:
        host = "127.0.0.1"
    return host, parts.port, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def summary(hist: HdrHistogram) -> dict[str, float]:
    """Percentiles in milliseconds."""
    if hist.get_total_count() == 0:
        return {k: 0.0 for k in ("min", "p50", "p95", "p99", "p999", "max", "mean")}

    def ms(us: float) -> float:
        return round(us / 1000.0, 3)

    return {
        "min": ms(hist.get_min_value()),
        "p50": ms(hist.get_value_at_percentile(50)),
        "p95": ms(hist.get_value_at_percentile(95)),
        "p99": ms(hist.get_value_at_percentile(99)),
        "p999": ms(hist.get_value_at_percentile(99.9)),
        "max": ms(hist.get_max_value()),
        "mean": ms(hist.get_mean_value()),
    }


class ManagedServer:
    """``python -m wsnursery serve`` on 127.0.0.1:0 with its peak RSS sampled in a thread."""

    def __init__(self, extra: list[str] | None = None) -> None:
        self.proc = ServerProcess("wsnursery", wsnursery_argv(*(extra or [])))
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.proc.start()
        self._ps = psutil.Process(self.proc.pid)
        self.sample()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return self.proc.port

    def sample(self) -> int:
        try:
            rss = self._ps.memory_info().rss
        except psutil.Error:
            return 0
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def cpu_seconds(self) -> float:
        try:
            t = self._ps.cpu_times()
        except psutil.Error:
            return 0.0
        return t.user + t.system

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(1.0)
        self.proc.stop()


class CpuClock:
    """This process's CPU use as a percentage of one core over a span.

    ``time.process_time`` reads the process CPU clock to the nanosecond; psutil's CPU times
    count in clock ticks (10 ms), which over a short run gave figures above 200%.
    """

    def __init__(self) -> None:
        self._cpu, self._wall = time.process_time(), time.monotonic()

    def percent(self) -> float:
        wall = time.monotonic() - self._wall
        return round(100.0 * (time.process_time() - self._cpu) / wall, 1) if wall > 0 else 0.0


@dataclasses.dataclass
class LoadSpec:
    clients: int
    messages: int
    size: int = 64
    mode: str = "fanout"
    encoding: str = "json"
    window: int = 16
    timeout: float = 60.0
    seed: int = 1
    connect_concurrency: int = 200


class _Client:
    def __init__(self, cid: int, spec: LoadSpec, hist: HdrHistogram, totals: dict, pad: bytes) -> None:
        self.cid, self.spec, self.hist, self.totals = cid, spec, hist, totals
        self.pad = pad
        self.channel = f"load.{spec.seed}.{cid}"
        self.sent_at: list[float] = []
        self.received = 0
        self.errors = 0
        self.done = asyncio.get_running_loop().create_future()
        self.subscribed = asyncio.get_running_loop().create_future()
        self.ws: rawws.RawWS | None = None
        self.cbor = spec.encoding == "cbor"
        if self.cbor:
            import cbor2

            self._loads, self._dumps = cbor2.loads, cbor2.dumps

    # outgoing -------------------------------------------------------------------------
    def _frame(self, i: int) -> bytes:
        if self.spec.mode == "echo":
            return f"{i}:".encode() + self.pad
        if self.cbor:
            return self._dumps(
                {"type": "publish", "id": i, "channel": self.channel, "data": f"{i}:" + self.pad.decode()}
            )
        return b'{"type":"publish","id":%d,"channel":"%s","data":"%d:%s"}' % (i, self.channel.encode(), i, self.pad)

    def send_next(self) -> None:
        i = len(self.sent_at)
        if i >= self.spec.messages or self.ws is None or not self.ws.is_open:
            return
        self.sent_at.append(time.perf_counter())
        self.ws.send(self._frame(i), rawws.OP_BINARY if self.cbor else rawws.OP_TEXT)

    # incoming -------------------------------------------------------------------------
    def on_message(self, payload: bytes, opcode: int) -> None:
        now = time.perf_counter()
        index = self._index(payload)
        if index is None:
            return
        if 0 <= index < len(self.sent_at):
            self.hist.record_value(max(1, int((now - self.sent_at[index]) * 1e6)))
            self.received += 1
            self.totals["received"] += 1
            self.send_next()
            if self.received >= self.spec.messages and not self.done.done():
                self.done.set_result(None)

    def _index(self, payload: bytes) -> int | None:
        if self.spec.mode == "echo":
            head, _, _ = payload.partition(b":")
            return int(head) if head.isdigit() else None
        if self.cbor:
            frame = self._loads(payload)
            kind = frame.get("type")
            if kind == "message":
                return int(str(frame["data"]).partition(":")[0])
            self._control(kind, frame)
            return None
        m = _FRAME_RE.search(payload)
        kind = m.group(1).decode() if m else ""
        if kind == "message":
            d = _DATA_RE.search(payload)
            return int(d.group(1)) if d else None
        self._control(kind, json.loads(payload) if kind == "error" else {})
        return None

    def _control(self, kind: str | None, frame: dict) -> None:
        if kind == "subscribed" and not self.subscribed.done():
            self.subscribed.set_result(None)
        elif kind == "error":
            self.errors += 1
            self.totals["error_frames"] += 1
            if not self.subscribed.done():
                self.subscribed.set_exception(RuntimeError(f"subscribe refused: {frame.get('code')}"))

    # lifecycle ------------------------------------------------------------------------
    async def open(self, host: str, port: int, path: str) -> float:
        started = time.perf_counter()
        sub = "wsnursery.v1.cbor" if self.cbor and self.spec.mode == "fanout" else None
        self.ws = await rawws.connect(host, port, path, self.on_message, subprotocol=sub, timeout=10.0)
        elapsed = time.perf_counter() - started
        if self.spec.mode == "fanout":
            request = {"type": "subscribe", "id": self.spec.messages + 1, "channel": self.channel}
            self.ws.send(
                self._dumps(request) if self.cbor else json.dumps(request).encode(),
                rawws.OP_BINARY if self.cbor else rawws.OP_TEXT,
            )
            await asyncio.wait_for(self.subscribed, 10.0)
        return elapsed

    def start(self) -> None:
        for _ in range(min(self.spec.window, self.spec.messages)):
            self.send_next()
        if self.spec.messages == 0 and not self.done.done():
            self.done.set_result(None)


async def drive(
    host: str,
    port: int,
    path: str,
    spec: LoadSpec,
    progress: Progress | None = None,
    more: list[tuple[str, int, str]] | None = None,
) -> dict:
    """Open ``spec.clients`` connections, run every client's messages, close; return figures.

    With ``more`` targets, client ``i`` connects to the ``i mod n``-th of ``(host, port, path), *more``."""
    targets = [(host, port, path), *(more or [])]
    raise_nofile_limit()
    rng = random.Random(spec.seed)
    pad = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(max(0, spec.size))).encode()
    hist = HdrHistogram(*HIST_ARGS)
    connect_hist = HdrHistogram(*HIST_ARGS)
    totals = {"received": 0, "error_frames": 0}
    clients = [_Client(i, spec, hist, totals, pad) for i in range(spec.clients)]
    gate = asyncio.Semaphore(spec.connect_concurrency)
    connect_errors: list[str] = []
    cpu = CpuClock()

    async def open_one(c: _Client) -> bool:
        async with gate:
            try:
                elapsed = await c.open(*targets[c.cid % len(targets)])
            except Exception as exc:
                connect_errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if c.ws is not None:
                    c.ws.abort()
                c.ws = None
                return False
            connect_hist.record_value(max(1, int(elapsed * 1e6)))
            return True

    t0 = time.perf_counter()
    opened = await asyncio.gather(*(open_one(c) for c in clients))
    connect_wall = time.perf_counter() - t0
    live = [c for c, ok in zip(clients, opened) if ok]
    total = spec.clients * spec.messages
    t1 = time.perf_counter()
    timeline = Timeline()  # messages received so far, for the HTML report
    timeline.add(received=0)
    for c in live:
        c.start()
    waiter = asyncio.ensure_future(asyncio.wait([c.done for c in live], timeout=spec.timeout)) if live else None
    timed_out = False
    while waiter is not None and not waiter.done():
        await asyncio.wait([waiter], timeout=0.02)
        timeline.add(received=totals["received"])
        if progress:
            elapsed = time.perf_counter() - t1
            progress.update(totals["received"], total, f"{totals['received'] / max(elapsed, 1e-9):,.0f} msg/s")
    if waiter is not None:
        _, pending = waiter.result()
        timed_out = bool(pending)
    run_wall = time.perf_counter() - t1
    if progress:
        progress.update(totals["received"], total, "done", force=True)
        progress.done()
    client_cpu = cpu.percent()
    await asyncio.gather(*(c.ws.close(timeout=3.0) for c in live if c.ws is not None), return_exceptions=True)
    received = totals["received"]
    failed = total - received
    return {
        "mode": spec.mode,
        "encoding": spec.encoding,
        "clients": spec.clients,
        "messages_per_client": spec.messages,
        "payload_bytes": spec.size,
        "window": spec.window,
        "seed": spec.seed,
        "messages_total": total,
        "messages_received": received,
        "errors": failed + totals["error_frames"],
        "error_frames": totals["error_frames"],
        "error_rate": round((failed / total) if total else 0.0, 6),
        "connections_ok": len(live),
        "connections_failed": len(connect_errors),
        "connect_errors_sample": connect_errors[:5],
        "timed_out": timed_out,
        "throughput_msg_s": round(received / run_wall, 1) if run_wall > 0 else 0.0,
        "elapsed_s": round(run_wall, 3),
        "connect_phase_s": round(connect_wall, 3),
        "latency_ms": summary(hist),
        "connect_time_ms": summary(connect_hist),
        "client_cpu_percent": client_cpu,
        "client_bound": client_cpu >= CLIENT_BOTTLENECK_CPU,
        "latency_curve": curve(hist),
        "timeline": timeline.points,
    }


def machine() -> dict:
    return describe()


def machine_line(info: dict) -> str:
    return (
        f"machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs, {info['ram_gib']} GiB, "
        f"{info['os']}, {info['python']}"
    )


def bottleneck_note(result: dict) -> str:
    if result["client_bound"]:
        return (
            f"note: the client used {result['client_cpu_percent']:.0f}% of a core: it was the bottleneck, "
            "so the server may be faster than these figures"
        )
    return f"client CPU {result['client_cpu_percent']:.0f}% of a core: the client was not the bottleneck"


# -- the ``load`` command --------------------------------------------------------------------


def add_arguments(p: Any, positive_int: Any, positive_float: Any) -> None:
    p.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        help="named size: small 10x100, medium 50x200, high 100x500, stress 200x1000 "
        "(clients x messages), latency 20x1000 16-byte messages",
    )
    p.add_argument("--clients", type=positive_int, help="concurrent WebSocket clients (default 10)")
    p.add_argument("--messages", type=positive_int, help="messages per client (default 100)")
    p.add_argument("--size", type=positive_int, help="payload bytes per message (default 64)")
    p.add_argument(
        "--mode",
        choices=["fanout", "echo"],
        default="fanout",
        help="fanout: publish to own channel and time the delivered message (wsnursery); "
        "echo: time the echoed message (any echo server) (default fanout)",
    )
    p.add_argument("--encoding", choices=["json", "cbor"], default="json", help="wire encoding (default json)")
    p.add_argument(
        "--window",
        type=positive_int,
        help="messages in flight per client (default 16; 1 for --scenario latency, so latency is not queueing)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="seconds the message phase may take; unfinished messages count as errors (default 60)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of payloads and channel names (default 1)")
    p.add_argument(
        "--url",
        action="append",
        help="aim at a running server on loopback (ws://127.0.0.1:PORT/) instead of starting "
        "wsnursery; in echo mode any WebSocket echo server; again for each node of a cluster "
        "(one shared engine): the clients are spread round-robin over the URLs",
    )
    p.add_argument("--output", metavar="FILE", help="write the report as JSON (as CSV when FILE ends in .csv)")
    p.add_argument("--csv", metavar="FILE", help="also write one CSV row of the figures")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def spec_from_args(args: Any) -> LoadSpec:
    clients, messages, size = SCENARIOS.get(args.scenario or "", (10, 100, 64))
    return LoadSpec(
        clients=args.clients or clients,
        messages=args.messages or messages,
        size=args.size or size,
        mode=args.mode,
        encoding=args.encoding,
        window=args.window or (1 if args.scenario == "latency" else 16),
        timeout=args.timeout,
        seed=args.seed,
    )


def run_with_server(
    spec: LoadSpec, url: str | list[str] | None, label: str, quiet: bool, server_extra: list[str] | None = None
) -> dict:
    """Run ``spec`` against ``url`` (several: clients round-robin over them), or a server of its own."""
    progress = None if quiet else Progress(label)
    urls = [url] if isinstance(url, str) else list(url or [])
    if urls:
        first, *more = [parse_url(u) for u in urls]
        result = asyncio.run(drive(*first, spec, progress, more=more))
        target = urls[0] if len(urls) == 1 else f"{', '.join(urls)} (clients round-robin)"
        result.update(target=target, server_rss_mb=None, server_peak_rss_mb=None, server_cpu_percent=None)
        return result
    with ManagedServer(server_extra) as server:
        path = "/echo" if spec.mode == "echo" else "/"
        before, started = server.cpu_seconds(), time.monotonic()
        result = asyncio.run(drive("127.0.0.1", server.port, path, spec, progress))
        wall = time.monotonic() - started
        result["server_cpu_percent"] = round(100.0 * (server.cpu_seconds() - before) / wall, 1) if wall > 0 else None
        rss = server.sample()
        result.update(
            target=f"ws://127.0.0.1:{server.port}{path} (started by the harness)",
            server_rss_mb=round(rss / 2**20, 1),
            server_peak_rss_mb=round(server.peak_rss / 2**20, 1),
        )
    return result


def rows(result: dict) -> list[tuple]:
    lat, con = result["latency_ms"], result["connect_time_ms"]
    rss = (
        "n/a (external server)"
        if result.get("server_rss_mb") is None
        else f"{result['server_rss_mb']} MB (peak {result['server_peak_rss_mb']} MB)"
    )
    return [
        ("mode / encoding", f"{result['mode']} / {result['encoding']}"),
        ("clients x messages", f"{result['clients']} x {result['messages_per_client']} ({result['payload_bytes']} B)"),
        ("throughput msg/s", result["throughput_msg_s"]),
        ("latency p50 ms", lat["p50"]),
        ("latency p95 ms", lat["p95"]),
        ("latency p99 ms", lat["p99"]),
        ("latency p99.9 ms", lat["p999"]),
        ("latency max ms", lat["max"]),
        ("connect p50 / p99 ms", f"{con['p50']} / {con['p99']}"),
        ("connections ok / failed", f"{result['connections_ok']} / {result['connections_failed']}"),
        ("messages received", f"{result['messages_received']:,} of {result['messages_total']:,}"),
        ("error rate", f"{result['error_rate']:.2%}"),
        ("elapsed s", result["elapsed_s"]),
        ("server RSS", rss),
        ("server CPU % of a core", "n/a" if result.get("server_cpu_percent") is None else result["server_cpu_percent"]),
        ("client CPU % of a core", result["client_cpu_percent"]),
    ]


def flat(result: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in result.items():
        if key == "timeline" or key.endswith("_curve"):
            continue  # series for the HTML report, not figures for a CSV row
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out[prefix + key] = " | ".join(map(str, value))
        else:
            out[prefix + key] = value
    return out


def write_csv(path: str, records: list[dict]) -> None:
    import csv

    flats = [flat(r) for r in records]
    fields: list[str] = []
    for f in flats:
        fields.extend(k for k in f if k not in fields)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flats)


def write_outputs(args: Any, payload: dict, records: list[dict]) -> None:
    from harness.report import write_json

    if args.output:
        if args.output.endswith(".csv"):
            write_csv(args.output, records)
        else:
            write_json(args.output, payload)
    if getattr(args, "csv", None):
        write_csv(args.csv, records)
    if getattr(args, "html", None):
        from harness.html_report import write_html

        write_html(args.html, payload)


def command(args: Any) -> int:
    from harness.report import table

    spec = spec_from_args(args)
    for url in args.url or ():
        parse_url(url)
    info = machine()
    result = run_with_server(spec, args.url, f"load {spec.clients}x{spec.messages}", args.quiet)
    name = args.scenario or "custom"
    print(f"wsnursery load — scenario {name}, seed {spec.seed}")
    print(machine_line(info))
    print(table(["", name], rows(result)))
    print(bottleneck_note(result))
    write_outputs(args, {"command": "load", "scenario": name, "machine": info, "result": result}, [result])
    return 0 if result["error_rate"] == 0 and not result["connections_failed"] else 1
