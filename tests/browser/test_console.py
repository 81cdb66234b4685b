"""The live console at GET /, in real chromium: connect, subscribe, watch, publish, charts."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading

import trio

from wsnursery.client import sdk

SCREENSHOT = os.environ.get("WSNURSERY_CONSOLE_SCREENSHOT")  # where to save one, for the README


async def publish_all(url: str, channel: str, items: list) -> list[int]:
    async with sdk.connect(url, encoding="json") as client:
        return [(await client.publish(channel, item)).seq for item in items]


def test_messages_published_from_python_arrive_in_the_page_in_order(page, start_server, trio_thread, tmp_path):
    server = start_server()
    response = page.goto(server.http + "/")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    page.click("#connect")
    page.wait_for_selector('#state[data-state="open"]', timeout=10_000)
    for channel in ("orders", "chat.room1"):
        page.fill("#sub-channel", channel)
        page.click("#subscribe")
        page.wait_for_selector(f'#subscriptions li[data-channel="{channel}"][data-ready="1"]', timeout=10_000)

    items = [{"n": n, "text": f"order {n}"} for n in range(1, 31)]
    seqs = trio_thread.call(publish_all, server.ws, "orders", items)
    assert seqs == list(range(1, 31))
    trio_thread.call(
        publish_all, server.ws, "chat.room1", [{"user": "ana", "text": "hello"}, {"user": "bo", "text": "hi ana"}]
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#log tr[data-channel=\"orders\"]').length >= 30", timeout=15_000
    )
    rows = page.eval_on_selector_all(
        '#log tr[data-channel="orders"]',
        "rows => rows.map(r => [r.dataset.kind, Number(r.dataset.seq), r.querySelector('td.data').textContent])",
    )
    rows.reverse()  # the newest row is on top
    assert [kind for kind, _, _ in rows] == ["message"] * 30
    assert [seq for _, seq, _ in rows] == list(range(1, 31))
    assert [json.loads(text) for _, _, text in rows] == items

    # Publish from the page; the page's own subscription sees it as seq 31.
    page.fill("#pub-channel", "orders")
    page.fill("#pub-data", '{"n": 31, "text": "from the browser"}')
    page.click("#publish")
    page.wait_for_selector("#pub-result:text('seq 31')", timeout=10_000)
    page.wait_for_selector('#log tr[data-channel="orders"][data-seq="31"]', timeout=10_000)

    # The charts: /metrics polled once a second, drawn as inline SVG polylines.
    page.wait_for_function(
        "() => ['messages', 'deliveries', 'connections'].every("
        "n => Number(document.querySelector('#chart-' + n + ' svg').dataset.points) >= 2)",
        timeout=15_000,
    )
    connections = page.text_content("#chart-connections b")
    assert int(connections) >= 1
    assert page.eval_on_selector("#chart-deliveries polyline", "p => p.points.numberOfItems") >= 2
    assert page.text_content("#delivered") == "33"
    assert page.text_content("#gaps") == "0"
    assert page.errors == []
    page.screenshot(path=str(SCREENSHOT or tmp_path / "console.png"))


def test_client_js_and_the_page_are_served_with_types_and_revalidation(page, start_server):
    server = start_server()
    response = page.goto(server.http + "/client.js")
    assert response.status == 200
    headers = response.headers
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["etag"].startswith('"')
    assert "export function connect" in response.text()
    page.goto(server.http + "/")
    exported = page.evaluate("async () => Object.keys(await import('/client.js')).sort()")
    assert "connect" in exported and "Session" in exported
    assert page.evaluate("() => fetch('/client.js').then(r => r.status)") == 200
    assert page.evaluate("() => fetch('/nope').then(r => r.status)") == 404


README_PAGE = """<script type="module">
  import { connect } from "http://127.0.0.1:PORT/client.js";
  const client = connect("ws://127.0.0.1:PORT/");
  for await (const m of client.subscribe("jobs.42", { ack: true })) console.log(m.kind, m.seq, m.data);
</script>"""


def test_the_readme_example_works_from_a_page_of_another_origin(page, start_server, trio_thread):
    server = start_server()
    logged: list[str] = []
    page.on("console", lambda message: logged.append(message.text))
    # The page comes from another origin (another port), so the module is fetched with CORS.
    body = README_PAGE.replace("PORT", str(server.port)).encode()
    with _serve_page(body) as origin:
        page.goto(origin + "/")
        seqs = _read_the_page_messages(page, trio_thread, server.ws, logged)
    assert len(seqs) >= 3 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), logged
    assert page.errors == []


@contextlib.contextmanager
def _serve_page(body: bytes):
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _read_the_page_messages(page, trio_thread, url: str, logged: list[str]) -> list[int]:
    """The page subscribes on its own, from the head: publish at a steady pace until it saw 3."""
    received = lambda: [int(line.split(" ")[1]) for line in logged if line.startswith("message ")]
    stop = trio_thread.start(_publish_steadily, url, "jobs.42")
    try:
        while len(received()) < 3:
            page.wait_for_event("console", timeout=15_000)
    finally:
        trio_thread.call(_set, stop)
    return received()


async def _publish_steadily(url: str, channel: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    stop = trio.Event()
    task_status.started(stop)
    async with sdk.connect(url, encoding="json") as client:
        n = 0
        while not stop.is_set():
            n += 1
            await client.publish(channel, {"step": n})
            with trio.move_on_after(0.05):  # pacing, not synchronisation
                await stop.wait()


async def _set(event: trio.Event) -> None:
    event.set()
