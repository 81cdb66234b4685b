"""The context wiring: a connection is handed the server's parts it may use, never the server."""

from __future__ import annotations

import subprocess
import sys

import attrs

from wsnursery.config import Config
from wsnursery.context import ConnectionContext
from wsnursery.hub import MemoryHub
from wsnursery.server import Server

from .helpers import raw_welcome
from .wsclient import RawClient


def test_the_connection_modules_do_not_import_the_server():
    """No import circle: ``server`` imports ``connection``, never the reverse."""
    modules = ["connection", "handlers", "outbox", "retransmit", "subscription", "context", "hub", "broadcast"]
    code = (
        "import sys\n"
        + "".join(f"import wsnursery.{name}\n" for name in modules)
        + "print('wsnursery.server' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_server_builds_one_context_from_its_own_parts():
    hub = MemoryHub()
    server = Server(Config(port=0, channel_pattern=r"^x+$", heartbeat_interval=3.0), hub=hub)
    context = server.context
    assert isinstance(context, ConnectionContext)
    assert context.hub is hub and context.config is server.config
    assert context.deliverer is server.deliverer and context.metrics is server.metrics
    assert context.timer is server.timer and context.heartbeats is server.heartbeats
    assert context.server_name == server.server_name
    assert context.parser.parse({"type": "unsubscribe", "channel": "xx"}).channel == "xx"
    assert "server" not in {field.name for field in attrs.fields(ConnectionContext)}


async def test_a_live_connection_holds_the_context_and_no_server(start_server):
    running = await start_server()
    raw = await RawClient.connect(running.port)
    try:
        welcome = await raw_welcome(raw)
        [connection] = running.server.connections
        assert connection.context is running.server.context
        assert welcome["server"] == running.server.context.server_name
        assert all(getattr(connection, name) is not running.server for name in type(connection).__slots__)
    finally:
        await raw.aclose()
