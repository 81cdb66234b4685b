"""Shared fixtures: a real server on an ephemeral 127.0.0.1 port, and small client helpers."""

from __future__ import annotations

import os

import attrs
import pytest
from hypothesis import HealthCheck, settings

from wsnursery.config import Config
from wsnursery.server import Server

# Every test may name this fixture: it fails the test if the server logged an error.
from .helpers import server_errors  # noqa: F401

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Short timers so tests that wait on heartbeats and timeouts stay fast.
TEST_DEFAULTS = dict(host="127.0.0.1", port=0, shutdown_timeout=2.0, close_timeout=1.0)


@attrs.define
class RunningServer:
    server: Server
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def echo_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"


@pytest.fixture
async def start_server(nursery):
    """``await start_server(**settings)`` runs a Server in the test's nursery."""

    async def start(**overrides) -> RunningServer:
        config = Config(**(TEST_DEFAULTS | overrides))
        server = Server(config)
        ports = await nursery.start(server.run)
        return RunningServer(server, ports[0])

    return start


@pytest.fixture
async def server(start_server) -> RunningServer:
    return await start_server()
