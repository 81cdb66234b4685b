"""The ``/echo`` endpoint: every message back verbatim (text stays text, binary stays binary).

For benchmarks and for conformance checks with any generic WebSocket tool. It has the same
heartbeat and the same ``request_close`` as a pub/sub connection, so shutdown treats both alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
import trio_websocket

from .connection import close_frame_unsent, heartbeat

if TYPE_CHECKING:
    from .stream import ServerStream


class Echo:
    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        config: Any,
        metrics: Any,
        stream: ServerStream | None = None,
    ) -> None:
        self.ws = ws
        self.stream = stream  # to send the close frame trio-websocket does not (1002, 1007)
        self.config = config
        self.metrics = metrics
        self.close_code: int | None = None
        self.close_reason = ""
        self.queued = 0
        self._scope = trio.CancelScope()
        self._closing = trio.CancelScope()  # the close handshake; ``abort`` gives up on it

    def request_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._scope.cancel()

    def abort(self) -> None:
        """Stop waiting on the close handshake (the server's shutdown has run out of time)."""
        self._closing.cancel()

    async def run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(heartbeat, self.ws, self.config, self.metrics, self.request_close)
                try:
                    await self._echo()
                except trio_websocket.ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()
        if self.close_code is None:
            closed = self.ws.closed
            self.close_code = closed.code if closed else 1006
            self.close_reason = (closed.reason or "") if closed else ""
            if self.stream is not None and close_frame_unsent(self.ws, self.close_code):
                with trio.CancelScope(shield=True), self._closing, trio.move_on_after(self.config.close_timeout):
                    await self.stream.send_close_frame(self.close_code, self.close_reason)
            return
        with trio.CancelScope(shield=True), self._closing, trio.move_on_after(self.config.close_timeout):
            await self.ws.aclose(self.close_code, self.close_reason)

    async def _echo(self) -> None:
        received, sent = self.metrics.messages_in, self.metrics.messages_out
        while True:
            message = await self.ws.get_message()
            received.inc()
            await self.ws.send_message(message)
            sent.inc()
