"""The server: one port for WebSocket pub/sub (``/``), echo (``/echo``), ``/healthz``, ``/metrics``.

Every TCP connection is handled in its own task of the server's connection nursery, and
every WebSocket connection in a nursery of its own (see ``connection``). Bounds:
- the request head, and any plain HTTP answer (``/metrics`` can be large), must be done
  within ``handshake_timeout``, else the socket is closed (408 when a head was started);
  the ``101`` answer goes into a send buffer nothing was written to, so it cannot block;
- WebSocket connections past ``max_connections`` get HTTP 503 with ``Retry-After``;
- raw sockets past ``max_connections + SPARE_SOCKETS`` are closed at once, so health checks
  still get through at the limit while file descriptors stay bounded.

Shutdown (``shutdown()``, wired to SIGINT/SIGTERM by the CLI): new upgrades get 503 and
``/healthz`` answers 503, every client gets close 1001 after its pending frames are written,
connections get up to ``shutdown_timeout`` to drain, then the listeners close.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from . import (
    __version__,
    access,
    api,
    api_http,
    deflate,
    handshake,
    http,
    logs,
    security,
    static,
    tls,
)
from .codec import Encoding
from .config import Config
from .connection import Connection
from .context import ConnectionContext
from .delivery import Deliverer, FrameCache
from .heartbeat import Heartbeats
from .hub import ClusterHub, Hub, MemoryHub
from .limits import AddressCounter
from .metrics import CONTENT_TYPE, Metrics
from .presence import PresenceRegistry, connection_ids
from .protocol import ProtocolError, RequestParser
from .server_api import ServerApiMixin
from .stream import ServerStream, send_at_once
from .timers import DeadlineTimer
from .wire import CloseCode

log = logs.get("server")

SPARE_SOCKETS = 64


class Server(ServerApiMixin):
    def __init__(self, config: Config, hub: Hub | None = None) -> None:
        self.config = config
        # Identity, API, origins, rates, TLS (issue 13): key files and the certificate are read
        # here, once (config.ConfigError when unusable; the CLI checks before it gets here).
        self.security = security.load(config)
        self._addresses = AddressCounter(config.max_connections_per_ip)
        self.hub: Hub = hub or MemoryHub(
            history_size=config.history_size,
            history_bytes=config.history_bytes,
            history_age=config.history_age,
            dedup_size=config.dedup_size,
            dedup_age=config.dedup_age,
            max_channels=config.max_channels,
            block=config.slow_consumer_policy == "block",
            block_timeout=config.block_timeout,
        )
        self.metrics = Metrics()
        self.deliverer = Deliverer()
        self.heartbeats = Heartbeats(config.heartbeat_interval, config.heartbeat_timeout)
        self.timer = DeadlineTimer()
        self.server_name = f"wsnursery/{__version__}"
        presence = PresenceRegistry(config.max_presence_members)
        ids = connection_ids()
        if isinstance(self.hub, ClusterHub):  # presence shared through the hub; conn names unique in it
            presence, ids = self.hub.presence, connection_ids(self.hub.node)
            self.hub.disconnect_handler = self.disconnect_here
        self.context = ConnectionContext(
            config=config,
            hub=self.hub,
            deliverer=self.deliverer,
            frames=FrameCache(threshold=config.compression_threshold, level=config.compression_level),
            timer=self.timer,
            heartbeats=self.heartbeats,
            metrics=self.metrics,
            parser=RequestParser(config.channel_pattern),
            server_name=self.server_name,
            security=self.security,
            presence=presence,
            connection_ids=ids,
        )
        self._api = (
            api.ApiHandler(self, config.api_key, self.check_channel, config.api_max_body)
            if config.api_key is not None
            else None
        )
        self.connections: set[Connection] = set()
        self.websockets = 0  # open WebSocket connections (pub/sub and echo)
        self._all_closed = trio.Event()  # set once draining and no WebSocket connection is left
        self.sockets = 0
        self.draining = False
        self._aborted = False
        self.ports: list[int] = []
        self._stop = trio.Event()
        self._started = time.monotonic()
        self.metrics.track_queue_depth(lambda: sum(c.queued for c in self.connections))
        self.metrics.track_connections_active(lambda: self.websockets)

    # -- lifetime ---------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until ``shutdown()`` has drained; reports the bound ports."""
        await self.serve(await self.listen(), task_status=task_status)

    async def listen(self) -> list[trio.SocketListener]:
        """Open the listening sockets (OSError when the address is taken or not ours)."""
        if self.config.workers > 1:  # one of N processes on this port (see workers)
            from .workers import open_reuseport_listeners

            listeners = await open_reuseport_listeners(self.config.port, self.config.host)
        else:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.ports = sorted({listener.socket.getsockname()[1] for listener in listeners})
        return listeners

    async def serve(self, listeners: list[trio.SocketListener], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on ``listeners`` until ``shutdown()`` has drained."""
        async with trio.open_nursery() as connections:
            await connections.start(self.hub.run)
            connections.start_soon(self.deliverer.run)
            connections.start_soon(self.heartbeats.run)
            connections.start_soon(self.timer.run)
            connections.start_soon(self.context.expiries.run)
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    scheme = "ws" if self.security.ssl_context is None else "wss"
                    for listener in listeners:
                        host, port = listener.socket.getsockname()[:2]
                        log.info("listening on %s://%s/", scheme, _authority(host, port))
                    task_status.started(self.ports)
                    await self._stop.wait()
                    await self._drain()
                    accepting.cancel_scope.cancel()
            finally:
                # Drained, out of time, or cancelled (a second signal): no close handshake may
                # hold the exit up any longer, not even one shielded for close_timeout.
                self._aborted = True
                for connection in list(self.connections):
                    connection.abort()
            if isinstance(self.hub, ClusterHub):  # its members leave now, not when its liveness expires
                with trio.move_on_after(self.config.close_timeout):
                    try:
                        await self.hub.leave_cluster()
                    except ProtocolError as exc:  # unavailable: the other nodes reap this one
                        log.warning("leaving the cluster: %s", exc.reason)
            connections.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()
        log.info("stopped")

    def shutdown(self) -> None:
        """Begin the graceful shutdown; ``run`` returns once it is done."""
        self._stop.set()

    async def _drain(self) -> None:
        self.draining = True
        log.info(
            "shutting down: closing %d connections with 1001, up to %.1fs",
            self.websockets,
            self.config.shutdown_timeout,
        )
        for connection in list(self.connections):
            connection.request_close(CloseCode.GOING_AWAY, "server shutting down")
        with trio.move_on_after(self.config.shutdown_timeout):
            if self.websockets:
                await self._all_closed.wait()

    # -- accepting --------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        limit = self.config.max_connections + SPARE_SOCKETS
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: wait a little, keep serving
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if self.sockets >= limit:
                await trio.aclose_forcefully(stream)
                self.metrics.count(self.metrics.connections_rejected, "sockets")
                continue
            self.sockets += 1
            nursery.start_soon(self._handle_socket, stream)

    async def _handle_socket(self, raw: trio.SocketStream) -> None:
        context = self.security.ssl_context
        stream: trio.abc.Stream = raw if context is None else tls.wrap(raw, context)
        try:
            await self._route(stream, raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # under TLS also a failed TLS handshake (trio wraps the SSL error)
        except Exception:
            log.exception("unexpected error on a connection")
        finally:
            self.sockets -= 1
            raw.socket.close()  # at once, without a cancel scope and a checkpoint per socket

    async def _route(self, stream: trio.abc.Stream, raw: trio.SocketStream) -> None:
        buffer = bytearray()
        head = None
        with trio.move_on_after(self.config.handshake_timeout):  # the head, and any HTTP answer
            try:
                while (end := http.find_head_end(buffer)) < 0:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    buffer += data
                head = http.parse_head(bytes(buffer[:end]))
            except http.HeadError as exc:
                await stream.send_all(http.response(exc.status, f"{exc}\n".encode()))
                return
            if not head.is_websocket:
                if self._api is not None and api.is_api_path(head.target):  # off: as before (404/405)
                    answer = await api_http.answer(stream, head, bytes(buffer[end:]), self._api)
                    if answer is not None:
                        await stream.send_all(answer)
                    return
                await stream.send_all(self._http_response(head))
                return
        if head is None:  # the timeout came first
            self.metrics.count(self.metrics.connections_rejected, "handshake_timeout")
            if buffer:
                await _send_quietly(stream, http.response(408, b"handshake timeout\n"))
            return
        if head.is_websocket:
            await self._websocket(stream, raw, head, bytes(buffer[end:]))

    def _http_response(self, head: http.RequestHead) -> bytes:
        if head.method != "GET":
            return http.response(405, b"method not allowed\n", extra_headers=[("Allow", "GET")])
        if head.path == "/healthz":
            return self._health()
        if head.path == "/metrics":
            return http.response(200, self.metrics.exposition(), CONTENT_TYPE)
        page = static.response(head)  # GET / (the console), /client.js
        if page is not None:
            return page
        return http.response(404, b"not found\n")

    def _health(self) -> bytes:
        body = {
            "status": "draining" if self.draining else "ok",
            "server": self.server_name,
            "connections": self.websockets,
            "channels": self.hub.channel_count,
            "uptime": round(time.monotonic() - self._started, 3),
        }
        return http.json_response(503 if self.draining else 200, body)

    # -- WebSocket --------------------------------------------------------------------

    async def _websocket(
        self, stream: trio.abc.Stream, raw: trio.SocketStream, head: http.RequestHead, after_head: bytes
    ) -> None:
        endpoint = {"/": "pubsub", "/echo": "echo"}.get(head.path)
        refusal = None
        key = ""
        if endpoint is None:
            refusal = (404, "no WebSocket endpoint at this path\n", "path")
        else:
            try:
                key = handshake.check_upgrade(head)
            except http.HeadError as exc:
                refusal = (exc.status, f"{exc}\n", "bad_handshake")
        if refusal is None and self.draining:
            refusal = (503, "server shutting down\n", "draining")
        elif refusal is None and self.websockets >= self.config.max_connections:
            refusal = (503, "too many connections, try later\n", "max_connections")
        identity = None
        headers: list[tuple[str, str]] = []
        if refusal is None and endpoint is not None:
            try:  # Origin (403), then the token (401): nothing of either is logged
                identity = access.admit(self.security, head.headers, head.target, endpoint)
            except access.Refused as exc:
                refusal, headers = (exc.status, f"{exc}\n", exc.label), exc.headers
        address = _peer_host(raw)
        if refusal is None and not self._addresses.acquire(address):
            refusal = (429, "too many connections from this address\n", "per_ip")
        if refusal is not None:
            status, text, reason = refusal
            self.metrics.count(self.metrics.connections_rejected, reason)
            if status == 503:
                headers = [("Retry-After", "1")]
            if status == 426:
                headers = [("Sec-WebSocket-Version", handshake.VERSION)]
            await stream.send_all(http.response(status, text.encode(), extra_headers=headers))
            return
        try:
            await self._session(stream, raw, head, key, endpoint, after_head, identity)
        finally:
            self._addresses.release(address)

    async def _session(
        self,
        stream: trio.abc.Stream,
        raw: trio.SocketStream,
        head: http.RequestHead,
        key: str,
        endpoint: str | None,
        after_head: bytes,
        identity: Any,
    ) -> None:
        assert endpoint is not None  # no endpoint is a refusal
        remote = _peer(raw)
        self.websockets += 1
        try:
            encoding, compression = await self._accept(stream, head, key)
            server_stream = (
                ServerStream(raw, len(after_head))
                if stream is raw
                else tls.TlsServerStream(stream, raw, len(after_head))  # type: ignore[arg-type]
            )
            session = Connection(
                self.context,
                server_stream,
                after_head,
                encoding,
                remote,
                echo=endpoint == "echo",
                identity=identity,
                compression=compression,
            )
            self.metrics.count(self.metrics.connections_opened, endpoint)
            fields = {"remote": remote, "endpoint": endpoint, "encoding": encoding.value}
            if session.user is not None:
                fields["user"] = session.user
            if compression is not None:
                fields["compression"] = compression.header
            log.info("open", extra={"fields": fields})
            async with trio.open_nursery() as nursery:
                code, reason = await self._serve(session, nursery)
                if nursery.child_tasks:  # a writer; cancel() formats the task's repr, so only then
                    nursery.cancel_scope.cancel()
            self.metrics.count(self.metrics.connections_closed, str(code))
            self.metrics.bytes_in.inc(server_stream.bytes_in)
            self.metrics.bytes_out.inc(server_stream.bytes_out)
            log.info(
                "close",
                extra={"fields": {"remote": remote, "endpoint": endpoint, "code": code, "reason": reason or "-"}},
            )
        finally:
            self.websockets -= 1
            if self.draining and not self.websockets:
                self._all_closed.set()

    async def _accept(
        self, stream: trio.abc.Stream, head: http.RequestHead, key: str
    ) -> tuple[Encoding, deflate.Agreement | None]:
        """Answer 101 with the negotiated subprotocol and compression (see ``handshake``).

        No timeout: nothing was written to this socket before, so its send buffer (at least
        4 KiB on Linux) takes the few hundred bytes of the answer without blocking.
        """
        encoding, subprotocol = Encoding.JSON, None
        if head.path == "/":
            encoding, subprotocol = Encoding.negotiate(handshake.offered_subprotocols(head))
        compression = None
        config = self.config
        if config.compression == "on":
            compression = deflate.negotiate(
                handshake.offered_extensions(head),
                config.compression_client_window_bits,
                client_context=config.compression_client_context == "on",
            )
        extensions = None if compression is None else compression.header
        answer = handshake.switching_protocols(key, subprotocol, extensions)
        if isinstance(stream, trio.SocketStream):
            await send_at_once(stream, answer)
        else:  # TLS: through the SSL stream
            await stream.send_all(answer)
        return encoding, compression

    async def _serve(self, session: Connection, nursery: trio.Nursery) -> tuple[int | None, str]:
        self.connections.add(session)
        if self.draining:  # the drain began while this one was being accepted: it missed the 1001
            session.request_close(CloseCode.GOING_AWAY, "server shutting down")
        if self._aborted:
            session.abort()
        try:
            await session.run(nursery)
        finally:
            self.connections.discard(session)
        return session.close_code, session.close_reason


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return _authority(host, port)


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
