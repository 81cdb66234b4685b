"""Chromium's own WebSocket offers permessage-deflate on every connection: the server agrees
(asking it not to keep context), and compressed messages both ways come out right."""

from __future__ import annotations

from wsnursery.codec import Encoding

BIG = "lorem ipsum dolor sit amet " * 60  # over the 256-byte threshold: sent compressed


def test_chromium_negotiates_compression_on_echo_and_pubsub(page, start_server):
    server = start_server()
    page.goto(server.http + "/")
    result = page.evaluate(
        """async ([base, big]) => {
            const open = (path) => new Promise((resolve, reject) => {
                const ws = new WebSocket(base + path);
                const queue = [];
                let waiting = null;
                ws.onmessage = (event) => { if (waiting) { const w = waiting; waiting = null; w(event.data); }
                                            else queue.push(event.data); };
                ws.next = () => queue.length ? Promise.resolve(queue.shift())
                                             : new Promise((r) => { waiting = r; });
                ws.onopen = () => resolve(ws);
                ws.onerror = () => reject(new Error("websocket error on " + path));
            });
            const echo = await open("echo");
            echo.send(big);
            const echoed = await echo.next();
            const sub = await open("");
            await sub.next();  // welcome
            sub.send(JSON.stringify({type: "subscribe", id: 1, channel: "zip"}));
            await sub.next();  // subscribed
            sub.send(JSON.stringify({type: "publish", id: 2, channel: "zip", data: big}));
            const frames = [JSON.parse(await sub.next()), JSON.parse(await sub.next())];
            const message = frames.find((f) => f.type === "message");
            return {echoExtensions: echo.extensions, subExtensions: sub.extensions,
                    echoed: echoed === big, data: message && message.data};
        }""",
        [server.ws, BIG],
    )
    expected = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert result["echoExtensions"] == expected and result["subExtensions"] == expected, result
    assert result["echoed"] is True
    assert result["data"] == BIG
    # The published message went out of the compressed frame table (compressed once).
    assert len(server.server.context.frames.table(Encoding.JSON, 15)) == 1
