"""The plain-HTTP side of the port: /healthz, /metrics, and everything that is not an endpoint."""

from __future__ import annotations

import pytest
import trio_websocket

from .helpers import http_get, http_request
from .wsclient import connect

pytestmark = pytest.mark.usefixtures("server_errors")


async def test_healthz_answers_200_json(server):
    answer = await http_get(server.port, "/healthz")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    body = answer.json()
    assert body["status"] == "ok"
    assert body["server"].startswith("wsnursery/")
    assert body["connections"] == 0
    async with connect(server.url) as client:
        await client.publish("h", 1)
        body = (await http_get(server.port, "/healthz?verbose=1")).json()
        assert (body["connections"], body["channels"]) == (1, 1)
        assert body["uptime"] >= 0


async def test_metrics_is_prometheus_text_with_the_wsnursery_metrics(server):
    async with connect(server.url) as sub, connect(server.url) as pub:
        await sub.subscribe("m")
        await pub.publish("m", "x")
        await sub.messages(1)
        answer = await http_get(server.port, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.body.decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    for family, kind in (
        ("wsnursery_connections_total", "counter"),
        ("wsnursery_connections_active", "gauge"),
        ("wsnursery_connections_rejected_total", "counter"),
        ("wsnursery_publishes_total", "counter"),
        ("wsnursery_deliveries_total", "counter"),
        ("wsnursery_slow_consumer_closes_total", "counter"),
        ("wsnursery_heartbeat_timeouts_total", "counter"),
        ("wsnursery_errors_total", "counter"),
        ("wsnursery_retransmits_total", "counter"),
        ("wsnursery_queue_depth", "gauge"),
    ):
        assert f"# TYPE {family} {kind}\n" in text, family
    assert samples["wsnursery_publishes_total"] == 1
    assert samples["wsnursery_deliveries_total"] == 1
    assert samples["wsnursery_connections_active"] == 2
    assert samples['wsnursery_connections_total{endpoint="pubsub"}'] == 2
    assert samples["wsnursery_queue_depth"] == 0


@pytest.mark.parametrize("path", ["/nope", "/healthz/", "/metrics.txt", "/echo", "/client.js/", "/console.png"])
async def test_unknown_path_is_404(server, path):
    answer = await http_get(server.port, path)
    assert answer.status == 404
    assert answer.body == b"not found\n"


async def test_other_methods_get_405(server):
    answer = await http_request(server.port, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0")
    assert answer.status == 405
    assert answer.headers["allow"] == "GET"


@pytest.mark.parametrize("path", ["/nope", "/healthz", "/echo/", "/metrics"])
async def test_websocket_upgrade_on_an_unknown_path_is_404(server, path):
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{server.port}{path}", connect_timeout=10):
            pass  # pragma: no cover
    assert rejected.value.status_code == 404
    assert server.server.websockets == 0


async def test_websocket_paths_ignore_the_query_string(server):
    async with connect(server.url + "?token=abc") as client:
        assert client.welcome["type"] == "welcome"


async def test_malformed_and_oversized_heads(server):
    assert (await http_request(server.port, "GARBAGE")).status == 400
    assert (await http_request(server.port, "GET /healthz HTTP/1.1\r\nno colon here")).status == 400
    huge = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + "a" * 20_000
    assert (await http_request(server.port, huge)).status == 431
    assert (await http_get(server.port, "/healthz")).status == 200
