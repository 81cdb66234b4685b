"""Bad input: every malformed frame gets an ``error`` (or the documented close), and the server
keeps serving the offender where that is safe and everyone else in any case."""

from __future__ import annotations

import contextlib
import datetime
import math
import struct

import cbor2
import pytest
import trio
import trio_websocket

from wsnursery.codec import Encoding

from .helpers import metric, raw_welcome, text_frame, wait_until
from .wsclient import RawClient, connect


@contextlib.asynccontextmanager
async def bystanders(url: str):
    """A subscriber and a publisher on another channel, to prove everyone else is still served."""
    async with connect(url, Encoding.CBOR) as sub, connect(url) as pub:
        await sub.subscribe("bystander")

        async def check(n: int) -> None:
            await pub.publish("bystander", n)
            [message] = await sub.messages(1)
            assert message["data"] == n
            async with connect(url) as fresh:  # a new connection still gets its welcome
                assert fresh.welcome["type"] == "welcome"

        await check(0)
        yield check


DEEP = 100_000

JSON_CASES = [
    # (raw text, expected code, expected id or None)
    ("{", "bad_request", None),
    ("", "bad_request", None),
    ("[1, 2]", "bad_request", None),
    ('"just a string"', "bad_request", None),
    ("42", "bad_request", None),
    ("null", "bad_request", None),
    ('{"id": 3}', "bad_request", 3),
    ('{"type": 5, "id": 3}', "bad_request", 3),
    ('{"type": "frobnicate", "id": 7}', "unknown_type", 7),
    ('{"type": "Subscribe", "id": 7, "channel": "a"}', "unknown_type", 7),
    ('{"type": "subscribe", "id": 8}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": 5}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": ["a"]}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": "a", "ack": "yes"}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": "a", "ack": 1}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": "a", "since": 5}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": "a", "since": {"epoch": "e"}}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": "a", "since": {"epoch": "", "seq": 1}}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": "a", "since": {"epoch": "e", "seq": -1}}', "bad_request", 8),
    ('{"type": "subscribe", "id": 8, "channel": "a", "since": {"epoch": "e", "seq": 1.5}}', "bad_request", 8),
    ('{"type": "unsubscribe", "id": 8, "channel": null}', "bad_request", 8),
    ('{"type": "publish", "id": 9, "channel": "a"}', "bad_request", 9),
    ('{"type": "publish", "id": 9, "channel": "a", "data": 1, "key": 5}', "bad_request", 9),
    ('{"type": "publish", "id": 9, "channel": "a", "data": 1, "key": ""}', "bad_request", 9),
    ('{"type": "publish", "id": 9, "channel": "a", "data": 1, "key": "' + "k" * 300 + '"}', "bad_request", 9),
    ('{"type": "publish", "id": 9, "channel": "a", "data": 1e400}', "bad_request", 9),
    ('{"type": "publish", "id": 9, "channel": "a", "data": ' + "[" * 100 + "]" * 100 + "}", "bad_request", 9),
    ('{"type": "publish", "id": 9, "channel": "a", "data": "\\ud800"}', "bad_request", 9),
    ('{"type": "publish", "id": 9, "channel": "a", "data": {"\\udfff": 1}}', "bad_request", 9),
    ('{"type": "ack", "id": 4, "channel": "a", "seq": "1"}', "bad_request", 4),
    ('{"type": "ack", "id": 4, "channel": "a", "seq": -5}', "bad_request", 4),
    ('{"type": "replay", "id": 4, "channel": "a"}', "bad_request", 4),
    ('{"type": "publish", "id": "x", "channel": "a", "data": 1}', "bad_request", None),
    ('{"type": "publish", "id": -1, "channel": "a", "data": 1}', "bad_request", None),
    ('{"type": "publish", "id": true, "channel": "a", "data": 1}', "bad_request", None),
    ('{"type": "publish", "id": 1.0, "channel": "a", "data": 1}', "bad_request", None),
    ('{"type": "publish", "id": 9223372036854775808, "channel": "a", "data": 1}', "bad_request", None),
    ('{"type": "publish", "id": 1, "channel": "a", "data": NaN}', "bad_request", None),
    ('{"type": "publish", "id": 1, "channel": "a", "data": Infinity}', "bad_request", None),
    ('{"type": "publish", "id": 1, "channel": "a", "data": -Infinity}', "bad_request", None),
    ('{"type": "publish", "id": 1, "channel": "a", "data": ' + "1" * 5000 + "}", "bad_request", None),
    ("[" * DEEP + "]" * DEEP, "bad_request", None),
    ('{"type": "publish", "id": 1, "channel": "a", "data": 1} trailing', "bad_request", None),
]


@pytest.mark.parametrize(
    "text, code, request_id", JSON_CASES, ids=[f"{i:02d}:{c[0][:36]}" for i, c in enumerate(JSON_CASES)]
)
async def test_bad_json_frames_get_an_error_and_the_connection_stays(server, server_errors, text, code, request_id):
    async with bystanders(server.url) as check, connect(server.url) as client:
        await client.ws.send_message(text)
        reply = await client.receive()
        assert reply["type"] == "error", reply
        assert reply["code"] == code, reply
        assert reply.get("id") == request_id, reply
        assert isinstance(reply["reason"], str) and reply["reason"]
        # The same connection still works.
        assert (await client.publish("after", "ok"))["seq"] == 1
        await check(1)
        assert metric(server.server, "wsnursery_errors_total", code=code) == 1


CBOR_CASES = [
    # (payload bytes, expected code, expected id or None)
    (b"\xff", "bad_request", None),
    (b"", "bad_request", None),
    (b"\xa1", "bad_request", None),  # a map of one pair, truncated
    (b"\x62\xed\xa0", "bad_request", None),  # a text string holding a UTF-8 encoded surrogate
    (cbor2.dumps([1, 2]), "bad_request", None),
    (cbor2.dumps("type"), "bad_request", None),
    (b"\x81" * DEEP + b"\x00", "bad_request", None),
    (cbor2.dumps({"type": b"publish", "id": 5}), "bad_request", 5),
    (cbor2.dumps({"type": "nope", "id": 5}), "unknown_type", 5),
    (cbor2.dumps({"type": "subscribe", "id": 5, "channel": b"a"}), "bad_request", 5),
    (cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": {1: 2}}), "bad_request", 5),
    (cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": math.nan}), "bad_request", 5),
    (cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": [math.inf]}), "bad_request", 5),
    (cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": frozenset({1})}), "bad_request", 5),
    (
        cbor2.dumps(
            {"type": "publish", "id": 5, "channel": "a", "data": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}
        ),
        "bad_request",
        5,
    ),
    (cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": cbor2.CBORTag(4000, 1)}), "bad_request", 5),
    (cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": cbor2.undefined}), "bad_request", 5),
    (cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": 2**20000}), "bad_request", 5),
    (cbor2.dumps({"type": "publish", "id": 2**64, "channel": "a", "data": 1}), "bad_request", None),
]


@pytest.mark.parametrize("payload, code, request_id", CBOR_CASES, ids=[f"{i:02d}" for i in range(len(CBOR_CASES))])
async def test_bad_cbor_frames_get_an_error_and_the_connection_stays(server, server_errors, payload, code, request_id):
    async with bystanders(server.url) as check, connect(server.url, Encoding.CBOR) as client:
        # A JSON subscriber on the channel: a refused value must never reach (or break) it.
        async with connect(server.url) as json_sub:
            await json_sub.subscribe("a")
            await client.ws.send_message(payload)
            reply = await client.receive()
            assert reply["type"] == "error", reply
            assert (reply["code"], reply.get("id")) == (code, request_id), reply
            assert (await client.publish("a", "ok"))["seq"] == 1
            [message] = await json_sub.messages(1)
            assert message["data"] == "ok"
        await check(1)


async def test_data_nested_as_deep_as_the_decoder_allows_is_refused(start_server, server_errors):
    """The deepest data the JSON decoder still takes in a server task gets an error, not a crash.

    How deep that is depends on the stack the server runs on, so it is found from the top.
    """
    running = await start_server(max_errors=1000)
    async with connect(running.url) as client:
        for depth in range(999, 0, -1):
            nested = "[" * depth + "]" * depth
            await client.ws.send_message(f'{{"type": "publish", "id": {depth}, "channel": "a", "data": {nested}}}')
            reply = await client.receive()
            assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
            if reply.get("id") == depth:  # decoded: refused by the data model, with the id
                assert "deeper than 64" in reply["reason"], reply
                break
            assert reply["reason"] == "frame nests too deeply", reply
        assert depth > 64
        assert (await client.publish("a", "ok"))["seq"] == 1


async def _expect_close(client, code: int) -> None:
    with trio.fail_after(10):
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            while True:
                await client.ws.get_message()
    assert closed.value.reason.code == code, closed.value.reason


async def test_binary_frame_on_json_closes_1003(server, server_errors):
    async with bystanders(server.url) as check:
        async with connect(server.url) as client:
            await client.ws.send_message(b'{"type": "subscribe", "id": 1, "channel": "a"}')
            await _expect_close(client, 1003)
        await check(1)
        await wait_until(lambda: metric(server.server, "wsnursery_connections_closed_total", code="1003") == 1)


async def test_text_frame_on_cbor_closes_1003(server, server_errors):
    async with bystanders(server.url) as check:
        async with connect(server.url, Encoding.CBOR) as client:
            await client.ws.send_message('{"type": "subscribe", "id": 1, "channel": "a"}')
            await _expect_close(client, 1003)
        await check(1)


@pytest.mark.parametrize("path", ["/", "/echo"])
async def test_invalid_utf8_text_closes_1007(server, server_errors, path):
    async with bystanders(server.url) as check:
        raw = await RawClient.connect(server.port, path)
        try:
            if path == "/":
                await raw_welcome(raw)
            await raw.send_frame(0x1, b'{"type": "\xff\xfe"}')
            assert await raw.read_close_code() == 1007
        finally:
            await raw.aclose()
        await check(1)


PROTOCOL_ERRORS = [
    pytest.param(b"\x81\x05hello", id="unmasked-client-frame"),
    pytest.param(lambda: _masked(0x3, b"x"), id="reserved-opcode"),
    pytest.param(lambda: _masked(0x1 | 0x40, b"x"), id="rsv1-without-extension"),
    pytest.param(lambda: _masked(0x9, b"p", fin=False), id="fragmented-ping"),
    pytest.param(lambda: _masked(0x0, b"x"), id="continuation-without-start"),
]


def _masked(first: int, payload: bytes, fin: bool = True) -> bytes:
    header = struct.pack("!BB", (0x80 if fin else 0) | first, 0x80 | len(payload))
    return header + b"\x00\x00\x00\x00" + payload  # mask of zeros: payload unchanged


@pytest.mark.parametrize("path", ["/", "/echo"])
@pytest.mark.parametrize("frame", PROTOCOL_ERRORS)
async def test_websocket_protocol_errors_close_1002(server, server_errors, frame, path):
    async with bystanders(server.url) as check:
        raw = await RawClient.connect(server.port, path)
        try:
            if path == "/":
                await raw_welcome(raw)
            await raw.stream.send_all(frame() if callable(frame) else frame)
            assert await raw.read_close_code() == 1002
        finally:
            await raw.aclose()
        await check(1)


async def test_requests_pipelined_with_garbage_are_answered_in_order(server):
    async with connect(server.url) as client:
        frames = [
            text_frame({"type": "subscribe", "id": 1, "channel": "p"}).decode(),
            "not json",
            text_frame({"type": "publish", "id": 2, "channel": "p", "data": "x"}).decode(),
            text_frame({"type": "nope", "id": 3}).decode(),
        ]
        for frame in frames:
            await client.ws.send_message(frame)
        got = [await client.receive() for _ in range(5)]
        kinds = [(f["type"], f.get("id")) for f in got if f["type"] != "message"]
        assert kinds == [("subscribed", 1), ("error", None), ("published", 2), ("error", 3)]
        assert [f["data"] for f in got if f["type"] == "message"] == ["x"]
