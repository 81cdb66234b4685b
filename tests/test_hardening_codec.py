"""Issue 12, items 5, 6 and 10: what the codecs accept is bounded by what was received.

CBOR can alias one value many times (shared references, string references); refusing those
tags keeps the decoded frame, and what subscribers are sent, linear in the bytes received.
JSON can carry a lone surrogate in a ``\\ud800`` escape, which no encoder can write back.
"""

from __future__ import annotations

import itertools
import struct

import cbor2
import pytest

from wsnursery import codec
from wsnursery.codec import DecodeError, Encoding

from .test_server_badinput import bystanders
from .wsclient import connect


def shared_string_publish(references: int, length: int = 2000) -> bytes:
    """The issue's item 5, scaled: one ``length``-character string referenced ``references``
    times with tags 28/29 (3 bytes a reference)."""
    head = cbor2.dumps({"type": "publish", "id": 5, "channel": "a"})
    items = b"\xd8\x1c" + cbor2.dumps("s" * length) + b"\xd8\x1d\x00" * references
    data = b"\x99" + struct.pack("!H", references + 1) + items  # an array of references + 1
    return bytes([head[0] + 1]) + head[1:] + cbor2.dumps("data") + data


def shared_dag(depth: int) -> bytes:
    """Item 6: ``x = [x, x]`` ``depth`` times, each level shared: 10 bytes a level, 2**depth leaves."""
    value: object = "ab"
    for _ in range(depth):
        value = [value, value]
    head = cbor2.dumps({"type": "publish", "id": 5, "channel": "a"})
    return bytes([head[0] + 1]) + head[1:] + cbor2.dumps("data") + cbor2.dumps(value, value_sharing=True)


def string_references(count: int) -> bytes:
    """Tags 256/25 (stringref): one string written once, then referenced by index."""
    data = b"\xd9\x01\x00" + b"\x99" + struct.pack("!H", count + 1) + cbor2.dumps("s" * 100)
    data += b"\xd8\x19\x00" * count
    head = cbor2.dumps({"type": "publish", "id": 5, "channel": "a"})
    return bytes([head[0] + 1]) + head[1:] + cbor2.dumps("data") + data


def colliding_keys(count: int) -> bytes:
    """A map whose keys are tuples (CBOR arrays) of ints that share one hash: every insert
    compares against all the others (quadratic: 0.8 MB of them took 3.6 s, measured)."""
    m = 2**61 - 1
    same_hash = [5 + k * m for k in range(8)]
    keys = itertools.islice(itertools.product(same_hash, repeat=5), count)
    return cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": {key: 0 for key in keys}})


def test_shared_references_are_refused_before_they_expand():
    payload = shared_string_publish(5000)  # 17 KB that expanded to a 10 MB JSON frame
    with pytest.raises(DecodeError) as error:
        codec.decode(payload, Encoding.CBOR)
    assert "shared references" in str(error.value)
    assert error.value.request_id == 5


def test_a_shared_reference_dag_is_refused_in_time_linear_in_its_bytes():
    payload = shared_dag(24)  # 2**24 leaves from ~250 bytes
    with pytest.raises(DecodeError) as error:
        codec.decode(payload, Encoding.CBOR)
    assert "shared references" in str(error.value)
    assert error.value.request_id == 5


def test_string_references_are_refused():
    with pytest.raises(DecodeError) as error:
        codec.decode(string_references(1000), Encoding.CBOR)
    assert "string references" in str(error.value)


@pytest.mark.parametrize(
    "tag, content",
    [
        (0, "2020-01-01T00:00:00Z"),
        (1, 0),
        (4, [-(2**62), 1]),
        (5, [2**62, 1]),
        (30, [2**4000 + 1, 3]),
        (35, "(a+)+$"),
        (36, "Content-Type: text/plain\n\nx"),
        (37, b"\x00" * 16),
        (52, b"\x7f\x00\x00\x01"),
        (258, [1, 2]),
        (55799, 1),
        (2**40, 1),
    ],
)
def test_every_tag_but_the_bignums_is_refused(tag, content):
    """Costly or amplifying ones among them: a bigfloat's ``2**exponent``, a regex compile."""
    payload = cbor2.dumps({"type": "publish", "id": 5, "channel": "a", "data": cbor2.CBORTag(tag, content)})
    with pytest.raises(DecodeError) as error:
        codec.decode(payload, Encoding.CBOR)
    assert f"CBOR tag {tag}" in str(error.value)
    assert error.value.request_id == 5


def test_bignums_still_decode():
    assert codec.decode(cbor2.dumps({"data": [2**100, -(2**100)]}), Encoding.CBOR) == {"data": [2**100, -(2**100)]}


def test_map_keys_that_are_not_strings_are_refused_without_hashing_them_all():
    with pytest.raises(DecodeError) as error:
        codec.decode(colliding_keys(4096), Encoding.CBOR)
    assert error.value.request_id == 5


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "subscribe", "id": 4, "channel": "\\ud800"}',
        '{"type": "publish", "id": 4, "channel": "a", "data": 1, "key": "k\\udfff"}',
        '{"type": "publish", "id": 4, "channel": "a", "data": {"\\uDBFF": 1}}',
        '{"type": "\\ud800", "id": 4}',
        '{"type": "subscribe", "id": 4, "channel": "a", "since": {"epoch": "\\ud83d", "seq": 1}}',
    ],
)
def test_a_lone_surrogate_anywhere_in_a_json_frame_is_refused_at_decode(text):
    with pytest.raises(DecodeError) as error:
        codec.decode(text, Encoding.JSON)
    assert "lone surrogate" in str(error.value)
    assert error.value.request_id == 4


@pytest.mark.parametrize(
    "text, value",
    [
        ('{"c": "\\ud83d\\ude00"}', "\U0001f600"),  # a surrogate pair is one character
        ('{"c": "\\\\ud800"}', "\\ud800"),  # an escaped backslash, then text
    ],
)
def test_surrogate_pairs_and_escaped_backslashes_are_text(text, value):
    assert codec.decode(text, Encoding.JSON) == {"c": value}


HOSTILE_CBOR = [
    pytest.param(shared_string_publish(5000), id="shared-string"),
    pytest.param(shared_dag(24), id="shared-dag"),
    pytest.param(string_references(1000), id="string-references"),
    pytest.param(colliding_keys(4096), id="colliding-keys"),
]


@pytest.mark.usefixtures("server_errors")
@pytest.mark.parametrize("payload", HOSTILE_CBOR)
async def test_aliasing_cbor_gets_bad_request_and_reaches_no_subscriber(server, payload):
    async with bystanders(server.url) as check, connect(server.url, Encoding.CBOR) as client:
        async with connect(server.url) as json_sub:
            await json_sub.subscribe("a")
            await client.ws.send_message(payload)
            reply = await client.receive()
            assert (reply["type"], reply["code"], reply.get("id")) == ("error", "bad_request", 5), reply
            assert (await client.publish("a", "ok"))["seq"] == 1
            [message] = await json_sub.messages(1)
            assert message["data"] == "ok"
        await check(1)


@pytest.mark.usefixtures("server_errors")
async def test_a_lone_surrogate_channel_is_refused_whatever_the_pattern(start_server):
    """Item 10: ``'^.{1,64}$'`` admits ``"\\ud800"``; the old server logged a traceback from the
    encoder and dropped the connection without a close frame."""
    running = await start_server(channel_pattern="^.{1,64}$")
    async with connect(running.url) as client:
        await client.ws.send_message('{"type": "subscribe", "id": 3, "channel": "\\ud800"}')
        reply = await client.receive()
        assert (reply["type"], reply["code"], reply.get("id")) == ("error", "bad_request", 3), reply
        assert (await client.subscribe("fine"))["channel"] == "fine"
