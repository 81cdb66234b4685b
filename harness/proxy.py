"""Trio shell of the WebSocket fault proxy: moves bytes and time, nothing else.

Every accepted connection gets its own upstream TCP connection and its own
nursery with one pump per direction. A pump reads, splits the bytes into
frames (`harness.wsframes`), asks the `FaultSchedule` about each data frame
and writes. It reads only as fast as it can write, holding at most one read
plus one frame, so TCP backpressure reaches the peers. When either side
ends, both sockets close and every task of that connection is gone.

A ``reset`` aborts both sockets with RST; a ``stall`` forwards and reads
nothing more in either direction until a peer closes or resets its socket
(seen without reading, through TCP_INFO on Linux). Neither forwards the
frame that triggered it. Bytes are never rewritten. If the upgrade is
refused the body is split as if it were frames; a split error just closes
the connection.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable

import attrs
import trio

from harness.faults import Direction, Fault, FaultKind, FaultSchedule, FaultStats
from harness.wsframes import MAX_FRAME_BYTES, Frame, FrameSplitError, FrameSplitter

READ_SIZE = 64 * 1024
UPSTREAM_CONNECT_TIMEOUT = 10.0  # seconds
STALL_CLOSE_CHECK_INTERVAL = 0.05  # seconds between peer-closed checks in a stall
ACCEPT_RETRY_DELAY = 0.1  # seconds to back off when out of file descriptors
_ACCEPT_CAPACITY_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8  # Linux tcpi_state values: reset, peer FIN
MAX_EVENTS = 100_000  # fault and connection events kept per proxy; past it only counted


@attrs.frozen
class FaultEvent:
    """One fault the proxy injected: when (``clock`` seconds), where, which."""

    at: float
    connection: int
    direction: Direction
    kind: FaultKind


def _abort(stream: trio.SocketStream) -> None:
    """Close with RST: SO_LINGER on with a zero timeout, then close."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


def _peer_has_closed(stream: trio.SocketStream) -> bool:
    """Whether the peer sent FIN or RST, without reading any pending data."""
    if not hasattr(socket, "TCP_INFO"):  # not Linux: a stall lasts until cancelled
        return False
    try:
        info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except OSError:
        return True
    return info[0] in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


async def _wait_until_peer_closes(stream: trio.SocketStream) -> None:
    """Return once the peer closes or resets ``stream``; drain nothing."""
    await trio.lowlevel.wait_readable(stream.socket)  # FIN, RST or data arrived
    while not _peer_has_closed(stream):  # data pending: poll the TCP state
        await trio.sleep(STALL_CLOSE_CHECK_INTERVAL)


@attrs.define(eq=False)
class _Link:
    """The two sockets of one proxied connection and why forwarding ended."""

    index: int
    client: trio.SocketStream
    upstream: trio.SocketStream
    forwarding: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    ending: FaultKind | str | None = None  # "closed", RESET or STALL

    def ends(self, direction: Direction) -> tuple[trio.SocketStream, trio.SocketStream]:
        """(source, sink) of ``direction``."""
        if direction is Direction.UPSTREAM:
            return self.client, self.upstream
        return self.upstream, self.client

    def stop(self, ending: FaultKind | str) -> None:
        if self.ending is None:
            self.ending = ending
        self.forwarding.cancel()

    async def wait_until_either_closes(self) -> None:
        async with trio.open_nursery() as watchers:
            for stream in (self.client, self.upstream):
                watchers.start_soon(self._watch, stream, watchers.cancel_scope)

    @staticmethod
    async def _watch(stream: trio.SocketStream, watchers: trio.CancelScope) -> None:
        await _wait_until_peer_closes(stream)
        watchers.cancel()

    def close(self) -> None:
        for stream in (self.client, self.upstream):
            if self.ending is FaultKind.RESET:
                _abort(stream)
            else:
                stream.socket.close()


@attrs.define(eq=False)
class FaultProxy:
    """Frame-aware TCP proxy in front of one WebSocket server.

    ``port = await nursery.start(proxy.run)``; then connect clients to
    ``listen_host:port``. Connections are numbered from 0 in accept order;
    that number is the schedule's connection index. ``stats`` counts the
    faults injected, ``connections_handled`` the connections accepted and
    ``active_connections`` those still open. ``events`` keeps each fault with
    its time on ``clock`` and ``opened`` each connection's accept time (both
    up to ``MAX_EVENTS``; ``events_dropped`` counts what did not fit), so a
    harness can tell how long each fault took to heal. An unreachable
    upstream aborts the client with RST.

    ``more_upstreams`` puts the proxy in front of several servers (the nodes of
    one cluster): it listens on one port per server, ``ports[i]`` leading to the
    i-th (``port`` is ``ports[0]``). Connections on every port share one count
    and one schedule, so a client's k-th connection is the schedule's
    connection k whichever node it reached.
    """

    upstream_host: str
    upstream_port: int
    schedule: FaultSchedule
    more_upstreams: tuple[tuple[str, int], ...] = ()
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    read_size: int = READ_SIZE
    upstream_connect_timeout: float = UPSTREAM_CONNECT_TIMEOUT
    max_frame_bytes: int = MAX_FRAME_BYTES
    clock: Callable[[], float] = time.monotonic
    stats: FaultStats = attrs.field(factory=FaultStats, init=False)
    events: list[FaultEvent] = attrs.field(factory=list, init=False)
    opened: list[float] = attrs.field(factory=list, init=False)
    events_dropped: int = attrs.field(default=0, init=False)
    connections_handled: int = attrs.field(default=0, init=False)
    active_connections: int = attrs.field(default=0, init=False)
    port: int | None = attrs.field(default=None, init=False)
    ports: list[int] = attrs.field(factory=list, init=False)
    _connection_ended: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen (a port per upstream), report the first bound port via ``task_status``, serve forever."""
        upstreams = [(self.upstream_host, self.upstream_port), *self.more_upstreams]
        listeners: list[trio.SocketListener] = []
        try:
            for number, _ in enumerate(upstreams):
                port = self.listen_port if number == 0 else 0
                listener, *extra = await trio.open_tcp_listeners(port, host=self.listen_host)
                for unused in extra:
                    unused.socket.close()
                listeners.append(listener)
            async with trio.open_nursery() as nursery:
                self.ports = [listener.socket.getsockname()[1] for listener in listeners]
                self.port = self.ports[0]
                task_status.started(self.port)
                for listener, upstream in zip(listeners, upstreams):
                    nursery.start_soon(self._serve_listener, listener, upstream, nursery)
        finally:
            for listener in listeners:
                listener.socket.close()  # no checkpoint: a cancelled run still closes every one

    async def _serve_listener(
        self, listener: trio.SocketListener, upstream: tuple[str, int], nursery: trio.Nursery
    ) -> None:
        while True:
            client = await self._accept(listener)
            index = self.connections_handled
            self.connections_handled += 1
            if len(self.opened) < MAX_EVENTS:
                self.opened.append(self.clock())
            self.active_connections += 1
            nursery.start_soon(self._serve_connection, client, index, upstream)

    async def wait_idle(self) -> None:
        """Wait until no proxied connection is open (tasks included)."""
        await trio.lowlevel.checkpoint()
        while self.active_connections:
            await self._connection_ended.park()

    @staticmethod
    async def _accept(listener: trio.SocketListener) -> trio.SocketStream:
        while True:
            try:
                return await listener.accept()
            except OSError as error:
                if error.errno not in _ACCEPT_CAPACITY_ERRORS:
                    raise
                await trio.sleep(ACCEPT_RETRY_DELAY)

    async def _serve_connection(self, client: trio.SocketStream, index: int, to: tuple[str, int]) -> None:
        link = None
        try:
            upstream = await self._connect_upstream(*to)
            if upstream is None:
                _abort(client)
                return
            link = _Link(index, client, upstream)
            with link.forwarding:
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._pump, link, Direction.UPSTREAM)
                    pumps.start_soon(self._pump, link, Direction.DOWNSTREAM)
            if link.ending is FaultKind.STALL:
                await link.wait_until_either_closes()
        finally:
            if link is None:
                client.socket.close()  # no-op after an abort
            else:
                link.close()
            self.active_connections -= 1
            self._connection_ended.unpark_all()

    async def _connect_upstream(self, host: str, port: int) -> trio.SocketStream | None:
        with trio.move_on_after(self.upstream_connect_timeout):
            try:
                return await trio.open_tcp_stream(host, port)
            except OSError:
                pass
        return None

    async def _pump(self, link: _Link, direction: Direction) -> None:
        source, sink = link.ends(direction)
        splitter = FrameSplitter(max_frame_bytes=self.max_frame_bytes)
        data_frames = 0
        try:
            while data := await source.receive_some(self.read_size):
                clean = bytearray()  # unfaulted chunks, coalesced into one write
                for chunk in splitter.feed(data):
                    fault = None
                    if isinstance(chunk, Frame) and chunk.is_data:
                        fault = self.schedule.decide(
                            link.index,
                            direction,
                            data_frames,
                            whole_message=chunk.is_whole_message,
                        )
                        data_frames += 1
                    if fault is None:
                        clean += chunk.raw
                        continue
                    self.stats.record(fault.kind, direction)
                    self._event(link.index, direction, fault.kind)
                    if clean:
                        await sink.send_all(clean)
                        clean = bytearray()
                    if fault.kind in (FaultKind.RESET, FaultKind.STALL):
                        link.stop(fault.kind)
                        return
                    await self._write_faulted(sink, chunk.raw, fault)
                if clean:
                    await sink.send_all(clean)
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameSplitError):
            pass
        link.stop("closed")

    def _event(self, connection: int, direction: Direction, kind: FaultKind) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(FaultEvent(self.clock(), connection, direction, kind))
        else:
            self.events_dropped += 1

    @staticmethod
    async def _write_faulted(sink: trio.SocketStream, raw: bytes, fault: Fault) -> None:
        if fault.kind is FaultKind.DROP:
            return
        if fault.kind is FaultKind.DUPLICATE:
            await sink.send_all(raw)
            await sink.send_all(raw)
        elif fault.kind is FaultKind.DELAY:
            await trio.sleep(fault.delay)
            await sink.send_all(raw)
        elif fault.kind is FaultKind.SLICE:
            for piece in fault.pieces(raw):
                await sink.send_all(piece)
        else:
            raise ValueError(f"no write for fault kind {fault.kind}")
