"""The API client's request building and answer parsing (the parts without I/O)."""

from __future__ import annotations

import json

import pytest

from wsnursery.api_client import (
    ApiCallError,
    ApiClient,
    AsyncApiClient,
    _answer,
    _broadcast,
    _channels,
    _disconnect,
    _Endpoint,
    _history_call,
    _parse_response,
    _presence,
    _publish,
)


def test_endpoint_builds_requests() -> None:
    endpoint = _Endpoint("http://127.0.0.1:8765", "k" * 16, None)
    method, target, headers, body = endpoint.request("POST", "publish", None, {"channel": "c", "data": b"\x01"})
    assert (method, target) == ("POST", "/api/publish")
    assert headers["Authorization"] == "apikey " + "k" * 16 and headers["Content-Length"] == str(len(body))
    assert json.loads(body) == {"channel": "c", "data": {"$bytes": "AQ=="}}
    _, target, _, body = endpoint.request("GET", "history", {"channel": "a b", "since": 3, "limit": None}, None)
    assert target == "/api/history?channel=a+b&since=3" and body == b""
    assert _Endpoint("wss://h.test", "k", None).tls and _Endpoint("wss://h.test", "k", None).port == 443
    assert _Endpoint("ws://[::1]:9/", "k", None).request("GET", "channels", None, None)[2]["Host"] == "[::1]:9"
    with pytest.raises(ValueError):
        _Endpoint("ftp://h", "k", None)


def test_answers_and_errors() -> None:
    assert _answer(200, b'{"seq": 1}') == {"seq": 1}
    with pytest.raises(ApiCallError) as info:
        _answer(401, b'{"error": {"code": "unauthorized", "reason": "no key"}}')
    assert (info.value.status, info.value.code, info.value.reason) == (401, "unauthorized", "no key")
    for status, body in ((404, b"not found\n"), (200, b"[1]"), (500, b"")):
        with pytest.raises(ApiCallError):
            _answer(status, body)
    assert _parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx") == (200, b"{}")
    with pytest.raises(ApiCallError):
        _parse_response(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ApiCallError):
        _parse_response(b"SSH-2.0\r\n\r\n")


def test_clients_refuse_bad_urls() -> None:
    with pytest.raises(ValueError):
        ApiClient("127.0.0.1:8765", "k")
    with pytest.raises(ValueError):
        AsyncApiClient("http://", "k")


def test_each_call_is_one_request_and_one_reading_of_its_answer() -> None:
    """Both clients send these requests and read the answers this way (the I/O differs)."""
    publish = _publish("c", 1, None)
    assert (publish.method, publish.path, publish.query, publish.body) == (
        "POST",
        "publish",
        None,
        {"channel": "c", "data": 1},
    )
    assert _publish("c", 1, "k").body == {"channel": "c", "data": 1, "key": "k"}
    assert publish.result({"channel": "c", "epoch": "e", "seq": 1}) == {"channel": "c", "epoch": "e", "seq": 1}
    broadcast = _broadcast(("a", "b"), 2, "k")
    assert (
        broadcast.body == {"channels": ["a", "b"], "data": 2, "key": "k"}
        and "key" not in _broadcast(["a"], 2, None).body
    )
    assert broadcast.result({"results": [{"seq": 1}]}) == [{"seq": 1}]
    history = _history_call("c", 3, None)
    assert (history.method, history.query) == ("GET", {"channel": "c", "since": 3, "limit": None})
    answer = history.result({"messages": [{"seq": 4, "data": {"$bytes": "AQ=="}, "ts": 0}]})
    assert answer["messages"][0]["data"] == b"\x01"
    assert _channels().result({"channels": [{"channel": "c"}]}) == [{"channel": "c"}]
    assert _presence("c").query == {"channel": "c"}
    assert _presence("c").result({"members": [{"user": "u"}], "complete": True}) == [{"user": "u"}]
    assert (_disconnect("u").body, _disconnect("u").result({"disconnected": 2})) == ({"user": "u"}, 2)
