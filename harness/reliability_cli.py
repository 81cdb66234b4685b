"""The ``reliability`` command of ``python -m harness``: options, the run, the report.

Exit status: 0 when every run passed; 1 when one failed (with the seed to replay, and a
replay file of the smallest failing case when delivery failed); 2 for options no run can
satisfy (one line, never a traceback).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import attrs
import trio

from harness import nodes, reliability, shrink, streams
from harness.faults import ALL_KINDS
from harness.reliability import Options, Result
from harness.report import table, write_json

EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_MESSAGES = 300
# The no-fault run next to a faulted one: the same stream and settings, at most this long
# (throughput is a rate; a long run need not be paid for twice).
BASELINE_MAX_MESSAGES = 20_000
BASELINE_MAX_SECONDS = 60.0
_CASE_FLAGS = (
    "scenario",
    "failure_rate",
    "faults",
    "clients",
    "publishers",
    "channels",
    "messages",
    "duration",
    "max_payload",
    "encoding",
    "seed",
    "url",
    "publish_window",
)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not reliability.is_finite_rate(value):
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def _positive(kind: type) -> Any:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        return value

    return convert


def _faults(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    known = {kind.value for kind in ALL_KINDS}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"faults must be a comma list of {', '.join(sorted(known))}")
    return names


def add_arguments(rel: argparse.ArgumentParser) -> None:
    defaults = Options()
    add = rel.add_argument
    add(
        "--scenario",
        choices=[*reliability.SCENARIOS, "all"],
        help="named failure rate: normal 0, low 0.05, high 0.15, extreme 0.25; all = the four side by side",
    )
    add(
        "--failure-rate",
        type=_rate,
        default=None,
        help=f"probability that a fault fires on each data frame (default {defaults.failure_rate})",
    )
    add(
        "--faults",
        type=_faults,
        default=defaults.faults,
        help="comma list of fault kinds: reset, drop, duplicate, delay, stall, slice (default: all)",
    )
    add(
        "--clients",
        type=_positive(int),
        default=defaults.clients,
        help=f"subscribing clients (default {defaults.clients})",
    )
    add(
        "--publishers",
        type=_positive(int),
        default=defaults.publishers,
        help=f"publishing clients (default {defaults.publishers})",
    )
    add("--channels", type=_positive(int), default=defaults.channels, help=f"channels (default {defaults.channels})")
    add(
        "--messages",
        type=_positive(int),
        default=None,
        help=f"messages published in all (default {DEFAULT_MESSAGES}; with --duration alone the run is a soak)",
    )
    add(
        "--duration",
        type=_positive(float),
        default=None,
        help="alone: a soak, publishing continuously for this many seconds, then delivery has "
        f"{reliability.DRAIN_LIMIT:g} s to finish; with --messages: the seconds the run may take before it "
        "is stopped and judged (default 120 plus 10 ms a message)",
    )
    add(
        "--max-payload",
        type=_positive(int),
        default=defaults.max_payload,
        help=f"largest value in the stream, CBOR bytes ({streams.MIN_PAYLOAD} to {streams.MAX_PAYLOAD_LIMIT}; "
        f"default {defaults.max_payload}); sizes are log-uniform up to it, see harness/streams.py",
    )
    add(
        "--publish-window",
        type=_positive(int),
        default=None,
        help=f"publishes each publisher keeps unconfirmed at once (default {reliability.PUBLISH_WINDOW} at failure "
        f"rates up to {reliability.WINDOW_MAX_RATE}, else 1: at high rates a window only lengthens what is resent)",
    )
    add(
        "--encoding",
        choices=["json", "cbor"],
        default=defaults.encoding,
        help=f"wire encoding (default {defaults.encoding})",
    )
    add(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the stream and the fault schedules: the same seed replays the run",
    )
    add(
        "--url",
        action="append",
        help="target a running wsnursery server (ws://127.0.0.1:PORT/) instead of starting one; give it again "
        "for each node of a cluster on one engine: the clients connect with the list (spread over it) and "
        "fail over to the next node when one is unreachable, each through its own fault proxy",
    )
    add(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the same stream without faults, for throughput side by side (default: on; "
        f"at most the first {BASELINE_MAX_MESSAGES:,} messages, or {BASELINE_MAX_SECONDS:g} s of a soak)",
    )
    add(
        "--shrink",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when delivery fails, re-run smaller cases and write the smallest failing one (default: on)",
    )
    add(
        "--shrink-runs",
        type=_positive(int),
        default=24,
        help="re-runs the shrinking may spend; a smaller case is kept only if it fails twice (default 24)",
    )
    add(
        "--replay-file",
        metavar="FILE.json",
        help="where to write the smallest failing case (default reliability-failure-seed<SEED>.json)",
    )
    add("--replay", metavar="FILE.json", help="run exactly the case of a replay file (no other run options)")
    add(
        "--engine",
        default="memory",
        help="the server's engine; redis://HOST:PORT/DB runs it as --nodes processes on that Redis (default memory)",
    )
    add("--nodes", type=_positive(int), default=1, help="server processes on the engine (needs redis://; default 1)")
    add("--kill-node", action="store_true", help="SIGKILL and restart one node at a time during the run")
    add("--output", metavar="FILE.json", help="write the report as JSON")
    add("--quiet", action="store_true", help="no progress line")
    add(
        "--compression",
        choices=["on", "off"],
        default=defaults.compression,
        help="permessage-deflate between the clients and the server (default on; a replay runs with on)",
    )


def command(args: argparse.Namespace) -> int:
    try:
        return trio.run(_command, args)
    except (reliability.OptionError, streams.PlanError, shrink.ReplayError) as exc:
        print(f"harness reliability: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness reliability: interrupted", file=sys.stderr)
        return 130
    except (nodes.NodeError, BaseExceptionGroup) as exc:  # a cluster node would not start (--nodes)
        group = exc if isinstance(exc, BaseExceptionGroup) else BaseExceptionGroup("", [exc])
        failed = group.subgroup(nodes.NodeError)
        if failed is None or group.subgroup(lambda e: not isinstance(e, (BaseExceptionGroup, nodes.NodeError))):
            raise
        while isinstance(failed, BaseExceptionGroup):
            failed = failed.exceptions[0]
        print(f"harness reliability: {' '.join(str(failed).split())[:500]}", file=sys.stderr)
        return EXIT_FAILED


def _runs(args: argparse.Namespace) -> list[tuple[str, Options]]:
    """The runs the arguments ask for; raises OptionError when they cannot be run."""
    if args.replay:
        given = [flag for flag in _CASE_FLAGS if getattr(args, flag) != _default(flag)]
        if given:
            raise reliability.OptionError(f"--replay runs the file's case alone; drop --{given[0].replace('_', '-')}")
        return [("replay", shrink.read_replay(args.replay))]
    for url in args.url or ():
        reliability.check_url(url)
    if args.scenario and args.failure_rate is not None:
        raise reliability.OptionError("give --scenario or --failure-rate, not both")
    if args.scenario:
        rates = reliability.scenario_rates(args.scenario)
    else:
        rates = [("custom", Options().failure_rate if args.failure_rate is None else args.failure_rate)]
    soak = args.duration is not None and args.messages is None
    base = Options(
        clients=args.clients,
        publishers=args.publishers,
        channels=args.channels,
        messages=DEFAULT_MESSAGES if args.messages is None else args.messages,
        duration=args.duration,
        soak=soak,
        max_payload=args.max_payload,
        encoding=args.encoding,
        seed=args.seed,
        urls=tuple(args.url or ()),
        faults=args.faults,
        quiet=args.quiet,
        publish_window=args.publish_window,
        compression=args.compression,
        engine=args.engine,
        nodes=args.nodes,
        kill_node=args.kill_node,
    )
    runs = [(name, attrs.evolve(base, failure_rate=rate)) for name, rate in rates]
    if args.baseline and all(options.failure_rate > 0 for _, options in runs):
        runs.append(_baseline(runs[0][1]))
    for _, options in runs:
        options.check()
    return runs


def _baseline(faulted: Options) -> tuple[str, Options]:
    """The same run without faults (the same window too), shortened to the baseline bounds."""
    clean = attrs.evolve(faulted, failure_rate=0.0, publish_window=faulted.window)
    if faulted.soak and (faulted.duration or 0) > BASELINE_MAX_SECONDS:
        return f"no faults (first {BASELINE_MAX_SECONDS:g} s)", attrs.evolve(clean, duration=BASELINE_MAX_SECONDS)
    if not faulted.soak and faulted.messages > BASELINE_MAX_MESSAGES:
        return (
            f"no faults (first {BASELINE_MAX_MESSAGES:,})",
            attrs.evolve(clean, messages=BASELINE_MAX_MESSAGES, duration=None),
        )
    return "no faults", clean


def _default(flag: str) -> Any:
    return {
        "faults": Options().faults,
        "clients": Options().clients,
        "publishers": Options().publishers,
        "channels": Options().channels,
        "max_payload": Options().max_payload,
        "encoding": "cbor",
        "seed": Options().seed,
    }.get(flag)


async def _command(args: argparse.Namespace) -> int:
    runs = _runs(args)
    if args.replay:
        runs = [(name, attrs.evolve(options, quiet=args.quiet)) for name, options in runs]
    results = [await reliability.run(options, name) for name, options in runs]
    print(render(results))
    if args.output:
        write_json(args.output, {"runs": [result.as_dict() for result in results]})
    if getattr(args, "html", None):
        from harness.html_report import write_html

        write_html(args.html, {"command": "reliability", "runs": [result.as_dict() for result in results]})
    failed = [result for result in results if not result.passed]
    for result in failed:
        await _explain(args, result)
    return EXIT_FAILED if failed else 0


async def _explain(args: argparse.Namespace, result: Result) -> None:
    why = "no fault fired" if result.verdict.clean and not result.timed_out else "delivery failed"
    if result.timed_out:
        why = "not finished in time"
    print(
        f"FAILED {result.scenario} (p={result.failure_rate}): {why}; replay with --seed {result.seed}"
        f" --failure-rate {result.failure_rate}",
        file=sys.stderr,
    )
    for example in result.verdict.examples:
        print(f"  {example}", file=sys.stderr)
    if args.replay or not args.shrink or not result.failure_kinds or result.options is None:
        return
    print(f"shrinking: up to {args.shrink_runs} smaller runs of the same seed and fault schedule ...", file=sys.stderr)
    shrunk = await shrink.shrink(result.options, result, max_runs=args.shrink_runs)
    path = args.replay_file or f"reliability-failure-seed{result.seed}.json"
    shrink.write_replay(path, shrunk, result.options)
    print(
        f"smallest failing case ({shrunk.runs} re-runs): {shrink.describe(shrunk.options)}; "
        f"{', '.join(sorted(shrunk.result.failure_kinds))}",
        file=sys.stderr,
    )
    print(f"replay it: python -m harness reliability --replay {path}", file=sys.stderr)


def render(results: list[Result]) -> str:
    data = [result.as_dict() for result in results]

    def faults(d: dict[str, Any], direction: str) -> str:
        counts = d["faults_injected"][direction]
        return " ".join(f"{kind}={n}" for kind, n in counts.items() if n) or "-"

    rows = [
        ("failure rate", *[d["failure_rate"] for d in data]),
        ("verdict", *["PASS" if d["passed"] else "FAIL" for d in data]),
        ("published", *[d["published"] for d in data]),
        ("delivered", *[d["delivered"] for d in data]),
        ("lost", *[d["lost"] for d in data]),
        ("duplicated", *[d["duplicated"] for d in data]),
        ("reordered", *[d["reordered"] for d in data]),
        ("corrupted", *[d["corrupted"] for d in data]),
        ("unconfirmed publishes", *[d["unconfirmed_publishes"] for d in data]),
        ("gaps reported", *[d["gaps_reported"] for d in data]),
        ("session success rate", *[f"{d['session_success_rate']:.1%}" for d in data]),
        ("reconnects", *[d["reconnects"] for d in data]),
        ("heartbeat timeouts", *[d["heartbeat_timeouts"] for d in data]),
        ("replays requested", *[d["replays"] for d in data]),
        (
            "server retransmits",
            *[d["server_retransmits"] if d["server_retransmits"] is not None else "n/a" for d in data],
        ),
        ("repeats dropped by clients", *[d["retransmits_dropped_by_clients"] for d in data]),
        ("publish retries", *[d["publish_retries"] for d in data]),
        ("faults injected", *[d["faults_total"] for d in data]),
        ("  client->server", *[faults(d, "upstream") for d in data]),
        ("  server->client", *[faults(d, "downstream") for d in data]),
        ("latency p50 ms", *[d["latency_ms"]["p50"] for d in data]),
        ("latency p95 ms", *[d["latency_ms"]["p95"] for d in data]),
        ("latency p99 ms", *[d["latency_ms"]["p99"] for d in data]),
        ("latency max ms", *[d["latency_ms"]["max"] for d in data]),
        ("throughput deliveries/s", *[d["throughput_deliveries_per_s"] for d in data]),
        ("elapsed s", *[d["elapsed_s"] for d in data]),
    ]
    seeds = ", ".join(sorted({str(d["seed"]) for d in data}))
    out = [f"wsnursery reliability — seed {seeds}", table(["", *[d["scenario"] for d in data]], rows)]
    for result in results:
        if result.faults_total:
            out.append(render_recovery(result))
    return "\n".join(out)


def render_recovery(result: Result) -> str:
    """The recovery figures of one run: what each fault kind cost, and what the tail is made of."""
    figures = result.recovery
    rows = [
        (kind, f["faults"], f["p50"], f["p99"], f["max"], f["no_later_progress"])
        for kind, f in figures["recovery_ms"].items()
    ]
    lines = [
        "",
        (
            f"recovery ({result.scenario}, p={result.failure_rate}): time from a fault to the next delivery "
            "(subscriber) or confirmation (publisher) on the client it hit"
        ),
        table(["fault", "count", "p50 ms", "p99 ms", "max ms", "no later progress"], rows),
    ]
    causes = figures["reconnects_by_cause"]
    lines.append("reconnects by cause: " + (", ".join(f"{k} {v}" for k, v in causes.items()) or "none"))
    sizes = figures["replay_sizes"]
    lines.append(
        f"replay after a subscriber reconnect (messages published before it, delivered on the new link): "
        f"{sizes['reconnects']} reconnects, p50 {sizes['p50']}, p99 {sizes['p99']}, max {sizes['max']}, "
        f"total {sizes['total']}"
    )
    tail = figures["tail"]
    lines.append(
        f"latency tail (>= p99 {tail['threshold_ms']} ms, {tail['deliveries']} deliveries): median "
        f"{tail['publisher_part_ms']} ms publish to confirmed, {tail['subscriber_part_ms']} ms confirmed to delivered, "
        f"{tail['reconnects_on_the_way']} reconnects on the way; held by (first fault): "
        + (", ".join(f"{k} {v}" for k, v in tail["causes"].items()) or "none")
    )
    return "\n".join(lines)
