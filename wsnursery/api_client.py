"""Calling the server API from a backend: ``ApiClient`` (sync) and ``AsyncApiClient`` (trio or asyncio).

Both speak the same calls with the same arguments and results: each call (its request, and
how its answer is read) is written once, as a ``_Call``, and the request building and answer
parsing are shared and do no I/O. The sync client uses ``http.client``; the async one
uses anyio streams, so it runs under trio and under asyncio alike. Each call is one request
on a fresh connection (the server closes after every answer). ``data`` may hold bytes: they
travel as ``{"$bytes": "<base64>"}`` and come back from ``history`` as bytes.

    api = ApiClient("http://127.0.0.1:8765", api_key="...")
    api.publish("chat.room1", {"text": "hello"}, key="msg-42")   # {"channel", "epoch", "seq"}

    async with AsyncApiClient("https://chat.example.com", api_key="...") as api:
        await api.publish("chat.room1", {"text": "hello"})

A refused call raises ``ApiCallError`` with the HTTP status and the error's ``code`` and
``reason``; a connection that fails raises ``OSError`` (and ``TimeoutError`` after ``timeout``).
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import urlencode, urlsplit

import anyio
import anyio.abc
import attrs

from . import codec
from .codec import Encoding

MAX_ANSWER_BYTES = 64 * 1024 * 1024
T = TypeVar("T")


class ApiCallError(Exception):
    """The server refused a call: ``status`` (HTTP), ``code`` and ``reason`` from its error body."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{status} {code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


class _Endpoint:
    """Where the server is, and how each call becomes a request (no I/O)."""

    def __init__(self, url: str, api_key: str, ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the server URL must be http(s)://HOST[:PORT], not {url!r}")
        self.tls = scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.ssl_context = (
            ssl_context if ssl_context is not None else (ssl.create_default_context() if self.tls else None)
        )
        self.api_key = api_key

    def request(
        self, method: str, path: str, query: dict[str, Any] | None, body: Any
    ) -> tuple[str, str, dict[str, str], bytes]:
        target = "/api/" + path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        payload = b"" if body is None else codec.encode(body, Encoding.JSON)
        host = f"[{self.host}]" if ":" in self.host else self.host
        headers = {
            "Host": f"{host}:{self.port}",
            "Authorization": f"apikey {self.api_key}",
            "Accept": "application/json",
            "Connection": "close",
            "Content-Length": str(len(payload)),
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        return method, target, headers, payload


def _answer(status: int, body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body) if body else {}
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ApiCallError(status, "bad_answer", f"the server answered {status} without a JSON object")
    if status != 200:
        error = payload.get("error")
        if isinstance(error, dict):
            raise ApiCallError(status, str(error.get("code", "error")), str(error.get("reason", "")))
        raise ApiCallError(status, "http_error", f"HTTP {status}")
    return payload


def _history(payload: dict[str, Any]) -> dict[str, Any]:
    for message in payload.get("messages", []):
        if isinstance(message, dict) and "data" in message:
            message["data"] = codec.bytes_from_json(message["data"])
    return payload


def _payload(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@attrs.frozen
class _Call(Generic[T]):
    """One API call, written once for both clients: the request, and what its answer gives."""

    method: str
    path: str
    query: dict[str, Any] | None
    body: Any
    result: Callable[[dict[str, Any]], T]


def _with_key(body: dict[str, Any], key: str | None) -> dict[str, Any]:
    return body if key is None else {**body, "key": key}


def _publish(channel: str, data: Any, key: str | None) -> _Call[dict[str, Any]]:
    return _Call("POST", "publish", None, _with_key({"channel": channel, "data": data}, key), _payload)


def _broadcast(channels: Sequence[str], data: Any, key: str | None) -> _Call[list[dict[str, Any]]]:
    body = _with_key({"channels": list(channels), "data": data}, key)
    return _Call("POST", "broadcast", None, body, lambda payload: list(payload["results"]))


def _history_call(channel: str, since: int | None, limit: int | None) -> _Call[dict[str, Any]]:
    return _Call("GET", "history", {"channel": channel, "since": since, "limit": limit}, None, _history)


def _channels() -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "channels", None, None, lambda payload: list(payload["channels"]))


def _presence(channel: str) -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "presence", {"channel": channel}, None, lambda payload: list(payload["members"]))


def _disconnect(user: str) -> _Call[int]:
    return _Call("POST", "disconnect", None, {"user": user}, lambda payload: int(payload["disconnected"]))


class ApiClient:
    """The server API from synchronous code (``http.client``)."""

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._endpoint = _Endpoint(url, api_key, ssl_context)
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _call(self, call: _Call[T]) -> T:
        endpoint = self._endpoint
        method, target, headers, payload = endpoint.request(call.method, call.path, call.query, call.body)
        connection: http.client.HTTPConnection
        if endpoint.tls:
            connection = http.client.HTTPSConnection(
                endpoint.host, endpoint.port, timeout=self.timeout, context=endpoint.ssl_context
            )
        else:
            connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.timeout)
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                raise ApiCallError(response.status, "too_large", "the answer is larger than the client takes")
            return call.result(_answer(response.status, data))
        finally:
            connection.close()

    def publish(self, channel: str, data: Any, key: str | None = None) -> dict[str, Any]:
        """``{"channel", "epoch", "seq"}``; a repeated ``key`` gets the original position."""
        return self._call(_publish(channel, data, key))

    def broadcast(self, channels: Sequence[str], data: Any, key: str | None = None) -> list[dict[str, Any]]:
        return self._call(_broadcast(channels, data, key))

    def history(self, channel: str, since: int | None = None, limit: int | None = None) -> dict[str, Any]:
        return self._call(_history_call(channel, since, limit))

    def channels(self) -> list[dict[str, Any]]:
        return self._call(_channels())

    def presence(self, channel: str) -> list[dict[str, Any]]:
        return self._call(_presence(channel))

    def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` with 4003; how many there were."""
        return self._call(_disconnect(user))


class AsyncApiClient:
    """The server API from async code, under trio or asyncio (anyio streams)."""

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._endpoint = _Endpoint(url, api_key, ssl_context)
        self.timeout = timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def _call(self, call: _Call[T]) -> T:
        endpoint = self._endpoint
        method, target, headers, payload = endpoint.request(call.method, call.path, call.query, call.body)
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        with anyio.fail_after(self.timeout):
            stream: anyio.abc.ByteStream
            if endpoint.tls:
                assert endpoint.ssl_context is not None
                stream = await anyio.connect_tcp(
                    endpoint.host, endpoint.port, ssl_context=endpoint.ssl_context, tls_standard_compatible=False
                )
            else:
                stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
            async with stream:
                await stream.send(head.encode("latin-1") + payload)
                data = bytearray()
                while True:
                    try:
                        chunk = await stream.receive(65536)
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise ApiCallError(0, "too_large", "the answer is larger than the client takes")
        status, body = _parse_response(bytes(data))
        return call.result(_answer(status, body))

    async def publish(self, channel: str, data: Any, key: str | None = None) -> dict[str, Any]:
        """``{"channel", "epoch", "seq"}``; a repeated ``key`` gets the original position."""
        return await self._call(_publish(channel, data, key))

    async def broadcast(self, channels: Sequence[str], data: Any, key: str | None = None) -> list[dict[str, Any]]:
        return await self._call(_broadcast(channels, data, key))

    async def history(self, channel: str, since: int | None = None, limit: int | None = None) -> dict[str, Any]:
        return await self._call(_history_call(channel, since, limit))

    async def channels(self) -> list[dict[str, Any]]:
        return await self._call(_channels())

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        return await self._call(_presence(channel))

    async def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` with 4003; how many there were."""
        return await self._call(_disconnect(user))


def _parse_response(data: bytes) -> tuple[int, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ApiCallError(0, "bad_answer", "the server closed before a complete HTTP answer")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ApiCallError(0, "bad_answer", "the server's answer is not HTTP/1.1")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            body = body[: int(value.strip())]
    return int(parts[1]), body
