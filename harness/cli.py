"""``python -m harness``: reliability (fault injection), load, connect and stress runs.

Bad flags print one line and exit 2. ``reliability`` exits 0 only when nothing was lost,
duplicated or reordered and faults fired; 1 otherwise, with the seed to replay and a replay
file of the smallest failing case (``harness.reliability_cli``).

Each command's module (and what it pulls in: trio, hypothesis, the server, psutil, HDR
histograms) is imported only when that command runs or shows its own ``--help``:
``python -m harness --help`` imports none of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

EXIT_FAILED = 1
EXIT_USAGE = 2

#: The commands after ``reliability``: name -> (module with ``add_arguments`` and ``command``, help,
#: description). A module is imported only when its command is asked for.
LOAD_COMMANDS: dict[str, tuple[str, str, str]] = {
    "load": (
        "harness.load",
        "throughput and latency over real WebSocket connections",
        (
            "Drive N clients x M messages (pub/sub round trip or echo) and report throughput, "
            "latency percentiles (HDR), connection time, error rate, server RSS and the client's own CPU."
        ),
    ),
    "connect": (
        "harness.connect",
        "connection establishment rate, connections held with heartbeats, reconnection storm",
        (
            "Open --hold connections at once, hold them while the server heartbeats, "
            "optionally drop --churn of them and reconnect them all together."
        ),
    ),
    "stress": (
        "harness.stress",
        "the eight stress-guide load levels, scaled to this machine",
        (
            "Run the load levels minimal .. maximum of the stress guide over real WebSocket "
            "connections, scaled down to what one machine holds (the scale factor is printed per level)."
        ),
    ),
}
ALL_COMMANDS = ("reliability", *LOAD_COMMANDS)
#: what the ``harness`` extra of pyproject.toml installs (hypothesis, hdrhistogram, psutil)
HARNESS_EXTRA_MODULES = frozenset({"hypothesis", "hdrh", "psutil"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


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


def _html_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--html",
        metavar="FILE.html",
        help="also write a self-contained HTML report (charts as inline SVG, nothing loaded "
        "from the network); open it in any browser",
    )


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
    from harness import reliability_cli

    reliability_cli.add_arguments(rel)
    _html_option(rel)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    asked = argv[:1] if argv and argv[0] in ALL_COMMANDS else []
    try:
        args = build_parser(asked).parse_args(argv)
    except ModuleNotFoundError as exc:  # the server installed without the harness extra
        if (exc.name or "").partition(".")[0] not in HARNESS_EXTRA_MODULES:
            raise
        print(
            f"harness: no module named {exc.name!r}: install the harness with pip install 'wsnursery[harness]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.command == "reliability":
        from harness import reliability_cli

        return reliability_cli.command(args)
    run = importlib.import_module(LOAD_COMMANDS[args.command][0]).command
    from harness.load import UsageError

    try:
        return run(args)
    except UsageError as exc:
        print(f"harness {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"harness {args.command}: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"harness {args.command}: interrupted", file=sys.stderr)
        return 130
