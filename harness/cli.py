"""``python -m harness``: reliability (fault injection), load, connect and stress runs.

Bad flags print one line and exit 2. ``reliability`` exits 0 only when nothing was lost,
duplicated or reordered and faults fired; 1 otherwise, with the seed to replay.

Each command's module (and what it pulls in: trio, hypothesis, the server, psutil, HDR
histograms) is imported only when that command runs or shows its own ``--help``:
``python -m harness --help`` imports none of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from harness.report import table, write_json

if TYPE_CHECKING:
    from harness import reliability

EXIT_FAILED = 1
EXIT_USAGE = 2

#: The commands after ``reliability``: name -> (module with ``add_arguments`` and ``command``, help,
#: description). A module is imported only when its command is asked for.
LOAD_COMMANDS: dict[str, tuple[str, str, str]] = {
    "load": (
        "harness.load", "throughput and latency over real WebSocket connections",
        ("Drive N clients x M messages (pub/sub round trip or echo) and report throughput, "
         "latency percentiles (HDR), connection time, error rate, server RSS and the client's own CPU."),
    ),
    "connect": (
        "harness.connect",
        "connection establishment rate, connections held with heartbeats, reconnection storm",
        ("Open --hold connections at once, hold them while the server heartbeats, "
         "optionally drop --churn of them and reconnect them all together."),
    ),
    "stress": (
        "harness.stress", "the eight stress-guide load levels, scaled to this machine",
        ("Run the load levels minimal .. maximum of the stress guide over real WebSocket "
         "connections, scaled down to what one machine holds (the scale factor is printed per level)."),
    ),
}
ALL_COMMANDS = ("reliability", *LOAD_COMMANDS)
#: what the ``harness`` extra of pyproject.toml installs (hypothesis, hdrhistogram, psutil)
HARNESS_EXTRA_MODULES = frozenset({"hypothesis", "hdrh", "psutil"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _rate(text: str) -> float:
    from harness import reliability

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
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        return value

    return convert


def _faults(text: str) -> tuple[str, ...]:
    from harness.faults import ALL_KINDS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    known = {kind.value for kind in ALL_KINDS}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"faults must be a comma list of {', '.join(sorted(known))}")
    return names


def _html_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--html", metavar="FILE.html",
                        help="also write a self-contained HTML report (charts as inline SVG, nothing loaded "
                             "from the network); open it in any browser")


def build_parser(options_of: Collection[str] = ALL_COMMANDS) -> argparse.ArgumentParser:
    """The parser of every command; only the commands in ``options_of`` get their options (and
    have their module imported), so ``main`` builds just the one it runs."""
    parser = _Parser(prog="harness", description="Fault, load, connection and stress runs for WebSocket servers.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _reliability_parser(commands, "reliability" in options_of)
    for name, (module, help_, description) in LOAD_COMMANDS.items():
        sub = commands.add_parser(name, help=help_, description=description)
        if name in options_of:
            importlib.import_module(module).add_arguments(sub, _positive(int), _positive(float))
            _html_option(sub)
    return parser


def _reliability_parser(commands: Any, with_options: bool) -> None:
    rel = commands.add_parser(
        "reliability",
        help="fault-injection run: zero lost, duplicated, reordered",
        description="Replay failure-rate scenarios through a frame-aware fault proxy and check "
        "end to end that every message arrives exactly once, in order.",
    )
    if not with_options:
        return
    from harness import reliability

    defaults = reliability.Options()
    rel.add_argument("--scenario", choices=[*reliability.SCENARIOS, "all"],
                     help="named failure rate: normal 0, low 0.05, high 0.15, extreme 0.25; all = the four side by side")
    rel.add_argument("--failure-rate", type=_rate, default=None,
                     help=f"probability that a fault fires on each data frame (default {defaults.failure_rate})")
    rel.add_argument("--faults", type=_faults, default=defaults.faults,
                     help="comma list of fault kinds: reset, drop, duplicate, delay, stall, slice (default: all)")
    rel.add_argument("--clients", type=_positive(int), default=defaults.clients, help=f"subscribing clients (default {defaults.clients})")
    rel.add_argument("--publishers", type=_positive(int), default=defaults.publishers, help=f"publishing clients (default {defaults.publishers})")
    rel.add_argument("--channels", type=_positive(int), default=defaults.channels, help=f"channels (default {defaults.channels})")
    rel.add_argument("--messages", type=_positive(int), default=defaults.messages, help=f"messages published in all (default {defaults.messages})")
    rel.add_argument("--duration", type=_positive(float), default=defaults.duration,
                     help=f"seconds a scenario may take before it is stopped and judged (default {defaults.duration})")
    rel.add_argument("--encoding", choices=["json", "cbor"], default=defaults.encoding, help=f"wire encoding (default {defaults.encoding})")
    rel.add_argument("--seed", type=int, default=defaults.seed, help="seed of the message plan and the fault schedule: the same seed replays the run")
    rel.add_argument("--url", help="target a running wsnursery server (ws://127.0.0.1:PORT/) instead of starting one")
    rel.add_argument("--output", metavar="FILE.json", help="write the report as JSON")
    rel.add_argument("--quiet", action="store_true", help="no progress line")
    _html_option(rel)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    asked = argv[:1] if argv and argv[0] in ALL_COMMANDS else []
    try:
        args = build_parser(asked).parse_args(argv)
    except ModuleNotFoundError as exc:  # the server installed without the harness extra
        if (exc.name or "").partition(".")[0] not in HARNESS_EXTRA_MODULES:
            raise
        print(f"harness: no module named {exc.name!r}: install the harness with "
              "pip install 'wsnursery[harness]'", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "reliability":
        import trio

        return trio.run(_reliability, args)
    run = importlib.import_module(LOAD_COMMANDS[args.command][0]).command
    from harness.load import UsageError

    try:
        return run(args)
    except UsageError as exc:
        print(f"harness {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a server that would not start, a refused connection: one line, exit 1
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"harness {args.command}: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"harness {args.command}: interrupted", file=sys.stderr)
        return 130


async def _reliability(args: argparse.Namespace) -> int:
    from harness import reliability

    if args.url and not args.url.startswith(("ws://127.", "ws://localhost", "ws://[::1]")):
        print("harness: --url must point at 127.0.0.1, localhost or [::1]", file=sys.stderr)
        return EXIT_USAGE
    if args.scenario and args.failure_rate is not None:
        print("harness: give --scenario or --failure-rate, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.scenario:
        runs = reliability.scenario_rates(args.scenario)
    else:
        rate = reliability.Options().failure_rate if args.failure_rate is None else args.failure_rate
        runs = [("custom", rate)]
    results = []
    for name, rate in runs:
        options = reliability.Options(
            failure_rate=rate, clients=args.clients, publishers=args.publishers, channels=args.channels,
            messages=args.messages, duration=args.duration, encoding=args.encoding, seed=args.seed,
            url=args.url, faults=args.faults, quiet=args.quiet,
        )
        results.append(await reliability.run(options, name))
    print(render(results))
    if args.output:
        write_json(args.output, {"runs": [result.as_dict() for result in results]})
    if args.html:
        from harness.html_report import write_html

        write_html(args.html, {"command": "reliability", "runs": [result.as_dict() for result in results]})
    failed = [result for result in results if not result.passed]
    if failed:
        for result in failed:
            why = "no fault fired" if result.verdict.clean and not result.timed_out else "delivery failed"
            if result.timed_out:
                why = f"not finished within --duration {args.duration}s"
            print(f"FAILED {result.scenario} (p={result.failure_rate}): {why}; replay with --seed {result.seed}"
                  f" --failure-rate {result.failure_rate}", file=sys.stderr)
            for example in result.verdict.examples:
                print(f"  {example}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def render(results: list[reliability.Result]) -> str:
    data = [result.as_dict() for result in results]
    def faults(d: dict, direction: str) -> str:
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
        ("replays requested", *[d["replays"] for d in data]),
        ("server retransmits", *[d["server_retransmits"] if d["server_retransmits"] is not None else "n/a" for d in data]),
        ("repeats dropped by clients", *[d["retransmits_dropped_by_clients"] for d in data]),
        ("publish retries", *[d["publish_retries"] for d in data]),
        ("faults injected", *[d["faults_total"] for d in data]),
        ("  client->server", *[faults(d, "upstream") for d in data]),
        ("  server->client", *[faults(d, "downstream") for d in data]),
        ("latency p50 ms", *[d["latency_ms"]["p50"] for d in data]),
        ("latency p95 ms", *[d["latency_ms"]["p95"] for d in data]),
        ("latency p99 ms", *[d["latency_ms"]["p99"] for d in data]),
        ("latency max ms", *[d["latency_ms"]["max"] for d in data]),
        ("elapsed s", *[d["elapsed_s"] for d in data]),
    ]
    seeds = ", ".join(sorted({str(d["seed"]) for d in data}))
    header = f"wsnursery reliability — seed {seeds}"
    return header + "\n" + table(["", *[d["scenario"] for d in data]], rows)
