"""Redis for tests: the shared one (``WSNURSERY_TEST_REDIS``) and private throwaway servers.

Tests that need Redis use the ``redis_test_url`` fixture (import ``redis_test_url_fixture``
into the test module), or ``redis_url()``: it is skipped, with the reason, when Redis does not
answer, unless ``WSNURSERY_REQUIRE_REDIS=1`` (CI) turns that skip into a failure. Each test
uses its own key prefix and deletes its keys afterwards (``cleanup``).

``PrivateRedis`` runs a ``redis-server`` of our own on a free port, without persistence, for
tests that stop, restart or flush Redis (never done to the shared one).
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import socket
import subprocess
import time

import pytest

DEFAULT_URL = "redis://127.0.0.1:6379/15"


def _required() -> bool:
    return os.environ.get("WSNURSERY_REQUIRE_REDIS", "") not in ("", "0")


def _unreachable(reason: str) -> None:
    if _required():
        pytest.fail(f"WSNURSERY_REQUIRE_REDIS is set but {reason}")
    pytest.skip(reason)


def redis_url() -> str:
    """The test Redis URL; skips (or fails under WSNURSERY_REQUIRE_REDIS=1) when it is down."""
    url = os.environ.get("WSNURSERY_TEST_REDIS", DEFAULT_URL)
    host, port = _host_port(url)
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            sock.settimeout(2)
            if not sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                raise OSError("no PONG")
    except OSError as exc:
        _unreachable(f"no Redis answers at {url} ({exc}); set WSNURSERY_TEST_REDIS")
    return url


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


@pytest.fixture(name="redis_test_url")
def redis_test_url_fixture() -> str:
    """``redis_url()`` as a plain fixture: a skip there keeps its reason (inside a test's Trio
    run, pytest-trio reports a skip without it)."""
    return redis_url()


@pytest.fixture(name="private_redis")
def private_redis_fixture():
    """A started ``PrivateRedis``, stopped after the test."""
    redis = PrivateRedis()
    redis.start()
    yield redis
    redis.stop()


def unique_prefix() -> str:
    return f"wsntest:{secrets.token_hex(4)}:"


async def cleanup(client, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(keys)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own (no persistence) that tests may stop, start and flush."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            _unreachable("redis-server is not installed (needed to stop and start a Redis)")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        output = b""
        assert self.process.stdout is not None
        while b"Ready to accept connections" not in output:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(left, 0))
            chunk = os.read(self.process.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                self.stop()
                raise RuntimeError(f"redis-server did not start on {self.port}: {output.decode()[-500:]}")
            output += chunk

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
