"""Hostile-client measurements for README "Hardening": input size against server RSS growth.

    python benches/hardening.py                  # every scenario, each on a fresh server
    python benches/hardening.py --only storm,dag # some of them

Needs the harness importable (``pip install -e '.[bench]'``, or ``PYTHONPATH=$PWD`` from the
repository root). Each scenario starts a fresh ``python -m wsnursery serve``
(the repository's code) on 127.0.0.1 (ephemeral port),
reads the server's RSS (psutil) before and after sending one hostile input from a raw
socket client, and reports the bytes sent, the RSS growth, growth per byte sent, what the
client got back, and how long a second, well-behaved client waited for a pong meanwhile
(the event loop is shared). Numbers depend on the machine; the script prints it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import cbor2
import psutil

from harness.machine import describe
from harness.servers import ServerProcess, wsnursery_argv

REPO = Path(__file__).resolve().parent.parent

MIB = 1 << 20
MASK = b"\x01\x02\x03\x04"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    key = int.from_bytes(MASK * (length // 4 + 1), "little") & ((1 << (8 * length)) - 1)
    body = (int.from_bytes(payload, "little") ^ key).to_bytes(length, "little") if length else b""
    return head + MASK + body


class Raw:
    """A blocking raw WebSocket client (enough for one hostile input and the reply to it)."""

    def __init__(self, port: int, path: str = "/", protocol: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if protocol:
            head += f"Sec-WebSocket-Protocol: {protocol}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        assert self.buffer.startswith(b"HTTP/1.1 101"), self.buffer[:80]
        self.buffer = self.buffer.split(b"\r\n\r\n", 1)[1]

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def read_frame(self) -> tuple[int, bytes] | None:
        def fill(n: int) -> bool:
            while len(self.buffer) < n:
                try:
                    chunk = self.sock.recv(1 << 20)
                except OSError:
                    return False
                if not chunk:
                    return False
                self.buffer += chunk
            return True

        if not fill(2):
            return None
        length, offset = self.buffer[1] & 0x7F, 2
        if length == 126:
            fill(4)
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            fill(10)
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if not fill(offset + length):
            return None
        opcode, payload = self.buffer[0] & 0x0F, self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return opcode, payload

    def outcome(self, skip_welcome: bool = True) -> str:
        """The first answer after the input: an error frame's code, a close code, or EOF."""
        while (got := self.read_frame()) is not None:
            opcode, payload = got
            if opcode == 0x8:
                return f"close {struct.unpack('!H', payload[:2])[0]}" if len(payload) >= 2 else "close"
            if opcode in (0x1, 0x2):
                try:
                    reply = json.loads(payload) if opcode == 0x1 else cbor2.loads(payload)
                except ValueError:
                    return f"{len(payload)}-byte frame"
                if reply.get("type") in ("welcome", "subscribed"):
                    continue
                return f"{reply.get('type')} {reply.get('code', '')}".strip() + f" ({len(payload)} B)"
        return "EOF"


class PingProbe(threading.Thread):
    """A well-behaved client pinging every 10 ms; records the longest wait for a pong."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = Raw(port)
        self.client.read_frame()  # welcome
        self.worst = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            self.client.send(frame(0x9, b"p"))
            while (got := self.client.read_frame()) is not None and got[0] != 0xA:
                pass
            self.worst = max(self.worst, time.perf_counter() - start)
            time.sleep(0.01)


def storm(port: int) -> tuple[int, str]:
    """Item 1: "[" then one million empty non-final continuation frames."""
    client = Raw(port)
    client.read_frame()
    client.send(frame(0x1, b"[", fin=False))
    chunk = frame(0x0, b"", fin=False) * 10_000
    for _ in range(100):
        client.send(chunk)
    return 6 * 1_000_001 + 1, client.outcome()


def one_byte_fragments(port: int) -> tuple[int, str]:
    """Item 2: a 1 MiB binary message as 1-byte fragments (the issue's input)."""
    client = Raw(port)
    client.read_frame()
    client.send(frame(0x2, b"[", fin=False))
    chunk = frame(0x0, b"x", fin=False) * 8192
    for _ in range(MIB // 8192):
        client.send(chunk)
    client.send(frame(0x0, b"]"))
    return 7 * (MIB + 2), client.outcome()


def kib_fragments(port: int) -> tuple[int, str]:
    """A 1 MiB JSON text message in 1,024 fragments of 1 KiB (within the fragment bound)."""
    client = Raw(port)
    client.read_frame()
    body = json.dumps({"type": "publish", "id": 1, "channel": "a", "data": "x" * (MIB - 100)}).encode()
    pieces = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    wire = b"".join(frame(0x1 if i == 0 else 0x0, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces))
    client.send(wire)
    return len(wire), client.outcome()


def shared_refs(port: int) -> tuple[int, str]:
    """Item 5: a 148 KiB CBOR publish: one 2,000-character string referenced 49,999 times."""
    subscriber = Raw(port)
    subscriber.read_frame()
    subscriber.send(frame(0x1, b'{"type":"subscribe","id":1,"channel":"a"}'))
    subscriber.read_frame()
    client = Raw(port, protocol="wsnursery.v1.cbor")
    client.read_frame()
    head = cbor2.dumps({"type": "publish", "id": 5, "channel": "a"})
    data = b"\x9a" + struct.pack("!I", 50_000) + b"\xd8\x1c" + cbor2.dumps("s" * 2000) + b"\xd8\x1d\x00" * 49_999
    payload = bytes([head[0] + 1]) + head[1:] + cbor2.dumps("data") + data
    client.send(frame(0x2, payload))
    return len(payload), client.outcome()


def dag(port: int) -> tuple[int, str]:
    """Item 6: shared references nested as a DAG, depth 22 (each level doubles the walk)."""
    client = Raw(port, protocol="wsnursery.v1.cbor")
    client.read_frame()
    value: object = "ab"
    for _ in range(22):
        value = [value, value]
    head = cbor2.dumps({"type": "publish", "id": 5, "channel": "a"})
    payload = bytes([head[0] + 1]) + head[1:] + cbor2.dumps("data") + cbor2.dumps(value, value_sharing=True)
    client.send(frame(0x2, payload))
    return len(payload), client.outcome()


def colliding_keys(port: int) -> tuple[int, str]:
    """CBOR map keys that are tuples of ints with one hash (quadratic dict inserts)."""
    import itertools

    client = Raw(port, protocol="wsnursery.v1.cbor")
    client.read_frame()
    same = [5 + k * (2**61 - 1) for k in range(8)]
    keys = itertools.islice(itertools.product(same, repeat=5), 20_000)
    payload = cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": {key: 0 for key in keys}})
    client.send(frame(0x2, payload))
    return len(payload), client.outcome()


def history(port: int) -> tuple[int, str]:
    """Item 3: sixteen publishes of a 1 MiB JSON array of {} to a channel nobody reads."""
    client = Raw(port)
    client.read_frame()
    data = "[" + ",".join(["{}"] * ((MIB - 100) // 3)) + "]"
    body = ('{"type":"publish","id":1,"channel":"h","data":' + data + "}").encode()
    outcome = ""
    for _ in range(16):
        client.send(frame(0x1, body))
        outcome = client.outcome()
    return 16 * len(body), outcome


def echo_never_reads(port: int) -> tuple[int, str]:
    """Item 4: 1 MiB binary messages to /echo from a client that never reads, for 5 s."""
    client = Raw(port, path="/echo")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.sock.settimeout(5)
    message = frame(0x2, b"e" * MIB)
    sent = 0
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            sent += client.sock.send(message)
    except OSError:
        pass
    return sent, "server stopped reading (TCP backpressure)"


SCENARIOS = {
    "storm": storm,
    "fragments": one_byte_fragments,
    "kib-fragments": kib_fragments,
    "shared": shared_refs,
    "dag": dag,
    "keys": colliding_keys,
    "history": history,
    "echo": echo_never_reads,
}


def run(name: str) -> dict[str, object]:
    with ServerProcess("wsnursery", wsnursery_argv(), cwd=REPO) as server:
        assert server.port is not None
        process = psutil.Process(server.pid)
        time.sleep(0.5)
        before = process.memory_info().rss
        probe = PingProbe(server.port)
        probe.start()
        started = time.perf_counter()
        sent, outcome = SCENARIOS[name](server.port)
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
        probe.stop.set()
        probe.join(10)
        growth = process.memory_info().rss - before
    return {
        "scenario": name,
        "bytes_sent": sent,
        "rss_growth": growth,
        "per_byte": growth / sent if sent else 0.0,
        "answer": outcome,
        "seconds": round(elapsed, 2),
        "worst_pong_wait_s": round(probe.worst, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    args = parser.parse_args()
    machine = describe()
    print(f"# {machine.get('cpu_model')}, CPython {sys.version.split()[0]}, {machine.get('logical_cpus', '')} CPUs")
    print("| scenario | bytes sent | server RSS growth | per byte sent | answer | worst pong wait (other client) |")
    print("|---|---|---|---|---|---|")
    for name in args.only.split(","):
        row = run(name)
        print(
            f"| {name} | {row['bytes_sent']:,} | {row['rss_growth'] / MIB:+.1f} MiB | {row['per_byte']:.2f} "
            f"| {row['answer']} | {row['worst_pong_wait_s']} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
