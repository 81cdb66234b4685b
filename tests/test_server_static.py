"""GET / (the live console) and GET /client.js: served from the package, typed, revalidated."""

from __future__ import annotations

import pytest

from wsnursery import static

from .helpers import http_get, http_request
from .wsclient import connect

pytestmark = pytest.mark.usefixtures("server_errors")


async def test_plain_get_of_root_is_the_console_page(server):
    answer = await http_get(server.port, "/")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<title>wsnursery console</title>" in answer.body
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert b"http://" not in answer.body and b"https://" not in answer.body  # nothing from the internet


@pytest.mark.parametrize(
    "path, kind, marker",
    [
        ("/client.js", "text/javascript; charset=utf-8", b"export function connect(url, options = {})"),
        ("/client-session.js", "text/javascript; charset=utf-8", b"export class ChannelReceiver"),
        ("/console.js", "text/javascript; charset=utf-8", b'import { connect } from "/client.js";'),
        ("/console.css", "text/css; charset=utf-8", b":root"),
    ],
)
async def test_static_files_have_their_type_an_etag_and_no_cache(server, path, kind, marker):
    answer = await http_get(server.port, path + "?v=1")
    assert answer.status == 200
    assert answer.headers["content-type"] == kind
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert marker in answer.body
    cors = "*" if path in ("/client.js", "/client-session.js") else None
    assert answer.headers.get("access-control-allow-origin") == cors
    etag = answer.headers["etag"]
    again = await http_get(server.port, path, If_None_Match=f'"other", {etag}')
    assert (again.status, again.body, again.headers["etag"]) == (304, b"", etag)
    changed = await http_get(server.port, path, If_None_Match='"other"')
    assert changed.status == 200 and changed.body == answer.body


async def test_other_methods_on_the_console_get_405(server):
    answer = await http_request(server.port, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0")
    assert answer.status == 405


async def test_the_websocket_endpoint_at_root_is_unchanged(server):
    async with connect(server.url) as client:
        assert (await client.publish("still.pubsub", 1))["seq"] == 1


def test_every_route_names_a_file_in_the_package():
    for path in static.ROUTES:
        file = static.load(path)
        assert file is not None and file.body, path
    assert static.load("/nope") is None
