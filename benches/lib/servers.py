"""Start and stop the servers under test as subprocesses on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import collections
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent.parent
REPO = BENCHES.parent
HOST = "127.0.0.1"

#: name -> argv. "wsnursery" is ours; the others are the peers in benches/peers/.
COMMANDS: dict[str, list[str]] = {
    "wsnursery": [sys.executable, "-m", "wsnursery", "serve", "--host", HOST, "--port", "0"],
    "websockets_asyncio": [sys.executable, str(BENCHES / "peers" / "websockets_asyncio.py"), "--host", HOST,
                           "--port", "0"],
    "websockets_trio": [sys.executable, str(BENCHES / "peers" / "websockets_trio.py"), "--host", HOST,
                        "--port", "0"],
    "trio_websocket_plain": [sys.executable, str(BENCHES / "peers" / "trio_websocket_plain.py"), "--host", HOST,
                             "--port", "0"],
}
ALL_SERVERS = tuple(COMMANDS)
REFERENCE = "websockets_asyncio"

_READY = re.compile(r"^READY (\d+)\s*$")
_LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")


def _child_setup() -> None:
    """Runs in the server child before exec: raise the fd limit, die with the bench process."""
    raise_nofile_limit()
    try:  # Linux: SIGTERM the server if the bench process dies without cleaning up.
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def raise_nofile_limit() -> int:
    """Raise this process's soft fd limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class ServerError(RuntimeError):
    pass


class ServerProcess:
    """A server under test. Output of both pipes is drained continuously (a server that logs
    a lot must never block on a full pipe) and the last lines are kept for error messages."""

    def __init__(self, name: str, argv: list[str] | None = None, start_timeout: float = 20.0):
        self.name = name
        self.argv = argv or COMMANDS[name]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._port_found = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self, stream, label: str) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(f"[{label}] {line}")
            if self.port is None:
                m = _READY.match(line) or _LISTENING.search(line)
                if m:
                    self.port = int(m.group(1))
                    self._port_found.set()
        stream.close()

    def start(self) -> "ServerProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=_child_setup, start_new_session=True,
        )
        for stream, label in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            t = threading.Thread(target=self._drain, args=(stream, label), daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + self.start_timeout
        while not self._port_found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with {self.proc.returncode}" if self.proc.poll() is not None
                       else f"printed no READY/listening line within {self.start_timeout:.0f}s")
                self.stop()
                raise ServerError(f"{self.name} {why}; last output:\n  " + "\n  ".join(list(self.tail)[-12:]))
        return self

    def stop(self, timeout: float = 8.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit code."""
        p = self.proc
        if p is None:
            return None
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if p.poll() is not None:
                break
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        for t in self._threads:
            t.join(2.0)
        return p.poll()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
