"""Protocol v1 frames: requests a client may send and the frames the server answers with.

Sans-I/O. ``parse_request`` turns a decoded frame map into one typed request or raises
``ProtocolError`` carrying the ``error`` code, a readable reason and the request ``id`` (so
the reply can name it). The ``*_frame`` builders make the server's frame maps with the
field names of ``shared/protocol-v1.md``, which other clients rely on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

PROTOCOL_VERSION = 1
DEFAULT_CHANNEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
MAX_KEY_LENGTH = 256
MAX_EPOCH_LENGTH = 64


class ProtocolError(Exception):
    """A request the server answers with an ``error`` frame (the connection stays open)."""

    def __init__(self, code: str, reason: str, request_id: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.request_id = request_id


@attrs.frozen
class Position:
    """A place in a channel's stream: the stream's ``epoch`` and a ``seq`` in it."""

    epoch: str
    seq: int


@attrs.frozen
class Subscribe:
    id: int | None
    channel: str
    since: Position | None
    ack: bool
    presence: bool = False  # also deliver join/leave frames (version 1.1)


@attrs.frozen
class Unsubscribe:
    id: int | None
    channel: str


@attrs.frozen
class Publish:
    id: int | None
    channel: str
    data: Any
    key: str | None


@attrs.frozen
class Ack:
    id: int | None
    channel: str
    seq: int


@attrs.frozen
class Replay:
    id: int | None
    channel: str
    since: Position


@attrs.frozen
class Refresh:
    """A new connection token before the current one expires (version 1.1)."""

    id: int | None
    token: str


@attrs.frozen
class PresenceQuery:
    """Who is subscribed to a channel (version 1.1)."""

    id: int | None
    channel: str


MAX_TOKEN_FIELD = 8192

Request = Subscribe | Unsubscribe | Publish | Ack | Replay | Refresh | PresenceQuery


class RequestParser:
    """Validates decoded frame maps against protocol v1 and the channel grammar."""

    def __init__(self, channel_pattern: str = DEFAULT_CHANNEL_PATTERN) -> None:
        self._channel_re = re.compile(channel_pattern)

    def parse(self, frame: dict[str, Any]) -> Request:
        request_id = _request_id(frame)
        kind = frame.get("type")
        if not isinstance(kind, str):
            raise ProtocolError("bad_request", "a frame needs a string 'type'", request_id)
        if kind == "refresh":  # the one request without a channel
            return _parse_refresh(frame, request_id)
        parse = _PARSERS.get(kind)
        if parse is None:
            raise ProtocolError("unknown_type", f"unknown frame type {kind[:64]!r}", request_id)
        channel = self._channel(frame, request_id)
        return parse(frame, request_id, channel)

    def check_channel(self, channel: str, request_id: int | None = None) -> None:
        """ProtocolError ``invalid_channel`` unless ``channel`` is a valid name."""
        self._channel({"channel": channel}, request_id)

    def _channel(self, frame: dict[str, Any], request_id: int | None) -> str:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise ProtocolError("bad_request", "channel must be a string", request_id)
        if not self._channel_re.match(channel) or channel.endswith("\n"):
            raise ProtocolError("invalid_channel", f"channel {channel[:140]!r} is not a valid name", request_id)
        return channel


def _request_id(frame: dict[str, Any]) -> int | None:
    request_id = frame.get("id")
    if request_id is None:
        return None
    if type(request_id) is not int or not (0 <= request_id < 2**63):
        raise ProtocolError("bad_request", "id must be a non-negative integer below 2**63")
    return request_id


def _since(value: Any, request_id: int | None, *, required: bool) -> Position | None:
    if value is None:
        if required:
            raise ProtocolError("bad_request", "since is required", request_id)
        return None
    if not isinstance(value, dict):
        raise ProtocolError("bad_request", "since must be a map with epoch and seq", request_id)
    epoch, seq = value.get("epoch"), value.get("seq")
    if not isinstance(epoch, str) or not (0 < len(epoch) <= MAX_EPOCH_LENGTH):
        raise ProtocolError("bad_request", "since.epoch must be a short string", request_id)
    if type(seq) is not int or not (0 <= seq < 2**63):
        raise ProtocolError("bad_request", "since.seq must be a non-negative integer", request_id)
    return Position(epoch, seq)


def _parse_subscribe(frame: dict[str, Any], request_id: int | None, channel: str) -> Subscribe:
    ack = frame.get("ack", False)
    if type(ack) is not bool:
        raise ProtocolError("bad_request", "ack must be true or false", request_id)
    presence = frame.get("presence", False)
    if type(presence) is not bool:
        raise ProtocolError("bad_request", "presence must be true or false", request_id)
    since = _since(frame.get("since"), request_id, required=False)
    return Subscribe(request_id, channel, since, ack, presence)


def _parse_refresh(frame: dict[str, Any], request_id: int | None) -> Refresh:
    token = frame.get("token")
    if not isinstance(token, str) or not (0 < len(token) <= MAX_TOKEN_FIELD):
        raise ProtocolError("bad_request", f"refresh needs a token of 1 to {MAX_TOKEN_FIELD} characters", request_id)
    return Refresh(request_id, token)


def _parse_presence(frame: dict[str, Any], request_id: int | None, channel: str) -> PresenceQuery:
    return PresenceQuery(request_id, channel)


def _parse_unsubscribe(frame: dict[str, Any], request_id: int | None, channel: str) -> Unsubscribe:
    return Unsubscribe(request_id, channel)


def _parse_publish(frame: dict[str, Any], request_id: int | None, channel: str) -> Publish:
    if "data" not in frame:
        raise ProtocolError("bad_request", "publish needs data", request_id)
    key = frame.get("key")
    if key is not None and (not isinstance(key, str) or not (0 < len(key) <= MAX_KEY_LENGTH)):
        raise ProtocolError("bad_request", f"key must be a string of 1 to {MAX_KEY_LENGTH} characters", request_id)
    return Publish(request_id, channel, frame["data"], key)


def _parse_ack(frame: dict[str, Any], request_id: int | None, channel: str) -> Ack:
    seq = frame.get("seq")
    if type(seq) is not int or not (0 <= seq < 2**63):
        raise ProtocolError("bad_request", "ack needs a non-negative integer seq", request_id)
    return Ack(request_id, channel, seq)


def _parse_replay(frame: dict[str, Any], request_id: int | None, channel: str) -> Replay:
    since = _since(frame.get("since"), request_id, required=True)
    assert since is not None
    return Replay(request_id, channel, since)


_PARSERS: dict[str, Callable[[dict[str, Any], int | None, str], Request]] = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "publish": _parse_publish,
    "ack": _parse_ack,
    "replay": _parse_replay,
    "presence": _parse_presence,
}


def _with_id(frame: dict[str, Any], request_id: int | None) -> dict[str, Any]:
    if request_id is not None:
        frame["id"] = request_id
    return frame


def welcome_frame(server: str, heartbeat: float, max_message_size: int) -> dict[str, Any]:
    return {
        "type": "welcome",
        "protocol": PROTOCOL_VERSION,
        "server": server,
        "heartbeat": heartbeat,
        "max_message_size": max_message_size,
    }


def _position_frame(
    kind: str, request_id: int | None, channel: str, position: Position, recovered: bool
) -> dict[str, Any]:
    frame = _with_id({"type": kind}, request_id)
    frame.update(channel=channel, epoch=position.epoch, seq=position.seq, recovered=recovered)
    return frame


def subscribed_frame(request_id: int | None, channel: str, position: Position, recovered: bool) -> dict[str, Any]:
    return _position_frame("subscribed", request_id, channel, position, recovered)


def unsubscribed_frame(request_id: int | None, channel: str) -> dict[str, Any]:
    return _with_id({"type": "unsubscribed"}, request_id) | {"channel": channel}


def published_frame(request_id: int | None, channel: str, position: Position) -> dict[str, Any]:
    frame = _with_id({"type": "published"}, request_id)
    frame.update(channel=channel, epoch=position.epoch, seq=position.seq)
    return frame


def replaying_frame(request_id: int | None, channel: str, position: Position, recovered: bool) -> dict[str, Any]:
    """The answer to ``replay``: like ``subscribed``, the head and whether nothing was lost."""
    return _position_frame("replaying", request_id, channel, position, recovered)


def message_frame(channel: str, epoch: str, seq: int, data: Any, ts: int) -> dict[str, Any]:
    return {"type": "message", "channel": channel, "epoch": epoch, "seq": seq, "data": data, "ts": ts}


def error_frame(code: str, reason: str, request_id: int | None = None) -> dict[str, Any]:
    frame = _with_id({"type": "error"}, request_id)
    frame.update(code=code, reason=reason)
    return frame


def refreshed_frame(request_id: int | None, exp: float) -> dict[str, Any]:
    """The answer to ``refresh``: the new token's expiry, in unix seconds."""
    frame = _with_id({"type": "refreshed"}, request_id)
    frame["exp"] = int(exp) if float(exp).is_integer() else exp
    return frame


# --------------------------------------------------------------------------- client requests
# What a client sends: the SDK builds its frames here, next to the parser that reads them, so
# the two cannot drift apart (tests/test_protocol_client_requests.py parses each one back).


def _since_map(position: Position) -> dict[str, Any]:
    return {"epoch": position.epoch, "seq": position.seq}


def subscribe_request(
    request_id: int, channel: str, *, since: Position | None = None, ack: bool = False
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "id": request_id, "channel": channel, "ack": ack}
    if since is not None:
        frame["since"] = _since_map(since)
    return frame


def unsubscribe_request(request_id: int, channel: str) -> dict[str, Any]:
    return {"type": "unsubscribe", "id": request_id, "channel": channel}


def publish_request(request_id: int, channel: str, data: Any, key: str | None = None) -> dict[str, Any]:
    frame = {"type": "publish", "id": request_id, "channel": channel, "data": data}
    if key is not None:
        frame["key"] = key
    return frame


def ack_request(channel: str, seq: int) -> dict[str, Any]:
    """A cumulative ack: every message of ``channel`` up to ``seq`` arrived (no reply)."""
    return {"type": "ack", "channel": channel, "seq": seq}


def replay_request(request_id: int, channel: str, since: Position) -> dict[str, Any]:
    return {"type": "replay", "id": request_id, "channel": channel, "since": _since_map(since)}


def refresh_request(request_id: int, token: str) -> dict[str, Any]:
    """Version 1.1: renew the connection token in-band; answered by ``refreshed``."""
    return {"type": "refresh", "id": request_id, "token": token}
