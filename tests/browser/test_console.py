"""The live console at GET /, in real chromium: connect, subscribe, watch, publish, charts."""

from __future__ import annotations

import json
import os

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
    trio_thread.call(publish_all, server.ws, "chat.room1", [{"user": "ana", "text": "hello"},
                                                             {"user": "bo", "text": "hi ana"}])
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
