"""/client.js and connection tokens, against a small fake server (the real one may not check
tokens yet): the token function is called for every connection (sent as ``?token=``), again
before ``exp`` for an in-band ``refresh``, and a close 4001 brings a reconnect with a fresh one.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse

import trio
import trio_websocket


class FakeServer:
    """Welcomes every connection, answers refresh; records what tokens it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (how, token)
        self.changed = trio.Event()
        self.connections: list[trio_websocket.WebSocketConnection] = []

    def note(self, how: str, token: str) -> None:
        self.seen.append((how, token))
        self.changed.set()
        self.changed = trio.Event()

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        self.note("query", query.get("token", [""])[0])
        ws = await request.accept(subprotocol="wsnursery.v1.json")
        self.connections.append(ws)
        await ws.send_message(
            json.dumps(
                {"type": "welcome", "protocol": 1, "server": "fake/0", "heartbeat": 30, "max_message_size": 65536}
            )
        )
        try:
            while True:
                frame = json.loads(await ws.get_message())
                if frame["type"] == "refresh":
                    self.note("refresh", frame["token"])
                    await ws.send_message(json.dumps({"type": "refreshed", "id": frame["id"], "exp": 0}))
        except trio_websocket.ConnectionClosed:
            pass

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, self.handler, "127.0.0.1", 0, None)
            task_status.started((self, server.port))

    async def wait_for(self, count: int) -> list[tuple[str, str]]:
        while len(self.seen) < count:
            await self.changed.wait()
        return list(self.seen)

    async def close_latest(self, code: int) -> None:
        await self.connections[-1].aclose(code=code, reason="token expired")


def token(n: int, lifetime: float) -> str:
    """An unsigned JWT-shaped token whose exp is ``lifetime`` seconds away (the client reads exp only)."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'sub': 'ana', 'n': n, 'exp': time.time() + lifetime})}.sig"


def test_tokens_from_a_function_query_refresh_and_a_fresh_one_after_4001(page, start_server, trio_thread):
    server = start_server()  # serves the page and /client.js; the socket goes to the fake server
    fake, port = trio_thread.start(FakeServer().run)
    # The first token expires soon (refreshed half-way, 1.5 s in); the later ones last.
    tokens = [token(1, lifetime=3.0)] + [token(n, lifetime=600.0) for n in range(2, 6)]
    page.goto(server.http + "/")
    page.evaluate(
        """async ([url, tokens]) => {
      const { connect } = await import('/client.js');
      let calls = 0;
      window.client = connect(url, { token: async () => tokens[calls++], refreshMargin: 30 });
    }""",
        [f"ws://127.0.0.1:{port}/", tokens],
    )
    # The first connection presents token 1; half-way to its exp the client refreshes with 2.
    seen = trio_thread.call(fake.wait_for, 2, timeout=20)
    assert seen == [("query", tokens[0]), ("refresh", tokens[1])]
    # The server ends the connection with 4001: the client reconnects with a fresh token, 3.
    trio_thread.call(fake.close_latest, 4001)
    seen = trio_thread.call(fake.wait_for, 3, timeout=20)
    assert seen[2] == ("query", tokens[2])
    assert page.evaluate("() => window.client.stats.connects") >= 1
    assert page.errors == []
