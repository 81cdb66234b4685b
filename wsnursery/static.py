"""The browser side of the port: ``GET /`` (the live console) and ``GET /client.js``.

``/client.js`` imports ``/client-session.js`` (its sans-I/O half); the console page is
``/`` with ``/console.js`` and ``/console.css``.

Sans-I/O, like ``http``: :func:`response` maps a request head to complete response bytes, or
None when the path is not one of ours. The files live in ``wsnursery/static/`` (package data,
no build step) and are read once, on first use; they are small and fixed, so memory is bounded
by the package itself. Nothing here loads from the internet: the page's Content-Security-Policy
allows scripts, styles and fetches from this server only (plus WebSocket connections).

Caching: every answer carries a strong ``ETag`` (a hash of the file) and
``Cache-Control: no-cache``, so a browser revalidates each time and a new server version is
picked up at once; ``If-None-Match`` with the current tag gets ``304`` and no body.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import attrs

from .http import RequestHead

#: URL path -> (file in wsnursery/static/, content type)
ROUTES: dict[str, tuple[str, str]] = {
    "/": ("console.html", "text/html; charset=utf-8"),
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/client-session.js": ("client-session.js", "text/javascript; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}

CLIENT_MODULES = frozenset({"/client.js", "/client-session.js"})

# The console page and its script need nothing but this server; WebSockets may go to any host
# the person types in (a console for another server), which CSP can only allow by scheme.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: str
    etag: str


_cache: dict[str, StaticFile] = {}


def load(path: str) -> StaticFile | None:
    """The file served at URL ``path``, or None when there is none."""
    route = ROUTES.get(path)
    if route is None:
        return None
    cached = _cache.get(path)
    if cached is None:
        name, content_type = route
        body = resources.files("wsnursery").joinpath("static", name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        cached = _cache[path] = StaticFile(body, content_type, etag)
    return cached


def response(head: RequestHead) -> bytes | None:
    """Complete response bytes for a plain ``GET`` of one of ``ROUTES``; None otherwise."""
    if head.method != "GET":
        return None
    file = load(head.path)
    if file is None:
        return None
    matches = file.etag in (tag.strip() for tag in head.headers.get("if-none-match", "").split(","))
    status, body = (304, b"") if matches else (200, file.body)
    lines = [
        f"HTTP/1.1 {status} {'Not Modified' if status == 304 else 'OK'}",
        f"Content-Type: {file.content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-cache",
        f"ETag: {file.etag}",
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
    ]
    if head.path == "/":
        lines.append(f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}")
    elif head.path in CLIENT_MODULES:
        # Pages of other origins import the client as a module script, which needs CORS; the
        # files are public and carry no credentials.
        lines.append("Access-Control-Allow-Origin: *")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
