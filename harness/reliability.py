"""``python -m harness reliability``: prove nothing is lost when the network misbehaves.

A run starts its own wsnursery server (or targets ``--url``, or several: the nodes of one
cluster), puts a frame-aware fault proxy in front of it for each client, and drives
publishers and subscribers written with the project's client SDK through their proxies.
Publishers send a seeded stream (``streams``: message ``i`` is a pure function of the seed
and ``i``, made when it is sent); subscribers record what their application sees; the
``Ledger`` then counts what was lost, duplicated, reordered or corrupted. The run passes only when all of those are zero,
every publish was confirmed, and (at a failure rate above 0) faults really fired.

One proxy per client, each with its own schedule (seeded by ``seed:client``), so a fault's
connection index is that client's own k-th connection, whatever the others do, and the
report can tell how long each fault took to heal on the link it hit (``recovery``).
With several ``urls`` each client's proxy listens once per URL (``FaultProxy.more_upstreams``)
and the client connects with the list of its proxy's ports, so the SDK fails over from a
node that is down to the next one through the same proxy and the same schedule; client
``i`` starts at URL ``i mod n``, so the clients are spread over the nodes.

Two shapes of run: ``messages`` publishes (``duration`` caps the run, default 120 s plus
10 ms a message), or a soak (``soak=True``): publish continuously for ``duration``
seconds (or until ``streams.MAX_MESSAGES`` were published), then stop and let delivery
finish within ``DRAIN_LIMIT``. Every run is bounded and talks only to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import math
import random
import time
import urllib.parse
from array import array
from typing import Any

import attrs
import trio
from hdrh.histogram import HdrHistogram

from harness import nodes, recovery, streams
from harness.check import Ledger, SubscriberLog, Verdict
from harness.faults import ALL_KINDS, FaultKind, FaultSchedule
from harness.proxy import FaultProxy
from harness.report import Progress
from harness.timeline import Timeline, curve
from wsnursery import client as sdk
from wsnursery.client.transport import parse_url as sdk_parse_url
from wsnursery.config import Config
from wsnursery.server import Server

SCENARIOS = {"normal": 0.0, "low": 0.05, "high": 0.15, "extreme": 0.25}

# Timers of the harness's own server and clients: short, so faults heal within a second or so.
SERVER_SETTINGS: dict[str, Any] = {
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 1.0,
    "ack_timeout": 0.25,  # above the client's 50 ms ack interval plus a round trip: 0.1 resent needlessly
    "ack_max_timeout": 2.0,
    "history_size": 65_536,
    "outbound_queue_size": 8192,
    "max_unacked": 8192,
    "max_message_size": 4 * 2**20,
    "close_timeout": 0.5,
    "shutdown_timeout": 1.0,
}
# What each bought at --failure-rate 0.15 (seed 4242, 600 messages; README "Recovery figures"):
# a stall is detected within ~0.3 s (heartbeat), a reset link is redialled within 5-50 ms
# (backoff: loopback, and max_reconnects bounds a dead server at ~5 s), unanswered requests
# and publishes are re-sent after 0.25 s. The heartbeat timeout stays above the proxy's
# 0.2 s delay spike, which holds pongs too.
CLIENT_SETTINGS: dict[str, Any] = {
    "heartbeat_interval": 0.05,
    "heartbeat_timeout": 0.25,
    "request_timeout": 0.25,
    "backoff_base": 0.005,
    "backoff_max": 0.05,
    "publish_backoff_max": 0.5,
    "max_reconnects": 100,
}


DRAIN_LIMIT = 60.0  # seconds a soak may take to deliver what it published, after publishing
READY_LIMIT = 30.0  # seconds every subscriber may take to subscribe before the run fails
# Publishes one publisher keeps in flight (the SDK allows 256), unless --publish-window says.
# With rare faults a window is what makes long runs fast (5,000 messages at 0.01: 40 s one at
# a time, 16 s with 32); with frequent ones it only makes every resend and replay longer and
# so more often cut short by the next fault (at 0.15, seed 4242: p99 3.6-3.9 s one at a time,
# 6-12 s with 2, 8 s with 32).
PUBLISH_WINDOW = 32
WINDOW_MAX_RATE = 0.02  # above this failure rate, one publish at a time
# Publishers wait while the slowest subscriber is this many messages behind on a channel:
# with rare faults and 32 in flight, publishers otherwise outran the subscribers that were
# replaying (100,000 messages at 0.01 on a quiet machine: p99 48 s, replays of ~150 messages
# cut short again and again). The bound keeps replays and the latency tail bounded.
MAX_LAG = 500
MAX_PUBLISH_WINDOW = 256
MAX_CLIENTS = 256  # subscribers plus publishers: each has its own proxy (a listener, two sockets a link)
MAX_CHANNELS = 1000
MAX_URLS = 16  # --url given this many times at most (each is a listener of every client's proxy)


class OptionError(ValueError):
    """Options no run can satisfy (the message says which)."""


@attrs.define
class Options:
    failure_rate: float = 0.15
    clients: int = 4  # subscribing clients
    publishers: int = 2
    channels: int = 3
    messages: int = 300
    duration: float | None = None  # messages: cap (None: 120 s + 10 ms a message); soak: publishing time
    soak: bool = False
    max_payload: int = streams.MAX_PAYLOAD
    encoding: str = "cbor"
    seed: int = 1
    urls: tuple[str, ...] = attrs.field(default=(), converter=tuple)  # running servers (the nodes of one cluster)
    engine: str = "memory"  # redis://...: the server runs as `nodes` processes on it (harness.nodes)
    nodes: int = 1
    kill_node: bool = False  # SIGKILL and restart one node at a time during the run
    faults: tuple[str, ...] = tuple(kind.value for kind in ALL_KINDS)
    publish_window: int | None = None  # None: PUBLISH_WINDOW up to WINDOW_MAX_RATE, else 1
    quiet: bool = False
    compression: str = "on"  # permessage-deflate: the server accepts it and the clients offer it (or neither)
    client_factory: Any = None  # tests swap in a deliberately broken client here

    @property
    def window(self) -> int:
        """Publishes each publisher keeps unconfirmed at once."""
        if self.publish_window is not None:
            return self.publish_window
        return PUBLISH_WINDOW if self.failure_rate <= WINDOW_MAX_RATE else 1

    @property
    def cap(self) -> float:
        """Seconds the whole run may take before it is stopped and judged (a failure)."""
        if self.soak:
            return (self.duration or 0.0) + DRAIN_LIMIT
        return self.duration if self.duration is not None else 120.0 + self.messages / 100

    def check(self) -> None:
        """Raise `OptionError` (or `streams.PlanError`) for options no run can satisfy."""
        if (self.nodes > 1 or self.kill_node) and not self.engine.startswith(("redis://", "rediss://", "unix://")):
            raise OptionError("--nodes and --kill-node need a shared engine: --engine redis://HOST:PORT/DB")
        if self.kill_node and self.nodes < 2:
            raise OptionError("--kill-node needs --nodes 2 or more (clients fail over to a live node)")
        if self.urls and (self.engine != "memory" or self.nodes > 1):
            raise OptionError("--url targets a running server; --engine and --nodes start servers")
        if len(self.urls) > MAX_URLS:
            raise OptionError(f"--url may be given at most {MAX_URLS} times, not {len(self.urls)}")
        for url in self.urls:
            check_url(url)
        if not is_finite_rate(self.failure_rate):
            raise OptionError(f"failure rate must be between 0 and 1, not {self.failure_rate}")
        for name in ("clients", "publishers", "channels"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.clients + self.publishers > MAX_CLIENTS:
            raise OptionError(
                f"clients plus publishers must be at most {MAX_CLIENTS}, not {self.clients + self.publishers}"
            )
        if self.publish_window is not None and not 1 <= self.publish_window <= MAX_PUBLISH_WINDOW:
            raise OptionError(f"publish window must be between 1 and {MAX_PUBLISH_WINDOW}, not {self.publish_window}")
        if self.channels > MAX_CHANNELS:
            raise OptionError(f"channels must be at most {MAX_CHANNELS}, not {self.channels}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise OptionError(f"duration must be a number of seconds above 0, not {self.duration}")
        if self.soak and self.duration is None:
            raise OptionError("a soak needs a duration")
        if self.encoding not in ("cbor", "json"):
            raise OptionError(f"encoding must be cbor or json, not {self.encoding!r}")
        known = {kind.value for kind in ALL_KINDS}
        if not self.faults or set(self.faults) - known:
            raise OptionError(f"faults must be some of {', '.join(sorted(known))}, not {self.faults}")
        streams.check(
            messages=None if self.soak else self.messages,
            publishers=self.publishers,
            channels=self.channels,
            max_payload=self.max_payload,
        )

    def case(self) -> dict[str, Any]:
        """The settings that make this run (what a replay file holds)."""
        return {
            "failure_rate": self.failure_rate,
            "clients": self.clients,
            "publishers": self.publishers,
            "channels": self.channels,
            "messages": self.messages,
            "duration": self.duration,
            "soak": self.soak,
            "max_payload": self.max_payload,
            "encoding": self.encoding,
            "seed": self.seed,
            "faults": list(self.faults),
            "publish_window": self.publish_window,
        }


@attrs.define
class Result:
    scenario: str
    failure_rate: float
    seed: int
    verdict: Verdict
    elapsed: float
    faults: dict[str, dict[str, int]]
    faults_total: int
    reconnects: int = 0
    replays: int = 0
    retransmits: int = 0
    publish_retries: int = 0
    heartbeat_timeouts: int = 0
    server_retransmits: int | None = None
    sessions: int = 0
    sessions_ok: int = 0
    latency_ms: dict[str, float] = attrs.field(factory=dict)
    throughput: float = 0.0  # deliveries per second, first publish to last delivery
    recovery: dict[str, Any] = attrs.field(factory=dict)
    timed_out: bool = False
    options: Options | None = None
    latency_curve: list[list[float]] = attrs.field(factory=list)  # [[percentile, ms], ...]
    timeline: list[dict[str, Any]] = attrs.field(factory=list)  # samples for the HTML report
    node_kills: int = 0

    @property
    def passed(self) -> bool:
        fired = self.faults_total > 0 or self.failure_rate == 0
        return self.verdict.clean and fired and not self.timed_out

    @property
    def session_success_rate(self) -> float:
        return self.sessions_ok / self.sessions if self.sessions else 0.0

    @property
    def failure_kinds(self) -> frozenset[str]:
        """What went wrong in delivery: lost, duplicated, reordered, corrupted, unconfirmed."""
        v = self.verdict
        counts = {
            "lost": v.lost,
            "duplicated": v.duplicated,
            "reordered": v.reordered,
            "corrupted": v.corrupted,
            "unconfirmed": v.unconfirmed,
        }
        return frozenset(kind for kind, count in counts.items() if count)

    def as_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "scenario": self.scenario,
            "failure_rate": self.failure_rate,
            "seed": self.seed,
            "passed": self.passed,
            "elapsed_s": round(self.elapsed, 3),
            "published": v.published,
            "delivered": v.delivered,
            "expected_deliveries": v.expected,
            "lost": v.lost,
            "duplicated": v.duplicated,
            "reordered": v.reordered,
            "corrupted": v.corrupted,
            "unconfirmed_publishes": v.unconfirmed,
            "gaps_reported": v.gaps,
            "session_success_rate": round(self.session_success_rate, 4),
            "reconnects": self.reconnects,
            "replays": self.replays,
            "retransmits_dropped_by_clients": self.retransmits,
            "server_retransmits": self.server_retransmits,
            "publish_retries": self.publish_retries,
            "heartbeat_timeouts": self.heartbeat_timeouts,
            "faults_injected": self.faults,
            "faults_total": self.faults_total,
            "latency_ms": self.latency_ms,
            "throughput_deliveries_per_s": round(self.throughput, 1),
            "recovery": self.recovery,
            "timed_out": self.timed_out,
            "node_kills": self.node_kills,
            "examples": v.examples,
            "case": self.options.case() if self.options else None,
            "latency_curve": self.latency_curve,
            "timeline": self.timeline,
        }


async def run(options: Options, scenario: str = "custom") -> Result:
    """One reliability run at ``options.failure_rate``; `OptionError`/`PlanError` for bad options."""
    options.check()
    recipe = streams.stream(
        options.seed, publishers=options.publishers, channels=options.channels, max_payload=options.max_payload
    )
    kinds = frozenset(FaultKind(kind) for kind in options.faults)
    run_id = f"{options.seed}-{random.Random().randrange(16**6):06x}"
    prefix = f"wsnrel:{run_id}:"
    async with trio.open_nursery() as nursery:
        server = cluster = None
        if not options.urls and (options.nodes > 1 or options.engine != "memory"):
            cluster, front = await nodes.start_cluster(
                nursery,
                nodes.with_prefix(options.engine, prefix),
                options.nodes,
                {**SERVER_SETTINGS, "compression": options.compression},
                seed=options.seed,
                kill=options.kill_node,
            )
            upstream = ("127.0.0.1", front)
        elif not options.urls:
            server = Server(
                Config(
                    host="127.0.0.1", port=0, log_level="warning", compression=options.compression, **SERVER_SETTINGS
                )
            )
            ports = await nursery.start(server.run)
            upstream = ("127.0.0.1", ports[0])
        upstreams = [_host_port(url) for url in options.urls] or [upstream]
        proxies: dict[str, FaultProxy] = {}
        for number, name in enumerate(_names(options)):
            schedule = FaultSchedule(seed=f"{options.seed}:{name}", failure_rate=options.failure_rate, kinds=kinds)
            first = number % len(upstreams)  # spread the clients over the nodes
            ordered = upstreams[first:] + upstreams[:first]
            proxies[name] = FaultProxy(*ordered[0], schedule, more_upstreams=tuple(ordered[1:]))
            await nursery.start(proxies[name].run)
        result = await _drive(options, recipe, run_id, proxies, scenario)
        if server is not None:
            value = server.metrics.registry.get_sample_value("wsnursery_retransmits_total")
            result.server_retransmits = int(value or 0)
        if cluster is not None:
            result.node_kills = cluster.kills
        nursery.cancel_scope.cancel()
    if cluster is not None and options.engine != "memory":
        await nodes.delete_keys(options.engine, prefix)
    return result


def _names(options: Options) -> list[str]:
    return [f"sub{i}" for i in range(options.clients)] + [f"pub{i}" for i in range(options.publishers)]


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 80)


def check_url(url: str) -> None:
    """`OptionError` unless ``url`` is a ws:// URL of a loopback address with a usable port."""
    host = urllib.parse.urlsplit(url).hostname if url.startswith("ws://") else None
    try:
        loopback = host == "localhost" or (host is not None and ipaddress.ip_address(host).is_loopback)
    except ValueError:
        loopback = False
    if not loopback:
        raise OptionError(f"--url must point at 127.0.0.1, localhost or [::1], not {url!r}")
    try:
        sdk_parse_url(url)
        _, port = _host_port(url)
    except ValueError:
        raise OptionError(f"--url must look like ws://127.0.0.1:PORT/, not {url!r}") from None
    if not 0 < port < 65536:
        raise OptionError(f"--url must look like ws://127.0.0.1:PORT/, not {url!r}")


class _Run:
    """The state one run shares between its tasks."""

    def __init__(self, options: Options, recipe: streams.Stream, run_id: str, proxies: dict[str, FaultProxy]) -> None:
        self.options = options
        self.stream = recipe
        self.proxies = proxies
        self.channels = [f"rel.{run_id}.{name.rsplit('.', 1)[-1]}" for name in recipe.channels]
        self.ledger = Ledger()
        self.ledger.attempted = 0 if options.soak else options.messages
        self.latency = HdrHistogram(1, 600_000_000, 3)  # microseconds
        self.heads: dict[str, int] = {}
        self.reached: dict[tuple[str, str], int] = {}
        self.publishing_done = trio.Event()
        self.stop_publishing = trio.Event()
        self.all_delivered = trio.Event()
        self.broken = trio.Event()  # a client ended in error: the run cannot finish
        self.caught_up = trio.lowlevel.ParkingLot()  # publishers waiting for subscribers
        self.subscribed = 0
        self.all_subscribed = trio.Event()
        self.clients: list[Any] = []
        self.sessions_ok = 0
        self.confirmed = 0
        self.failures: list[str] = []
        self.first_publish: float | None = None
        self.last_delivery = 0.0
        # Per client: progress times (and, for subscribers, each delivery's publish time and publisher).
        self.progress: dict[str, array[float]] = {name: array("d") for name in proxies}
        self.sent_at: dict[str, array[float]] = {name: array("d") for name in proxies}
        self.sent_by: dict[str, array[int]] = {name: array("i") for name in proxies}
        self.numbers: dict[str, array[int]] = {name: array("q") for name in proxies}
        self.confirmed_at: dict[str, dict[int, float]] = {name: {} for name in proxies}

    def check_done(self) -> None:
        if not self.publishing_done.is_set():
            return
        for name in self.subscriber_names:
            for channel in self.channels:
                if self.reached.get((name, channel), 0) < self.heads.get(channel, 0):
                    return
        self.all_delivered.set()

    def lag(self) -> int:
        """Messages the slowest subscriber is behind on its most lagging channel."""
        names = self.subscriber_names
        return max(
            (
                self.heads.get(channel, 0) - min(self.reached.get((name, channel), 0) for name in names)
                for channel in self.channels
            ),
            default=0,
        )

    @property
    def subscriber_names(self) -> list[str]:
        return [f"sub{index}" for index in range(self.options.clients)]

    def traces(self) -> tuple[list[recovery.ClientTrace], dict[int, recovery.ClientTrace]]:
        traces, publishers = [], {}
        for name, proxy in self.proxies.items():
            trace = recovery.ClientTrace(
                name,
                name.startswith("sub"),
                events=[recovery.Event(e.at, e.connection, str(e.kind)) for e in proxy.events],
                opened=list(proxy.opened),
                progress=list(self.progress[name]),
                published_at=list(self.sent_at[name]),
                publisher=list(self.sent_by[name]),
                number=list(self.numbers[name]),
                confirmed=self.confirmed_at[name],
            )
            traces.append(trace)
            if not trace.subscriber:
                publishers[int(name[3:])] = trace
        return traces, publishers


async def _drive(
    options: Options, recipe: streams.Stream, run_id: str, proxies: dict[str, FaultProxy], scenario: str
) -> Result:
    state = _Run(options, recipe, run_id, proxies)
    started = time.monotonic()
    progress = None if options.quiet else Progress(f"{scenario} p={options.failure_rate:.2f}")
    timeline = Timeline()
    with trio.move_on_after(options.cap) as deadline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_broken, state, nursery.cancel_scope)
            nursery.start_soon(_sample_timeline, state, timeline)
            for name in state.subscriber_names:
                nursery.start_soon(_session, state, name, _subscribe_all, name, state.ledger.subscriber(name))
            with trio.move_on_after(min(READY_LIMIT, options.cap)):
                await state.all_subscribed.wait()
            if not state.all_subscribed.is_set():
                state.failures.append(f"not every subscriber was subscribed within {min(READY_LIMIT, options.cap)} s")
                state.broken.set()
            if progress:
                nursery.start_soon(_report_progress, state, progress)
            if options.soak:
                nursery.start_soon(_stop_publishing_after, state, options.duration)
            async with trio.open_nursery() as publishers:
                for index in range(options.publishers):
                    publishers.start_soon(_session, state, f"pub{index}", _publish_all, f"pub{index}", index)
            state.publishing_done.set()
            state.check_done()
            await state.all_delivered.wait()
            nursery.cancel_scope.cancel()
    timed_out = deadline.cancelled_caught or (state.broken.is_set() and not state.all_delivered.is_set())
    _sample(state, timeline)
    verdict = state.ledger.verdict()
    for failure in state.failures:
        verdict.note(failure)
    if deadline.cancelled_caught:
        verdict.note(f"stopped after {options.cap:g} s, before every message was delivered")
    if progress:
        _show(state, progress, force=True)
        progress.done()
    elapsed = time.monotonic() - started
    stats = [client.stats for client in state.clients]
    latency = state.latency
    span = state.last_delivery - (state.first_publish or state.last_delivery)
    traces, publisher_traces = state.traces()
    faults = _merge_fault_counts(proxies.values())
    return Result(
        scenario=scenario,
        failure_rate=options.failure_rate,
        seed=options.seed,
        verdict=verdict,
        elapsed=elapsed,
        faults=faults,
        faults_total=sum(proxy.stats.total for proxy in proxies.values()),
        reconnects=sum(s.reconnects for s in stats),
        replays=sum(s.replays_requested for s in stats),
        retransmits=sum(s.retransmits_seen for s in stats),
        publish_retries=sum(s.publish_retries for s in stats),
        heartbeat_timeouts=sum(s.heartbeat_timeouts for s in stats),
        sessions=options.clients + options.publishers,
        sessions_ok=state.sessions_ok,
        latency_ms={
            "p50": latency.get_value_at_percentile(50) / 1000,
            "p95": latency.get_value_at_percentile(95) / 1000,
            "p99": latency.get_value_at_percentile(99) / 1000,
            "max": latency.get_max_value() / 1000,
        },
        throughput=verdict.delivered / span if span > 0 else 0.0,
        recovery=recovery.summarise(traces, publisher_traces),
        timed_out=timed_out,
        options=options,
        latency_curve=curve(latency),
        timeline=timeline.points,
    )


def _merge_fault_counts(proxies: Any) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = {}
    for proxy in proxies:
        for direction, counts in proxy.stats.as_dict().items():
            into = merged.setdefault(direction, {})
            for kind, count in counts.items():
                into[kind] = into.get(kind, 0) + count
    return merged


async def _stop_when_broken(state: _Run, scope: trio.CancelScope) -> None:
    await state.broken.wait()
    scope.cancel()


async def _stop_publishing_after(state: _Run, seconds: float | None) -> None:
    await trio.sleep(seconds or 0.0)
    state.stop_publishing.set()


def _connect(state: _Run, name: str) -> Any:
    factory = state.options.client_factory or sdk.connect
    options = state.options
    ports = state.proxies[name].ports
    url: str | list[str] = (
        [f"ws://127.0.0.1:{port}/" for port in ports] if len(ports) > 1 else f"ws://127.0.0.1:{ports[0]}/"
    )
    if options.client_factory is None:
        return sdk.connect(
            url,
            encoding=options.encoding,
            seed=options.seed,
            compression=options.compression == "on",
            **CLIENT_SETTINGS,
        )
    return factory(url, encoding=options.encoding, seed=options.seed, **CLIENT_SETTINGS)


async def _session(state: _Run, name: str, session: Any, *args: Any) -> None:
    """Run one client's job; a client that ends in error fails the run, not the harness."""
    try:
        await session(state, *args)
    except* sdk.ClientError as group:
        for exc in group.exceptions:
            state.failures.append(f"{name}: {type(exc).__name__}: {exc}")
        state.broken.set()


async def _subscribe_all(state: _Run, name: str, log: SubscriberLog) -> None:
    async with _connect(state, name) as client:
        state.clients.append(client)
        async with trio.open_nursery() as nursery:
            for channel in state.channels:
                start = await nursery.start(_follow, state, client, channel, log)
                log.subscribed(channel, start)
            state.subscribed += 1
            if state.subscribed == state.options.clients:
                state.all_subscribed.set()
            await state.all_delivered.wait()
            state.sessions_ok += 1
            nursery.cancel_scope.cancel()


async def _follow(
    state: _Run, client: Any, channel: str, log: SubscriberLog, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    key = (log.name, channel)
    progress, sent_at, sent_by = state.progress[log.name], state.sent_at[log.name], state.sent_by[log.name]
    numbers = state.numbers[log.name]
    async with client.subscribe(channel, ack=True) as messages:
        # Channels are new for each run and publishing starts only once every subscriber
        # is confirmed, so each subscriber must see the whole stream from seq 1.
        task_status.started(0)
        async for item in messages:
            if isinstance(item, sdk.Gap):
                log.gap(channel, item.expected_seq, item.resumed_at_seq)
                continue
            now_ns = time.monotonic_ns()
            log.message(channel, item.seq, item.data)
            stamp = item.data.get("t") if isinstance(item.data, dict) else None
            if isinstance(stamp, int):
                state.latency.record_value(min(600_000_000, max(1, (now_ns - stamp) // 1000)))
                progress.append(now_ns / 1e9)
                sent_at.append(stamp / 1e9)
                publisher, number = item.data.get("p"), item.data.get("n")
                sent_by.append(publisher if isinstance(publisher, int) else -1)
                numbers.append(number if isinstance(number, int) else -1)
            state.last_delivery = now_ns / 1e9
            state.reached[key] = item.seq
            state.check_done()
            if state.caught_up.statistics().tasks_waiting and state.lag() <= MAX_LAG // 2:
                state.caught_up.unpark_all()


async def _publish_all(state: _Run, name: str, index: int) -> None:
    """Publish this publisher's messages in order, up to ``options.window`` unconfirmed at once."""
    channel_of = dict(zip(state.stream.channels, state.channels))
    count = None if state.options.soak else state.options.messages
    async with _connect(state, name) as client:
        state.clients.append(client)
        window = trio.Semaphore(state.options.window)
        async with trio.open_nursery() as in_flight:
            for n, message in state.stream.of_publisher(index, count):
                if message.pause:
                    await trio.sleep(message.pause)
                while state.lag() > MAX_LAG:
                    await state.caught_up.park()
                await window.acquire()
                if state.stop_publishing.is_set():
                    break
                if state.options.soak:
                    if state.ledger.attempted >= streams.MAX_MESSAGES:  # the verdict's memory bound
                        state.stop_publishing.set()
                        break
                    state.ledger.attempted += 1
                payload = {"p": index, "n": n, "t": time.monotonic_ns(), "v": message.value}
                in_flight.start_soon(_publish_one, state, client, name, window, channel_of[message.channel], payload)
        state.sessions_ok += 1


async def _publish_one(
    state: _Run, client: Any, name: str, window: trio.Semaphore, channel: str, payload: dict[str, Any]
) -> None:
    try:
        if state.first_publish is None:
            state.first_publish = payload["t"] / 1e9
        position = await client.publish(channel, payload)
        now = time.monotonic()
        state.progress[name].append(now)
        state.confirmed_at[name][payload["n"]] = now
        state.ledger.published(channel, position.seq, payload)
        state.heads[channel] = max(state.heads.get(channel, 0), position.seq)
        state.confirmed += 1
    finally:
        window.release()


async def _sample_timeline(state: _Run, timeline: Timeline) -> None:
    while True:
        _sample(state, timeline)
        await trio.sleep(0.02)  # Timeline thins itself out on long runs


def _sample(state: _Run, timeline: Timeline) -> None:
    """Cumulative figures now: deliveries, confirmed publishes, reconnects, faults by kind."""
    faults = {kind.value: sum(proxy.stats.count(kind) for proxy in state.proxies.values()) for kind in FaultKind}
    timeline.add(
        delivered=sum(log.count for log in state.ledger.subscribers),
        published=state.confirmed,
        reconnects=sum(client.stats.reconnects for client in state.clients),
        faults=faults,
    )


async def _report_progress(state: _Run, progress: Progress) -> None:
    while True:
        _show(state, progress)
        await trio.sleep(0.2)


def _show(state: _Run, progress: Progress, force: bool = False) -> None:
    total = state.ledger.attempted * (1 + state.options.clients)
    delivered = sum(log.count for log in state.ledger.subscribers)
    done = state.confirmed + delivered
    faults = sum(proxy.stats.total for proxy in state.proxies.values())
    progress.update(
        done,
        total,
        f"published {state.confirmed}/{state.ledger.attempted} delivered {delivered} faults {faults}",
        force=force,
    )


def scenario_rates(name: str) -> list[tuple[str, float]]:
    if name == "all":
        return list(SCENARIOS.items())
    return [(name, SCENARIOS[name])]


def is_finite_rate(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= 1.0
