"""``--workers N``: N server processes on one port, supervised by the parent.

Each worker is a whole server (``cli.serve_forever``) in its own process, with its own
listening socket on the same address and port: ``SO_REUSEPORT`` lets the kernel spread new
connections over them. Workers share nothing but the engine, so ``--workers`` needs a shared
one (``--engine redis://...``); the config refuses the memory engine (exit status 2).

The supervisor (this module, plain Python, no Trio):
- reserves the port first: it binds (without listening) a ``SO_REUSEPORT`` socket per
  address and keeps it for its lifetime, so ``--port 0`` resolves to one port every worker
  uses, and a port someone else holds fails at once with one line (exit status 1);
- starts the workers, each in a process group of its own (a terminal's Ctrl-C reaches only
  the supervisor, which relays it once) that also gets SIGTERM if the supervisor dies;
- restarts a worker that dies, with a logged line. A worker that dies within
  ``MIN_UPTIME`` seconds of its start is restarted after a delay that doubles (up to
  ``MAX_RESTART_DELAY``); after ``MAX_QUICK_DEATHS`` such deaths in a row the supervisor
  gives up: it stops the others and exits with status 1;
- on SIGTERM or SIGINT, sends SIGTERM to every worker: each drains like a single server
  (1001 to its clients, up to ``shutdown_timeout``), and the supervisor exits 0 once all
  have exited 0. A second signal is relayed too, which stops the workers at once.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from typing import Any

import attrs
import trio

from . import logs
from .config import Config

log = logs.get("workers")

MIN_UPTIME = 2.0
MAX_QUICK_DEATHS = 5
MAX_RESTART_DELAY = 5.0
_PR_SET_PDEATHSIG = 1


async def open_reuseport_listeners(port: int, host: str) -> list[trio.SocketListener]:
    """Like ``trio.open_tcp_listeners``, with ``SO_REUSEPORT`` so several processes share the port."""
    addresses = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            try:
                _reuse(sock)
                await sock.bind(address)
                sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def _reuse(sock: Any) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def reserve_port(host: str, port: int) -> tuple[int, list[socket.socket]]:
    """Bind (not listen) ``SO_REUSEPORT`` sockets on every address of ``host``: the port to use."""
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            _reuse(sock)
            if port == 0 and held[:-1]:  # the other addresses take the port the first one got
                address = (address[0], held[0].getsockname()[1], *address[2:])
            sock.bind(address)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return port, held


@attrs.define
class _Slot:
    index: int
    process: Any = None  # multiprocessing.Process
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.slots = [_Slot(index) for index in range(1, config.workers + 1)]
        self.stopping = False
        self.failed: str | None = None
        self._context = multiprocessing.get_context("fork")

    def run(self) -> int:
        try:
            port, held = reserve_port(self.config.host, self.config.port)
        except OSError as exc:
            print(
                f"wsnursery: cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        self.config = attrs.evolve(self.config, port=port)
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        previous = {sig: signal.signal(sig, _noop) for sig in (signal.SIGINT, signal.SIGTERM)}
        old_fd = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        try:
            log.info(
                "supervisor: %d workers on %s:%d (engine %s)",
                len(self.slots),
                self.config.host,
                port,
                _redact(self.config.engine),
            )
            for slot in self.slots:
                self._start(slot)
            self._loop(wake_read)
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()
            for sock in held:
                sock.close()
        if self.failed is not None:
            print(f"wsnursery: {self.failed}", file=sys.stderr)
            return 1
        log.info("supervisor: every worker stopped")
        return 0

    def _loop(self, wake: socket.socket) -> None:
        signals = 0
        while any(slot.process is not None or slot.restart_at is not None for slot in self.slots):
            waiting = [slot.process.sentinel for slot in self.slots if slot.process is not None]
            restarts = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
            timeout = max(0.0, min(restarts) - time.monotonic()) if restarts else None
            ready = multiprocessing.connection.wait([*waiting, wake], timeout)
            if wake in ready:
                try:
                    signals += len(wake.recv(64))
                except BlockingIOError:
                    pass
                self._stop(signal.SIGTERM, again=signals > 1)
            for slot in self.slots:
                if slot.process is not None and not slot.process.is_alive():
                    self._reap(slot)
                if slot.restart_at is not None and time.monotonic() >= slot.restart_at:
                    slot.restart_at = None
                    if not self.stopping:
                        self._start(slot)

    def _stop(self, signum: int, *, again: bool = False) -> None:
        if self.stopping and not again:
            return
        alive = [slot for slot in self.slots if slot.process is not None]
        log.info("supervisor: %s; SIGTERM to %d workers", "stopping at once" if again else "draining", len(alive))
        self.stopping = True
        for slot in self.slots:
            slot.restart_at = None
        for slot in alive:
            try:
                os.kill(slot.process.pid, signum)
            except ProcessLookupError:
                pass

    def _start(self, slot: _Slot) -> None:
        slot.process = self._context.Process(
            target=_worker, args=(self.config, slot.index, os.getpid()), name=f"wsnursery-worker-{slot.index}"
        )
        slot.process.start()
        slot.started = time.monotonic()
        log.info("supervisor: worker %d started (pid %d)", slot.index, slot.process.pid)

    def _reap(self, slot: _Slot) -> None:
        process, slot.process = slot.process, None
        process.join()
        status = process.exitcode
        if self.stopping:
            (log.info if status == 0 else log.warning)(
                "supervisor: worker %d (pid %d) exited with status %s", slot.index, process.pid, status
            )
            if status != 0 and self.failed is None:
                self.failed = f"worker {slot.index} exited with status {status} while draining"
            return
        quick = time.monotonic() - slot.started < MIN_UPTIME
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
        if slot.quick_deaths >= MAX_QUICK_DEATHS:
            self.failed = (
                f"worker {slot.index} died {slot.quick_deaths} times within {MIN_UPTIME}s of starting "
                f"(last status {status}); giving up"
            )
            log.error("supervisor: %s", self.failed)
            self._stop(signal.SIGTERM)
            return
        delay = min(MAX_RESTART_DELAY, 0.1 * 2 ** (slot.quick_deaths - 1)) if quick else 0.0
        log.warning(
            "supervisor: worker %d (pid %d) died with status %s; restarting it in %.1fs",
            slot.index,
            process.pid,
            status,
            delay,
        )
        slot.restart_at = time.monotonic() + delay


def _worker(config: Config, index: int, parent: int) -> None:
    """A worker process: its own process group, SIGTERM when the supervisor dies, one server."""
    signal.set_wakeup_fd(-1)  # the supervisor's, inherited through fork
    os.setpgid(0, 0)
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from .cli import run_server  # here: cli imports this module

    sys.exit(run_server(config))


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: an orphaned worker drains on its own SIGTERM
        pass


def _noop(signum: int, frame: Any) -> None:
    """Signals only write to the wakeup fd; the loop reads it."""


def _redact(url: str) -> str:
    """An engine URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
