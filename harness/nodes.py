"""Server processes for cluster runs: N wsnursery nodes on one engine, killed and restarted.

``Nodes`` runs ``python -m wsnursery serve --engine ENGINE --port P`` once per node, each
on a port chosen up front and kept across restarts (so fault proxies and client URL lists
stay valid). It knows a node is up when the node logs where it listens (at log level info). ``kill`` sends
SIGKILL (no drain, no close frames: what a crashed machine looks like to clients);
``restart`` starts the node again on its port. ``kill_loop`` does both on a seeded schedule,
one node down at a time, so the cluster always has a node to fail over to. ``balance`` is
a TCP front (round-robin, skipping nodes that refuse) so that one address reaches the
cluster, as a load balancer would: clients behind it reconnect to whichever node is up.

Bounds: each node's output is kept as its last ``OUTPUT_TAIL`` bytes (for error reports);
a node that does not listen within ``START_TIMEOUT`` seconds fails the run with its output.
Everything is on 127.0.0.1.
"""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import attrs
import trio

START_TIMEOUT = 20.0
OUTPUT_TAIL = 16 * 1024
KILL_INTERVAL = 3.0  # seconds between node kills in a run (jittered ±50%)
KILL_DOWN = 1.0  # seconds a killed node stays down
_LISTENING = re.compile(rb"listening on ws://127\.0\.0\.1:(\d+)/")


class NodeError(Exception):
    """A node that would not start (the message holds the tail of its output)."""


@attrs.define
class Node:
    index: int
    port: int
    process: trio.Process | None = None
    output: bytearray = attrs.field(factory=bytearray)
    starts: int = 0
    kills: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Nodes:
    def __init__(
        self,
        engine: str,
        count: int,
        settings: Mapping[str, Any] | None = None,
        *,
        seed: int = 1,
        python: str = sys.executable,
    ) -> None:
        if count < 1:
            raise ValueError("a cluster needs at least one node")
        if dict(settings or {}).get("log_level", "info") not in ("debug", "info"):
            raise ValueError("nodes log at info or debug: their 'listening on' line says they are up")
        self.engine = engine
        self.settings = dict(settings or {})
        self.python = python
        self.random = random.Random(seed)
        self.nodes = [Node(index, _free_port()) for index in range(count)]
        self._nursery: trio.Nursery | None = None

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def kills(self) -> int:
        return sum(node.kills for node in self.nodes)

    def command(self, node: Node) -> list[str]:
        flags = [
            self.python,
            "-m",
            "wsnursery",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(node.port),
            "--engine",
            self.engine,
        ]
        for name, value in self.settings.items():
            flags += ["--" + name.replace("_", "-"), str(value)]
        return flags

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start every node; report the URLs once all listen; stop them all when cancelled."""
        failure: NodeError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for node in self.nodes:
                        await self.start(node)
                except NodeError as exc:
                    failure = exc
                    nursery.cancel_scope.cancel()
                else:
                    task_status.started(self.urls)
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for node in self.nodes:
                    await self._stop(node, signal.SIGTERM)
        if failure is not None:
            raise failure

    async def start(self, node: Node) -> None:
        """Start ``node`` (on its port) and wait until it listens."""
        assert self._nursery is not None, "start() runs inside run()"
        assert not node.up, f"node {node.index} is already running"
        listening = trio.Event()
        node.output.clear()
        process = await trio.lowlevel.open_process(
            self.command(node), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        node.process = process
        node.starts += 1
        self._nursery.start_soon(self._pump, node, process, listening)
        with trio.move_on_after(START_TIMEOUT):
            await listening.wait()
        if not (listening.is_set() and _LISTENING.search(node.output)):
            await self._stop(node, signal.SIGKILL)
            tail = node.output.decode(errors="replace")[-2000:].strip()
            raise NodeError(f"node {node.index} did not listen on {node.port} within {START_TIMEOUT}s: {tail}")

    async def kill(self, node: Node) -> None:
        """SIGKILL ``node`` and wait for it to be gone."""
        if node.up:
            node.kills += 1
        await self._stop(node, signal.SIGKILL)

    async def restart(self, node: Node) -> None:
        await self.start(node)

    def start_kill_loop(self, interval: float, down_time: float) -> None:
        """Run ``kill_loop`` as a task of ``run``'s own nursery, so it is cancelled and done
        before ``run`` stops the nodes (a loop outside it could restart a node mid-shutdown)."""
        assert self._nursery is not None, "start_kill_loop() runs once run() has started"
        self._nursery.start_soon(self.kill_loop, interval, down_time)

    async def kill_loop(self, interval: float, down_time: float) -> None:
        """Every ``interval`` seconds (jittered ±50%), SIGKILL one node, restart it after ``down_time``."""
        while True:
            await trio.sleep(interval * self.random.uniform(0.5, 1.5))
            node = self.random.choice(self.nodes)
            await self.kill(node)
            await trio.sleep(down_time)
            await self.restart(node)

    async def balance(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """A TCP front for the cluster: each connection goes to the next node that accepts it.

        Reports its port. Connections are spread round-robin; a node that refuses (killed, or
        restarting) is skipped for the next one. When a node dies, the connections it carried
        are closed both ways, and the clients reconnect through here to a live node.
        """
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            for extra in listeners[1:]:
                await extra.aclose()
            listener = listeners[0]
            task_status.started(listener.socket.getsockname()[1])
            turn = 0
            while True:
                client = await listener.accept()
                nursery.start_soon(self._front, client, turn)
                turn += 1

    async def _front(self, client: trio.SocketStream, turn: int) -> None:
        upstream = None
        for step in range(len(self.nodes)):
            node = self.nodes[(turn + step) % len(self.nodes)]
            if not node.up:
                continue
            try:
                with trio.fail_after(5):
                    upstream = await trio.open_tcp_stream("127.0.0.1", node.port)
                break
            except (OSError, trio.TooSlowError):
                continue
        if upstream is None:
            await trio.aclose_forcefully(client)
            return
        async with client, upstream, trio.open_nursery() as pumps:
            pumps.start_soon(_splice, client, upstream, pumps.cancel_scope)
            pumps.start_soon(_splice, upstream, client, pumps.cancel_scope)

    async def _pump(self, node: Node, process: trio.Process, listening: trio.Event) -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.receive_some(65536):
            if node.process is process:
                node.output += chunk
                if not listening.is_set() and _LISTENING.search(node.output):
                    listening.set()
                del node.output[:-OUTPUT_TAIL]
        listening.set()  # the node exited: ``start`` sees it is not up

    async def _stop(self, node: Node, signum: int) -> None:
        process = node.process
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signum)
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        node.process = None


async def _splice(source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope) -> None:
    """Copy ``source`` to ``sink`` until either side ends; then end both directions."""
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    both.cancel()


async def start_cluster(
    nursery: trio.Nursery, engine: str, count: int, settings: Mapping[str, Any], *, seed: int, kill: bool
) -> tuple[Nodes, int]:
    """``count`` nodes on ``engine`` and a front for them (its port), in ``nursery``; with
    ``kill``, one node at a time is SIGKILLed and restarted (``KILL_INTERVAL``, ``KILL_DOWN``)."""
    nodes = Nodes(engine, count, settings, seed=seed)
    await nursery.start(nodes.run)
    port = await nursery.start(nodes.balance)
    if kill:
        nodes.start_kill_loop(KILL_INTERVAL, KILL_DOWN)
    return nodes, port


def with_prefix(engine: str, prefix: str) -> str:
    """``engine`` with its Redis keys under ``prefix`` (the server's ``?prefix=``)."""
    return f"{engine}{'&' if '?' in engine else '?'}prefix={prefix}"


async def delete_keys(engine: str, prefix: str) -> None:
    """Delete the keys a run left under ``prefix`` in the engine's Redis."""
    from wsnursery.redis_store import connect

    async with connect(engine.partition("?")[0], prefix=prefix) as store:
        keys = [key async for key in store.client.scan_iter(match=f"{prefix}*")]
        if keys:
            await store.client.delete(keys)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
