"""``python -m wsnursery serve``: run the server.

Flags mirror the settings of ``config.Config`` one to one (``--max-connections`` sets
``max_connections``). A bad flag or setting prints one line and exits with status 2.
SIGINT or SIGTERM shuts down gracefully (1001 to clients, drain, exit 0); a second signal
stops at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import trio

from . import __version__, logs, security
from .config import SETTINGS, Config, ConfigError, load
from .hub import Hub
from .server import Server

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wsnursery", description="Structured-concurrency WebSocket pub/sub server.")
    parser.add_argument("--version", action="version", version=f"wsnursery {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="run the server", description="Run the wsnursery server.")
    serve.add_argument("--config", metavar="FILE.toml", help="TOML file with settings")
    for attribute in SETTINGS:
        flag = "--" + attribute.name.replace("_", "-")
        default = attribute.default
        extra: dict[str, Any] = {"metavar": attribute.name.upper()}
        if str(attribute.type) == "bool":
            extra = {"action": argparse.BooleanOptionalAction}
        elif attribute.metadata.get("repeat"):
            extra["action"] = "append"
        serve.add_argument(
            flag,
            dest=attribute.name,
            help=f"{attribute.metadata['help']} (default: {default}; env WSNURSERY_{attribute.name.upper()})",
            **extra,
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {attribute.name: getattr(args, attribute.name) for attribute in SETTINGS}
    try:
        config = load(flags=flags, config_file=args.config)
        security.check(config)  # key files and certificates: read once now, exit 2 if unusable
    except ConfigError as exc:
        print(f"wsnursery: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if config.engine != "memory" and importlib.util.find_spec("coredis") is None:
        print("wsnursery: --engine redis:// needs coredis: pip install 'wsnursery[redis]'", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1:
        from .workers import Supervisor

        return Supervisor(config).run()
    return run_server(config)


def run_server(config: Config) -> int:
    """Serve until a signal has drained the server: the exit status."""
    try:
        trio.run(_serve, config)
    except OSError as exc:  # the port is taken, the address is not ours...
        print(f"wsnursery: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(config: Config) -> None:
    server = Server(config, _engine(config))
    listeners = await server.listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, server, nursery.cancel_scope)
        await server.serve(listeners)
        nursery.cancel_scope.cancel()


def _engine(config: Config) -> Hub | None:
    """The hub ``--engine`` names (None: the server's own memory hub)."""
    if config.engine == "memory":
        return None
    from .redis_hub import RedisHub  # only with --engine redis://: needs coredis

    return RedisHub.from_config(config)


async def _on_signals(server: Server, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if server.draining:
                scope.cancel()
                return
            server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
