"""The server API: HTTP calls on the WebSocket port for backends, behind ``--api-key``.

Sans-I/O request handling: the server reads a request head (``http``), asks ``body_length``
how many body bytes to read (bounded by ``max_body``), and hands method, target, headers and
body to ``ApiHandler.handle``, which answers ``(status, JSON payload)`` by calling a
``ServerApi`` (the server itself, in ``server``). Nothing here touches a socket.

Off (404) unless an API key is configured. Every call carries ``Authorization: apikey KEY``;
a wrong or missing key gets 401 whatever the path. Errors are ``{"error": {"code",
"reason"}}`` with the socket's error codes: 400 ``bad_request`` (bad JSON, wrong types),
400 ``invalid_channel``, 404 ``not_found`` (unknown path), 405 ``method_not_allowed``,
413 ``too_large`` (a body over ``max_body`` bytes, refused before it is read), 411
``length_required`` (a body without ``Content-Length``; chunked bodies are not read),
503 ``too_many_channels``/``unavailable``.

- ``POST /api/publish`` ``{"channel", "data", "key"?}`` → ``{"channel", "epoch", "seq"}``
- ``POST /api/broadcast`` ``{"channels": [...], "data", "key"?}`` → ``{"results": [...]}``
  (at most ``MAX_BROADCAST_CHANNELS``; the key is per channel)
- ``GET /api/history?channel=&since=&limit=`` → ``{"channel", "epoch", "seq", "messages"}``
- ``GET /api/channels`` → ``{"channels": [{"channel", "epoch", "seq", "subscribers"}]}``
- ``GET /api/presence?channel=`` → ``{"channel", "members", "complete"}``
- ``POST /api/disconnect`` ``{"user"}`` → ``{"disconnected": n}`` (close 4003)

``data`` is JSON; ``{"$bytes": "<base64>"}`` carries bytes, as on a JSON WebSocket.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import attrs

from . import codec
from .codec import Encoding
from .presence import Member
from .protocol import MAX_KEY_LENGTH, Position, ProtocolError

PREFIX = "/api/"
DEFAULT_MAX_BODY = 1024 * 1024
MAX_BROADCAST_CHANNELS = 1000
MAX_HISTORY_LIMIT = 10_000
MAX_USER_LENGTH = 256

_SERVER_ERRORS = {"too_many_channels": 503, "unavailable": 503, "internal": 500}


class ApiError(Exception):
    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason

    def payload(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "reason": self.reason}}


@attrs.frozen
class HistoryMessage:
    seq: int
    data: Any
    ts: int


@attrs.frozen
class History:
    epoch: str | None
    seq: int
    messages: list[HistoryMessage]


@attrs.frozen
class ChannelInfo:
    channel: str
    epoch: str
    seq: int
    subscribers: int


class ServerApi(Protocol):
    """What the API needs from a server (and what an embedding application may call)."""

    async def publish(self, channel: str, data: Any, key: str | None = None) -> Position: ...

    async def history(self, channel: str, since: int | None, limit: int | None) -> History: ...

    async def channels(self) -> list[ChannelInfo]: ...

    async def presence(self, channel: str) -> tuple[list[Member], bool]: ...

    async def disconnect(self, user: str) -> int: ...


def is_api_path(target: str) -> bool:
    return target.startswith(PREFIX) or target.split("?", 1)[0] == PREFIX[:-1]


def body_length(headers: Mapping[str, str], max_body: int) -> int:
    """The body size a request announces, checked before any of it is read."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ApiError(411, "length_required", "send the body with a Content-Length, not chunked")
    raw = headers.get("content-length")
    if raw is None:
        return 0
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(400, "bad_request", "Content-Length must be a number")
    length = int(raw)
    if length > max_body:
        raise ApiError(413, "too_large", f"bodies are at most {max_body} bytes")
    return length


class ApiHandler:
    """Routes one API request to a ``ServerApi``; every answer is ``(status, payload)``."""

    def __init__(
        self,
        api: ServerApi,
        api_key: str,
        check_channel: Callable[[str], None],
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.api = api
        self._key = ("apikey " + api_key).encode()
        self._check_channel = check_channel  # raises ProtocolError for a name the grammar refuses
        self.max_body = max_body
        self._routes: dict[str, tuple[str, Callable[[ApiRequest], Any]]] = {
            "/api/publish": ("POST", self._publish),
            "/api/broadcast": ("POST", self._broadcast),
            "/api/history": ("GET", self._history),
            "/api/channels": ("GET", self._channels),
            "/api/presence": ("GET", self._presence),
            "/api/disconnect": ("POST", self._disconnect),
        }

    def authorized(self, headers: Mapping[str, str]) -> bool:
        given = headers.get("authorization", "").strip()
        scheme, _, key = given.partition(" ")
        presented = (scheme.lower() + " " + key.strip()).encode("utf-8", "replace")
        return hmac.compare_digest(presented, self._key)

    def check_head(self, method: str, target: str, headers: Mapping[str, str]) -> int:
        """Before the body is read: the key, then the body size (raises ApiError)."""
        if not self.authorized(headers):
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: apikey KEY)")
        return body_length(headers, self.max_body)

    async def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        try:
            self.check_head(method, target, headers)
            split = urlsplit(target)
            route = self._routes.get(split.path)
            if route is None:
                raise ApiError(404, "not_found", f"no API call at {split.path[:100]}")
            allowed, handler = route
            if method != allowed:
                raise ApiError(405, "method_not_allowed", f"{split.path} takes {allowed}")
            request = ApiRequest(dict(parse_qsl(split.query, keep_blank_values=True)), body)
            result = handler(request)
            if hasattr(result, "__await__"):
                result = await result
            return 200, result
        except ApiError as exc:
            return exc.status, exc.payload()
        except ProtocolError as exc:
            status = _SERVER_ERRORS.get(exc.code, 400)
            return status, {"error": {"code": exc.code, "reason": exc.reason}}

    # -- the calls ---------------------------------------------------------------------

    def _channel(self, value: Any, name: str = "channel") -> str:
        if not isinstance(value, str):
            raise ApiError(400, "bad_request", f"{name} must be a string")
        self._check_channel(value)
        return value

    async def _publish(self, request: ApiRequest) -> dict[str, Any]:
        body = request.json()
        channel = self._channel(body.get("channel"))
        data, key = _data(body), _key(body)
        return _published(channel, await self.api.publish(channel, data, key))

    async def _broadcast(self, request: ApiRequest) -> dict[str, Any]:
        body = request.json()
        channels = body.get("channels")
        if not isinstance(channels, list) or not (0 < len(channels) <= MAX_BROADCAST_CHANNELS):
            raise ApiError(400, "bad_request", f"channels must be a list of 1 to {MAX_BROADCAST_CHANNELS} names")
        names = list(dict.fromkeys(self._channel(c, "each channel") for c in channels))
        data, key = _data(body), _key(body)
        return {"results": [_published(channel, await self.api.publish(channel, data, key)) for channel in names]}

    async def _history(self, request: ApiRequest) -> dict[str, Any]:
        channel = self._channel(request.query.get("channel"))
        since = _number(request.query.get("since"), "since", 2**63 - 1)
        limit = _number(request.query.get("limit"), "limit", MAX_HISTORY_LIMIT)
        history = await self.api.history(channel, since, limit)
        return {
            "channel": channel,
            "epoch": history.epoch,
            "seq": history.seq,
            "messages": [{"seq": m.seq, "data": m.data, "ts": m.ts} for m in history.messages],
        }

    async def _channels(self, request: ApiRequest) -> dict[str, Any]:
        return {"channels": [attrs.asdict(info) for info in await self.api.channels()]}

    async def _presence(self, request: ApiRequest) -> dict[str, Any]:
        channel = self._channel(request.query.get("channel"))
        members, complete = await self.api.presence(channel)
        return {"channel": channel, "members": [m.as_dict() for m in members], "complete": complete}

    async def _disconnect(self, request: ApiRequest) -> dict[str, Any]:
        user = request.json().get("user")
        if not isinstance(user, str) or not (0 < len(user) <= MAX_USER_LENGTH):
            raise ApiError(400, "bad_request", f"user must be a string of 1 to {MAX_USER_LENGTH} characters")
        return {"disconnected": await self.api.disconnect(user)}


@attrs.frozen
class ApiRequest:
    query: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.body:
            raise ApiError(400, "bad_request", "this call needs a JSON body")
        try:
            return codec.decode(self.body, Encoding.JSON)
        except codec.DecodeError as exc:
            raise ApiError(400, "bad_request", f"body: {exc}") from None


def _published(channel: str, position: Position) -> dict[str, Any]:
    return {"channel": channel, "epoch": position.epoch, "seq": position.seq}


def _data(body: dict[str, Any]) -> Any:
    if "data" not in body:
        raise ApiError(400, "bad_request", "publish needs data")
    try:
        codec.check_value(body["data"])
    except codec.ValueNotCarried as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return codec.bytes_from_json(body["data"])


def _key(body: dict[str, Any]) -> str | None:
    key = body.get("key")
    if key is not None and (not isinstance(key, str) or not (0 < len(key) <= MAX_KEY_LENGTH)):
        raise ApiError(400, "bad_request", f"key must be a string of 1 to {MAX_KEY_LENGTH} characters")
    return key


def _number(raw: str | None, name: str, limit: int) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 19 or int(raw) > limit:
        raise ApiError(400, "bad_request", f"{name} must be a whole number from 0 to {limit}")
    return int(raw)


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The JSON body of an answer (bytes in data as ``{"$bytes": ...}``)."""
    return codec.encode(payload, Encoding.JSON)
