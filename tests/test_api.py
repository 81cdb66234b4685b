"""The server API's request handling, sans-I/O, against a fake server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.api import (
    ApiError,
    ApiHandler,
    ChannelInfo,
    History,
    HistoryMessage,
    body_length,
    encode_payload,
    is_api_path,
)
from wsnursery.presence import Member
from wsnursery.protocol import Position, ProtocolError, RequestParser

KEY = "k3y-for-tests"
AUTH = {"authorization": f"apikey {KEY}"}


class FakeServer:
    def __init__(self) -> None:
        self.published: list[tuple[str, Any, str | None]] = []
        self.keys: dict[tuple[str, str], int] = {}
        self.disconnected: list[str] = []

    async def publish(self, channel: str, data: Any, key: str | None = None) -> Position:
        if channel == "full":
            raise ProtocolError("too_many_channels", "the server holds its limit")
        if key is not None and (channel, key) in self.keys:
            return Position("e1", self.keys[channel, key])
        self.published.append((channel, data, key))
        seq = sum(1 for c, _, _ in self.published if c == channel)
        if key is not None:
            self.keys[channel, key] = seq
        return Position("e1", seq)

    async def history(self, channel: str, since: int | None, limit: int | None) -> History:
        messages = [
            HistoryMessage(i + 1, d, 1000 + i)
            for i, (c, d, _) in enumerate(x for x in self.published if x[0] == channel)
        ]
        messages = [m for m in messages if since is None or m.seq > since][: limit or None]
        return History("e1" if messages else None, len(messages), messages)

    async def channels(self) -> list[ChannelInfo]:
        return [ChannelInfo("a", "e1", 3, 2)]

    async def presence(self, channel: str) -> tuple[list[Member], bool]:
        return [Member("alice", "c-1")], True

    async def disconnect(self, user: str) -> int:
        self.disconnected.append(user)
        return 2


def handler(server: FakeServer | None = None, max_body: int = 1000) -> ApiHandler:
    parser = RequestParser()

    def check_channel(name: str) -> None:
        parser._channel({"channel": name}, None)

    return ApiHandler(server or FakeServer(), KEY, check_channel, max_body)


def call(
    api: ApiHandler, method: str, target: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return trio.run(api.handle, method, target, AUTH if headers is None else headers, raw)


def test_publish_and_idempotency() -> None:
    server = FakeServer()
    api = handler(server)
    assert call(api, "POST", "/api/publish", {"channel": "chat.x", "data": {"n": 1}}) == (
        200,
        {"channel": "chat.x", "epoch": "e1", "seq": 1},
    )
    first = call(api, "POST", "/api/publish", {"channel": "chat.x", "data": 2, "key": "k"})
    again = call(api, "POST", "/api/publish", {"channel": "chat.x", "data": 2, "key": "k"})
    assert first == again == (200, {"channel": "chat.x", "epoch": "e1", "seq": 2})
    call(api, "POST", "/api/publish", {"channel": "b", "data": {"$bytes": "AAE="}})
    assert server.published[-1] == ("b", b"\x00\x01", None)


def test_broadcast_history_channels_presence_disconnect() -> None:
    server = FakeServer()
    api = handler(server)
    status, body = call(api, "POST", "/api/broadcast", {"channels": ["a", "b", "a"], "data": 1})
    assert status == 200 and [r["channel"] for r in body["results"]] == ["a", "b"]
    call(api, "POST", "/api/publish", {"channel": "a", "data": 2})
    status, body = call(api, "GET", "/api/history?channel=a&since=1")
    assert status == 200 and [m["data"] for m in body["messages"]] == [2]
    assert call(api, "GET", "/api/history?channel=a&limit=1")[1]["messages"][0]["data"] == 1
    assert call(api, "GET", "/api/channels") == (
        200,
        {"channels": [{"channel": "a", "epoch": "e1", "seq": 3, "subscribers": 2}]},
    )
    assert call(api, "GET", "/api/presence?channel=a") == (
        200,
        {"channel": "a", "members": [{"user": "alice", "conn": "c-1"}], "complete": True},
    )
    assert call(api, "POST", "/api/disconnect", {"user": "alice"}) == (200, {"disconnected": 2})
    assert server.disconnected == ["alice"]


@pytest.mark.parametrize(
    ("headers", "target"),
    [
        ({}, "/api/publish"),
        ({"authorization": "apikey wrong"}, "/api/publish"),
        ({"authorization": f"Bearer {KEY}"}, "/api/channels"),
        ({"authorization": KEY}, "/api/channels"),
        ({"authorization": f"apikey {KEY}x"}, "/api/nothing"),
    ],
)
def test_a_missing_or_wrong_key_is_401(headers: dict[str, str], target: str) -> None:
    server = FakeServer()
    status, body = call(handler(server), "POST", target, {"channel": "a", "data": 1}, headers)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert server.published == []


def test_the_scheme_is_case_insensitive() -> None:
    assert call(handler(), "GET", "/api/channels", headers={"authorization": f"ApiKey {KEY}"})[0] == 200


@pytest.mark.parametrize(
    ("method", "target", "body", "status", "code"),
    [
        ("GET", "/api/nothing", None, 404, "not_found"),
        ("GET", "/api/publish", None, 405, "method_not_allowed"),
        ("POST", "/api/publish", None, 400, "bad_request"),
        ("POST", "/api/publish", b"{not json", 400, "bad_request"),
        ("POST", "/api/publish", b"[1, 2]", 400, "bad_request"),
        ("POST", "/api/publish", {"channel": 1, "data": 1}, 400, "bad_request"),
        ("POST", "/api/publish", {"channel": "a"}, 400, "bad_request"),
        ("POST", "/api/publish", {"channel": "a b", "data": 1}, 400, "invalid_channel"),
        ("POST", "/api/publish", {"channel": "a", "data": 1, "key": 5}, 400, "bad_request"),
        ("POST", "/api/publish", {"channel": "a", "data": 1, "key": "k" * 300}, 400, "bad_request"),
        ("POST", "/api/publish", b'{"channel": "a", "data": NaN}', 400, "bad_request"),
        ("POST", "/api/publish", {"channel": "full", "data": 1}, 503, "too_many_channels"),
        ("POST", "/api/broadcast", {"channels": "a", "data": 1}, 400, "bad_request"),
        ("POST", "/api/broadcast", {"channels": [], "data": 1}, 400, "bad_request"),
        ("POST", "/api/broadcast", {"channels": ["a", 2], "data": 1}, 400, "bad_request"),
        ("GET", "/api/history", None, 400, "bad_request"),
        ("GET", "/api/history?channel=a&since=-1", None, 400, "bad_request"),
        ("GET", "/api/history?channel=a&limit=x", None, 400, "bad_request"),
        ("GET", "/api/history?channel=a&limit=99999999", None, 400, "bad_request"),
        ("GET", "/api/presence?channel=%00", None, 400, "invalid_channel"),
        ("POST", "/api/disconnect", {"user": ""}, 400, "bad_request"),
        ("POST", "/api/disconnect", {"user": ["a"]}, 400, "bad_request"),
    ],
)
def test_bad_requests_get_the_json_error_body(method: str, target: str, body: Any, status: int, code: str) -> None:
    answer = call(handler(), method, target, body)
    assert answer[0] == status and answer[1]["error"]["code"] == code
    assert isinstance(answer[1]["error"]["reason"], str)


def test_body_length_bounds() -> None:
    assert body_length({}, 10) == 0
    assert body_length({"content-length": "10"}, 10) == 10
    for headers, status in (
        ({"content-length": "11"}, 413),
        ({"content-length": "99999999999999999999"}, 400),
        ({"content-length": "-1"}, 400),
        ({"content-length": "1, 2"}, 400),
        ({"transfer-encoding": "chunked"}, 411),
    ):
        with pytest.raises(ApiError) as info:
            body_length(headers, 10)
        assert info.value.status == status


def test_head_check_refuses_before_the_body_is_read() -> None:
    api = handler(max_body=10)
    with pytest.raises(ApiError) as info:
        api.check_head("POST", "/api/publish", {"content-length": "11"})
    assert info.value.status == 401  # the key first: no size hints to strangers
    with pytest.raises(ApiError) as info:
        api.check_head("POST", "/api/publish", AUTH | {"content-length": "11"})
    assert info.value.status == 413


def test_paths_and_payload_encoding() -> None:
    assert is_api_path("/api/publish") and is_api_path("/api") and is_api_path("/api?x")
    assert not is_api_path("/apix") and not is_api_path("/")
    assert json.loads(encode_payload({"data": b"\x01"})) == {"data": {"$bytes": "AQ=="}}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT"]),
    st.sampled_from(["/api/publish", "/api/broadcast", "/api/history", "/api/presence", "/api/disconnect", "/api/x"]),
    st.text(max_size=40),
    st.binary(max_size=200)
    | st.recursive(
        st.none() | st.integers() | st.text(max_size=5) | st.booleans(),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["channel", "channels", "data", "key", "user", "x"]), inner, max_size=4)
        ),
        max_leaves=10,
    ).map(lambda value: json.dumps(value).encode()),
)
def test_any_request_gets_a_status_and_a_json_answer(method: str, path: str, query: str, body: bytes) -> None:
    status, payload = call(handler(), method, f"{path}?{query}", body)
    assert status in (200, 400, 404, 405, 503)
    encode_payload(payload)  # always encodable
    if status != 200:
        assert set(payload) == {"error"} and set(payload["error"]) == {"code", "reason"}
