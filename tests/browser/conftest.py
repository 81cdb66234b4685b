"""Browser tests: Debian's chromium driven by Playwright's sync API, a server in a Trio thread.

The tests are plain (non-async) functions, so pytest-trio leaves them alone; everything Trio
(the server, the harness's fault proxy, Python SDK clients) runs in one background thread with
its own ``trio.run`` (:class:`TrioThread`). Only 127.0.0.1 is ever contacted; the page loads
nothing from the internet.

No chromium: the tests skip with the reason, unless ``WSNURSERY_REQUIRE_BROWSER=1`` (CI), where
they fail instead. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from wsnursery.config import Config
from wsnursery.server import Server

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
REQUIRE = os.environ.get("WSNURSERY_REQUIRE_BROWSER") == "1"

# Short timers (as the reliability harness uses) so faults heal within seconds.
FAST_SERVER = {
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 1.0,
    "ack_timeout": 0.25,
    "ack_max_timeout": 2.0,
    "close_timeout": 0.5,
    "shutdown_timeout": 1.0,
}


def find_chromium() -> str | None:
    explicit = os.environ.get("WSNURSERY_CHROMIUM")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason}, and WSNURSERY_REQUIRE_BROWSER=1 asks for real browser tests")
    pytest.skip(reason)


# Per module, not per session: while Playwright's sync API is open it holds an asyncio loop
# "running" in the main thread, and tests elsewhere that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = find_chromium()
    if path is None:
        _unavailable("no chromium found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors
    try:
        yield page
    finally:
        context.close()


class TrioThread:
    """A Trio event loop in a background thread; ``call`` runs an async function in it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="trio", daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Trio thread did not start")

    def _main(self) -> None:
        async def root() -> None:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(root)
        except BaseException as exc:
            self.error = exc

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 60.0) -> Any:
        async def bounded() -> Any:
            with trio.fail_after(timeout):
                return await fn(*args)

        return trio.from_thread.run(bounded, trio_token=self.token)

    def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``nursery.start(fn, *args)`` in the Trio thread; returns what ``fn`` started with."""
        return self.call(self.nursery.start, fn, *args)

    def stop(self) -> None:
        trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self.token)
        self.thread.join(15)
        if self.thread.is_alive():
            raise RuntimeError("the Trio thread did not stop within 15 s")
        if self.error is not None:
            raise self.error


@pytest.fixture
def trio_thread() -> Iterator[TrioThread]:
    loop = TrioThread()
    try:
        yield loop
    finally:
        loop.stop()


class ServerHandle:
    def __init__(self, server: Server, port: int) -> None:
        self.server, self.port = server, port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/"


@pytest.fixture
def start_server(trio_thread: TrioThread) -> Callable[..., ServerHandle]:
    """``start_server(**config)``: a wsnursery server on 127.0.0.1, in the Trio thread."""

    def start(**overrides: Any) -> ServerHandle:
        config = Config(**({"host": "127.0.0.1", "port": 0, "log_level": "warning"} | FAST_SERVER | overrides))
        server = Server(config)
        ports = trio_thread.start(server.run)
        return ServerHandle(server, ports[0])

    return start
