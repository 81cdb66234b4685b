"""``python -m harness reliability``: prove nothing is lost when the network misbehaves.

A run starts its own wsnursery server (or targets ``--url``), puts the frame-aware fault
proxy in front of it, and drives publishers and subscribers written with the project's
client SDK through the proxy. Publishers send a hypothesis-generated plan (``streams``);
subscribers record what their application sees; the ``Ledger`` then counts what was lost,
duplicated, reordered or corrupted. The run passes only when all of those are zero, every
publish was confirmed, and (at a failure rate above 0) faults really fired.

Every run is bounded: ``--duration`` caps it, and it talks only to 127.0.0.1.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import attrs
import trio
from hdrh.histogram import HdrHistogram

from harness.check import Ledger, SubscriberLog, Verdict
from harness.faults import ALL_KINDS, FaultKind, FaultSchedule
from harness.proxy import FaultProxy
from harness.report import Progress
from harness.streams import Plan, plan
from harness.timeline import Timeline, curve
from wsnursery import client as sdk
from wsnursery.config import Config
from wsnursery.server import Server

SCENARIOS = {"normal": 0.0, "low": 0.05, "high": 0.15, "extreme": 0.25}

# Timers of the harness's own server and clients: short, so faults heal within seconds.
SERVER_SETTINGS = dict(
    heartbeat_interval=0.5,
    heartbeat_timeout=1.0,
    ack_timeout=0.25,
    ack_max_timeout=2.0,
    history_size=65_536,
    outbound_queue_size=8192,
    max_unacked=8192,
    max_message_size=4 * 2**20,
    close_timeout=0.5,
    shutdown_timeout=1.0,
)
CLIENT_SETTINGS = dict(
    heartbeat_interval=0.25, heartbeat_timeout=0.6, request_timeout=0.5, backoff_max=0.5, max_reconnects=100
)


@attrs.define
class Options:
    failure_rate: float = 0.15
    clients: int = 4  # subscribing clients
    publishers: int = 2
    channels: int = 3
    messages: int = 300
    duration: float = 120.0
    encoding: str = "cbor"
    seed: int = 1
    url: str | None = None
    faults: tuple[str, ...] = tuple(kind.value for kind in ALL_KINDS)
    quiet: bool = False
    client_factory: Any = None  # tests swap in a deliberately broken client here


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
    server_retransmits: int | None = None
    sessions: int = 0
    sessions_ok: int = 0
    latency_ms: dict[str, float] = attrs.field(factory=dict)
    timed_out: bool = False
    latency_curve: list[list[float]] = attrs.field(factory=list)  # [[percentile, ms], ...]
    timeline: list[dict[str, Any]] = attrs.field(factory=list)  # samples for the HTML report

    @property
    def passed(self) -> bool:
        fired = self.faults_total > 0 or self.failure_rate == 0
        return self.verdict.clean and fired and not self.timed_out

    @property
    def session_success_rate(self) -> float:
        return self.sessions_ok / self.sessions if self.sessions else 0.0

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
            "faults_injected": self.faults,
            "faults_total": self.faults_total,
            "latency_ms": self.latency_ms,
            "timed_out": self.timed_out,
            "examples": v.examples,
            "latency_curve": self.latency_curve,
            "timeline": self.timeline,
        }


async def run(options: Options, scenario: str = "custom") -> Result:
    """One reliability run at ``options.failure_rate``."""
    schedule = FaultSchedule(
        seed=options.seed,
        failure_rate=options.failure_rate,
        kinds=frozenset(FaultKind(kind) for kind in options.faults),
    )
    the_plan = plan(
        options.seed, messages=options.messages, publishers=options.publishers, channels=options.channels
    )
    run_id = f"{options.seed}-{random.Random().randrange(16**6):06x}"
    async with trio.open_nursery() as nursery:
        server = None
        if options.url is None:
            server = Server(Config(host="127.0.0.1", port=0, log_level="warning", **SERVER_SETTINGS))
            ports = await nursery.start(server.run)
            upstream = ("127.0.0.1", ports[0])
        else:
            upstream = _host_port(options.url)
        proxy = FaultProxy(upstream[0], upstream[1], schedule)
        proxy_port = await nursery.start(proxy.run)
        url = f"ws://127.0.0.1:{proxy_port}/"
        result = await _drive(options, the_plan, run_id, url, proxy, scenario)
        if server is not None:
            value = server.metrics.registry.get_sample_value("wsnursery_retransmits_total")
            result.server_retransmits = int(value or 0)
        nursery.cancel_scope.cancel()
    return result


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 80)


class _Run:
    """The state one run shares between its tasks."""

    def __init__(self, options: Options, the_plan: Plan, run_id: str) -> None:
        self.options = options
        self.plan = the_plan
        self.channels = [f"rel.{run_id}.{name.rsplit('.', 1)[-1]}" for name in the_plan.channels]
        self.ledger = Ledger()
        self.ledger.attempted = len(the_plan.messages)
        self.latency = HdrHistogram(1, 120_000_000, 3)  # microseconds
        self.heads: dict[str, int] = {}
        self.reached: dict[tuple[str, str], int] = {}
        self.publishing_done = trio.Event()
        self.all_delivered = trio.Event()
        self.subscribed = 0
        self.all_subscribed = trio.Event()
        self.clients: list[Any] = []
        self.sessions_ok = 0
        self.confirmed = 0
        self.failures: list[str] = []

    def check_done(self) -> None:
        if not self.publishing_done.is_set():
            return
        for name in self.subscriber_names:
            for channel in self.channels:
                if self.reached.get((name, channel), 0) < self.heads.get(channel, 0):
                    return
        self.all_delivered.set()

    @property
    def subscriber_names(self) -> list[str]:
        return [f"sub{index}" for index in range(self.options.clients)]


async def _drive(
    options: Options, the_plan: Plan, run_id: str, url: str, proxy: FaultProxy, scenario: str
) -> Result:
    state = _Run(options, the_plan, run_id)
    started = time.monotonic()
    progress = None if options.quiet else Progress(f"{scenario} p={options.failure_rate:.2f}")
    timed_out = False
    timeline = Timeline()
    with trio.move_on_after(options.duration) as deadline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sample_timeline, state, proxy, timeline)
            for name in state.subscriber_names:
                nursery.start_soon(_session, state, name, _subscribe_all, url, state.ledger.subscriber(name))
            with trio.fail_after(max(5.0, options.duration / 2)):
                await state.all_subscribed.wait()
            if progress:
                nursery.start_soon(_report_progress, state, proxy, progress)
            async with trio.open_nursery() as publishers:
                for index in range(options.publishers):
                    publishers.start_soon(_session, state, f"pub{index}", _publish_all, url, index)
            state.publishing_done.set()
            state.check_done()
            await state.all_delivered.wait()
            nursery.cancel_scope.cancel()
    timed_out = deadline.cancelled_caught
    _sample(state, proxy, timeline)
    verdict = state.ledger.verdict()
    for failure in state.failures:
        verdict.note(failure)
    if progress:
        _show(state, proxy, progress, force=True)
        progress.done()
    elapsed = time.monotonic() - started
    stats = [client.stats for client in state.clients]
    latency = state.latency
    return Result(
        scenario=scenario,
        failure_rate=options.failure_rate,
        seed=options.seed,
        verdict=verdict,
        elapsed=elapsed,
        faults=proxy.stats.as_dict(),
        faults_total=proxy.stats.total,
        reconnects=sum(s.reconnects for s in stats),
        replays=sum(s.replays_requested for s in stats),
        retransmits=sum(s.retransmits_seen for s in stats),
        publish_retries=sum(s.publish_retries for s in stats),
        sessions=options.clients + options.publishers,
        sessions_ok=state.sessions_ok,
        latency_ms={
            "p50": latency.get_value_at_percentile(50) / 1000,
            "p95": latency.get_value_at_percentile(95) / 1000,
            "p99": latency.get_value_at_percentile(99) / 1000,
            "max": latency.get_max_value() / 1000,
        },
        timed_out=timed_out,
        latency_curve=curve(latency),
        timeline=timeline.points,
    )


def _connect(state: _Run, url: str) -> Any:
    factory = state.options.client_factory or sdk.connect
    return factory(url, encoding=state.options.encoding, seed=state.options.seed, **CLIENT_SETTINGS)


async def _session(state: _Run, name: str, session: Any, *args: Any) -> None:
    """Run one client's job; a client that ends in error fails the run, not the harness."""
    try:
        await session(state, *args)
    except* sdk.ClientError as group:
        for exc in group.exceptions:
            state.failures.append(f"{name}: {type(exc).__name__}: {exc}")


async def _subscribe_all(state: _Run, url: str, log: SubscriberLog) -> None:
    async with _connect(state, url) as client:
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
    async with client.subscribe(channel, ack=True) as messages:
        # Channels are new for each run and publishing starts only once every subscriber
        # is confirmed, so each subscriber must see the whole stream from seq 1.
        task_status.started(0)
        async for item in messages:
            if isinstance(item, sdk.Gap):
                log.gap(channel, item.expected_seq, item.resumed_at_seq)
                continue
            log.message(channel, item.seq, item.data)
            stamp = item.data.get("t") if isinstance(item.data, dict) else None
            if isinstance(stamp, int):
                state.latency.record_value(max(1, (time.monotonic_ns() - stamp) // 1000))
            state.reached[key] = item.seq
            state.check_done()


async def _publish_all(state: _Run, url: str, index: int) -> None:
    mine = [(n, m) for n, m in enumerate(state.plan.messages) if m.publisher == index]
    channel_of = dict(zip(state.plan.channels, state.channels))
    async with _connect(state, url) as client:
        state.clients.append(client)
        for n, message in mine:
            if message.pause:
                await trio.sleep(message.pause)
            channel = channel_of[message.channel]
            payload = {"p": index, "n": n, "t": time.monotonic_ns(), "v": message.value}
            position = await client.publish(channel, payload)
            state.ledger.published(channel, position.seq, payload)
            state.heads[channel] = max(state.heads.get(channel, 0), position.seq)
            state.confirmed += 1
        state.sessions_ok += 1


async def _sample_timeline(state: _Run, proxy: FaultProxy, timeline: Timeline) -> None:
    while True:
        _sample(state, proxy, timeline)
        await trio.sleep(0.02)  # Timeline thins itself out on long runs


def _sample(state: _Run, proxy: FaultProxy, timeline: Timeline) -> None:
    """Cumulative figures now: deliveries, confirmed publishes, reconnects, faults by kind."""
    faults = {kind.value: proxy.stats.count(kind) for kind in FaultKind}
    timeline.add(
        delivered=sum(len(log.seen) for log in state.ledger.subscribers),
        published=state.confirmed,
        reconnects=sum(client.stats.reconnects for client in state.clients),
        faults=faults,
    )


async def _report_progress(state: _Run, proxy: FaultProxy, progress: Progress) -> None:
    while True:
        _show(state, proxy, progress)
        await trio.sleep(0.2)


def _show(state: _Run, proxy: FaultProxy, progress: Progress, force: bool = False) -> None:
    total = state.ledger.attempted * (1 + state.options.clients)
    delivered = sum(len(log.seen) for log in state.ledger.subscribers)
    done = state.confirmed + delivered
    progress.update(
        done,
        total,
        f"published {state.confirmed}/{state.ledger.attempted} delivered {delivered} faults {proxy.stats.total}",
        force=force,
    )


def scenario_rates(name: str) -> list[tuple[str, float]]:
    if name == "all":
        return list(SCENARIOS.items())
    return [(name, SCENARIOS[name])]


def is_finite_rate(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= 1.0
