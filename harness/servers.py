"""Start and stop a server under test as a subprocess on a 127.0.0.1 ephemeral port.

``ServerProcess("wsnursery")`` runs ``python -m wsnursery serve`` with this interpreter; any
other server is given as its argv (``benches/side_by_side.py`` runs its peers from
``benches/peers/`` that way). A server is ready once it prints ``READY <port>`` or wsnursery's
``listening on ws://127.0.0.1:<port>/`` line.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from typing import Self

HOST = "127.0.0.1"


def wsnursery_argv(*extra: str) -> list[str]:
    """``python -m wsnursery serve`` on 127.0.0.1, an ephemeral port, with this interpreter."""
    return [sys.executable, "-m", "wsnursery", "serve", "--host", HOST, "--port", "0", *extra]


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
    """A server under test, its stdout and stderr written to one temporary file.

    A file, not a pipe: a pipe needs a reader in the bench process, and that reader woke once
    per server log line (about 4 context switches per connection against wsnursery, which logs
    a line per open and per close, and none against the peers, which log nothing). That was the
    bench's cost, charged to the 2 cores the server shares with the client. A file is also what
    a deployed server writes to. The file is read only to find the port and, on an error, for
    the last lines (`tail`). It grows with the run, as a pipe's reader's memory did not: ours
    writes about 200 bytes per connection, so 10 MB at the connect scenario's cap of 50,000
    connections. Every run is bounded, and the file is removed when the server stops."""

    TAIL_LINES = 40
    TAIL_BYTES = 16_384

    def __init__(
        self,
        name: str,
        argv: list[str] | None = None,
        start_timeout: float = 20.0,
        cwd: str | os.PathLike[str] | None = None,
    ):
        if argv is None and name != "wsnursery":
            raise ValueError(f"no command known for server {name!r}: give its argv")
        self.name = name
        self.argv = argv or wsnursery_argv()
        self.cwd = cwd  # None: this process's working directory
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._output = None  # the temporary file the server writes to
        self._last_tail: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def tail(self) -> list[str]:
        """The last lines the server wrote (the last read before its file was removed)."""
        if self._output is None:
            return self._last_tail
        size = os.fstat(self._output.fileno()).st_size
        start = max(0, size - self.TAIL_BYTES)
        data = os.pread(self._output.fileno(), size - start, start)
        lines = data.decode("utf-8", "replace").splitlines()
        if start:
            lines = lines[1:]  # the first line is cut
        return lines[-self.TAIL_LINES :]

    def _find_port(self, seen: int) -> int:
        """Look for the port in output written since offset `seen`; return the new offset."""
        fd = self._output.fileno()
        data = os.pread(fd, os.fstat(fd).st_size - seen, seen)
        end = data.rfind(b"\n")
        if end < 0:
            return seen
        for raw in data[:end].splitlines():
            line = raw.decode("utf-8", "replace").rstrip()
            m = _READY.match(line) or _LISTENING.search(line)
            if m:
                self.port = int(m.group(1))
                break
        return seen + end + 1

    def start(self) -> Self:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # held open for the server's life, closed (and so removed) by stop()
        self._output = tempfile.TemporaryFile(prefix=f"{self.name}-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            # preexec_fn is safe here: callers start a server before any thread of their own
            stderr=self._output,
            preexec_fn=_child_setup,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        seen = 0
        while True:
            seen = self._find_port(seen)
            if self.port is not None:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with {self.proc.returncode}"
                    if self.proc.poll() is not None
                    else f"printed no READY/listening line within {self.start_timeout:.0f}s"
                )
                tail = self.tail
                self.stop()
                raise ServerError(f"{self.name} {why}; last output:\n  " + "\n  ".join(tail[-12:]))
            time.sleep(0.02)  # a startup poll with a deadline, not a synchronisation

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
        if self._output is not None:
            self._last_tail = self.tail
            self._output.close()
            self._output = None
        return p.poll()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
